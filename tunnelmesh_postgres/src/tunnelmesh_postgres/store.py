"""The coordinator's state in PostgreSQL: one database, any number of coordinators.

:class:`PostgresStore` implements :class:`tunnelmesh.coordinator.store.StateStore` with psycopg
3 (asyncio): a small connection pool for the work, and one more connection that LISTENs for the
changes other coordinators commit (:meth:`PostgresStore.changes`). Every write is one
transaction at READ COMMITTED; the uniqueness rules (a key, a name, a mesh IP: one owner each)
are the database's constraints, and a write that loses a race to another coordinator either
takes the next candidate (:meth:`~PostgresStore.claim_peer`) or raises
:class:`~tunnelmesh.coordinator.store.StoreConflict`. A deadlock or serialization failure is
retried.

Each write sends ``NOTIFY tunnelmesh_state, '<kind>:<origin>:<key>'`` in its own transaction, so
a rolled-back write notifies nobody and listeners see changes in commit order. While the
listening connection is lost the store reconnects with back-off and then yields a ``resync``
change (notifications of the gap are gone).

The connection string (with its password) comes from ``state.dsn_file`` and is registered with
the log redactor before anything can log it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import msgspec
import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tunnelmesh.coordinator.alloc import AllocationError
from tunnelmesh.coordinator.store import (
    CLIENT_COLUMNS,
    PEER_COLUMNS,
    ClientRecord,
    Group,
    NameReserved,
    PeerRecord,
    StoreChange,
    StoreConflict,
    candidate_batches,
    client_from_row,
    client_row,
    members_blob,
    members_of,
    peer_from_row,
    peer_row,
    status_blob,
)
from tunnelmesh.errors import ConfigError, StateStoreError
from tunnelmesh.logs import add_secret
from tunnelmesh.private_files import read_secret_file

from tunnelmesh_postgres.schema import LOCK_ID, MIGRATIONS

if TYPE_CHECKING:
    from tunnelmesh.config import StateConfig

__all__ = ["CHANNEL", "PostgresStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

CHANNEL = "tunnelmesh_state"
STARTUP_HISTORY = 30.0
"""Seconds after open during which a new change-feed reader still gets every change since open."""
STARTUP_HISTORY_MAX = 10_000
RETRIES = 8
"""Attempts of one transaction that keeps losing to deadlocks or serialization failures."""

_INSERT_PEER = (
    f"INSERT INTO peers ({PEER_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
    "ON CONFLICT (peer_id) DO UPDATE SET public_key = excluded.public_key, "
    "name = excluded.name, mesh_ip = excluded.mesh_ip, is_admin = excluded.is_admin, "
    "is_coordinator = excluded.is_coordinator, session_hash = excluded.session_hash, "
    "created_at = excluded.created_at, last_seen = excluded.last_seen, "
    "status = excluded.status, pending = excluded.pending"
)


_INSERT_CLIENT = (
    f"INSERT INTO clients ({CLIENT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
    "ON CONFLICT (client_id) DO UPDATE SET name = excluded.name, kind = excluded.kind, "
    "public_key = excluded.public_key, mesh_ip = excluded.mesh_ip, "
    "concentrator = excluded.concentrator, preshared_key = excluded.preshared_key, "
    "enabled = excluded.enabled, expires_at = excluded.expires_at, "
    "exit_peer = excluded.exit_peer, created_by = excluded.created_by, "
    "created_at = excluded.created_at"
)


class _Replay:
    """An iterable read lazily once and replayed from the start on each ``iter`` (a retried
    transaction walks the same candidates without materializing a /16's 65,534 addresses)."""

    def __init__(self, items: Iterable[str]) -> None:
        self._source = iter(items)
        self._seen: list[str] = []

    def __iter__(self) -> Iterator[str]:
        i = 0
        while True:
            if i < len(self._seen):
                yield self._seen[i]
            else:
                try:
                    item = next(self._source)
                except StopIteration:
                    return
                self._seen.append(item)
                yield item
            i += 1


async def _notify(conn: Conn, kind: str, origin: str, key: str) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{kind}:{origin}:{key}"))


async def _free_name(conn: Conn, owner: str, names: Iterable[str]) -> str:
    """Reserve and return the first candidate no other ID holds (inside a transaction)."""
    first: tuple[str, str] | None = None
    for batch in candidate_batches(names):
        cur = await conn.execute("SELECT name, peer_id FROM names WHERE name = ANY(%s)", (batch,))
        held = dict(await cur.fetchall())
        for name in batch:
            holder = held.get(name, owner)
            if holder == owner:
                holder = await _reserve(conn, name, owner)
                if holder == owner:
                    return name
            if first is None:
                first = (name, holder)
    if first is None:
        raise StateStoreError("no name was asked for")
    raise NameReserved(*first)


async def _reserve(conn: Conn, name: str, owner: str) -> str:
    """Reserve ``name`` for ``owner`` unless held; its holder now (waits for a concurrent
    uncommitted reservation of the same name to end)."""
    await conn.execute(
        "INSERT INTO names (name, peer_id) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (name, owner),
    )
    cur = await conn.execute("SELECT peer_id FROM names WHERE name = %s", (name,))
    row = await cur.fetchone()
    assert row is not None  # inserted or already there, and names rows are never updated
    return str(row[0])


async def _free_address(conn: Conn, owner: str, ips: Iterable[str]) -> str:
    """Hold and return the first candidate address no other owner holds."""
    await conn.execute("DELETE FROM addresses WHERE owner = %s", (owner,))
    for batch in candidate_batches(ips):
        cur = await conn.execute("SELECT mesh_ip FROM addresses WHERE mesh_ip = ANY(%s)", (batch,))
        held = {row[0] for row in await cur.fetchall()}
        for ip in batch:
            if ip in held:
                continue
            cur = await conn.execute(
                "INSERT INTO addresses (mesh_ip, owner) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING RETURNING mesh_ip",
                (ip, owner),
            )
            if await cur.fetchone() is not None:
                return ip
    raise AllocationError("no free address in the mesh range")


async def _hold_address(conn: Conn, owner: str, ip: str) -> None:
    await conn.execute("DELETE FROM addresses WHERE owner = %s AND mesh_ip <> %s", (owner, ip))
    await conn.execute(
        "INSERT INTO addresses (mesh_ip, owner) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (ip, owner),
    )
    cur = await conn.execute("SELECT owner FROM addresses WHERE mesh_ip = %s", (ip,))
    row = await cur.fetchone()
    if row is None or row[0] != owner:
        raise StoreConflict(f"mesh IP {ip} is held by {row[0] if row else 'another owner'}")


async def _write_peer(conn: Conn, record: PeerRecord) -> None:
    holder = await _reserve(conn, record.name, record.peer_id)
    if holder != record.peer_id:
        raise NameReserved(record.name, holder)
    await _hold_address(conn, record.peer_id, record.mesh_ip)
    await conn.execute(_INSERT_PEER, peer_row(record))


LISTEN_RETRY_MAX = 2.0
"""Seconds at most between tries of the listening connection while it is lost: when it is
back the store also renews its pool, so this bounds how long writes stay refused after the
database answers again."""


class PostgresStore:
    """:class:`~tunnelmesh.coordinator.store.StateStore` on a PostgreSQL database.

    Args:
        dsn: a libpq connection string or URI (with its password); registered as a secret.
        pool_size: the most connections this store holds for its work (one more listens).
        connect_timeout: while the database is unreachable (the listening connection is
            lost), seconds a call waits for a connection before it fails with StateStoreError
            (the coordinator answers 503 then).
        queue_timeout: while it is reachable, seconds a call may wait for a free connection of
            the pool (a burst of registrations queues; it is not an outage).
    """

    name: ClassVar[str] = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 8,
        connect_timeout: float = 5.0,
        queue_timeout: float = 60.0,
    ) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"the PostgreSQL connection string is not valid: {exc}") from None
        add_secret(dsn)
        if params.get("password"):
            add_secret(str(params["password"]))
        self._dsn = dsn
        self.where = f"{params.get('host', 'local socket')}/{params.get('dbname', '')}"
        """Host and database, for messages (never the password)."""
        self.origin = secrets.token_hex(8)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.queue_timeout = queue_timeout
        self.reachable = False
        """Whether the listening connection is up (the database answers)."""
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._down = asyncio.Event()  # set when the listening connection is lost
        self._subscribers: list[asyncio.Queue[StoreChange | None]] = []
        self._history: list[StoreChange] | None = None
        self._history_until = 0.0
        self._closed = False

    def _connect_kwargs(self) -> dict[str, Any]:
        # TCP keepalives: a database host that vanished is noticed in ~10 s, not hours.
        return {
            "connect_timeout": max(1, int(self.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }

    @classmethod
    def from_config(cls, state: StateConfig, data_dir: Path) -> PostgresStore:
        """The store of ``state.dsn_file`` (its first line: the connection string).

        Raises:
            ConfigError: no dsn_file, or it is unreadable, empty, or readable by others.
        """
        if not state.dsn_file:
            raise ConfigError(
                "state.backend postgres needs state.dsn_file: a file (chmod 600) with the "
                "connection string, e.g. host=db port=5432 dbname=tunnelmesh user=tm password=...",
                key="state.dsn_file",
            )
        return cls(read_secret_file(state.dsn_file, "the PostgreSQL connection string file"))

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, run the missing migrations and start listening for changes.

        Raises:
            StateStoreError: the database cannot be reached or its schema is newer than this
                tunnelmesh knows.
        """
        self._closed = False
        self._pool = await self._open_pool()
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise
        self._history = []
        self._history_until = asyncio.get_running_loop().time() + STARTUP_HISTORY
        self._subscribers = []
        self._listening.clear()
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        # Changes committed after open() reach changes(): wait until LISTEN is in place.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.connect_timeout):
                await self._listening.wait()

    async def _open_pool(self) -> AsyncConnectionPool[Conn]:
        """A new pool with its first connection.

        Raises:
            StateStoreError: the database does not answer within ``connect_timeout``.
        """
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_timeout,
            kwargs=self._connect_kwargs(),
            check=AsyncConnectionPool.check_connection,
            name=f"tunnelmesh-{self.origin}",
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            await pool.close()
            raise StateStoreError(f"cannot reach PostgreSQL at {self.where}: {exc}") from None
        return pool

    async def _renew_pool(self) -> None:
        """The database answers again after the listening connection was lost: writes go
        through a new pool from now on. The old pool retries its lost connections with an
        exponential back-off (1, 2, 4 ... s, for up to five minutes), so after a long outage
        it would refuse writes for about as long again; its connections in use are closed as
        they come back."""
        try:
            pool = await self._open_pool()
        except StateStoreError as exc:
            log.warning("%s; the old connections keep retrying", exc)
            return
        if self._closed:
            await pool.close()
            return
        old, self._pool = self._pool, pool
        if old is not None:
            await old.close()

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._subscribers = []
        self._history = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _migrate(self) -> None:
        async def step(conn: Conn) -> bool:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS tunnelmesh_schema (version INTEGER NOT NULL)"
            )
            cur = await conn.execute("SELECT version FROM tunnelmesh_schema")
            row = await cur.fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(MIGRATIONS):
                raise StateStoreError(
                    f"the PostgreSQL state at {self.where} has schema version {version}, newer "
                    f"than this tunnelmesh knows ({len(MIGRATIONS)}): upgrade tunnelmesh"
                )
            if version == len(MIGRATIONS):
                return False
            await conn.execute(MIGRATIONS[version].encode())
            if row is None:
                await conn.execute("INSERT INTO tunnelmesh_schema VALUES (%s)", (version + 1,))
            else:
                await conn.execute("UPDATE tunnelmesh_schema SET version = %s", (version + 1,))
            log.info("PostgreSQL state at %s: schema migrated to %d", self.where, version + 1)
            return True

        while await self._tx(step):  # one migration per transaction
            pass

    # --- running work ------------------------------------------------------------------------

    async def _tx(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction; retried after a deadlock or serialization failure.

        Raises:
            StoreConflict: a uniqueness rule refused the write.
            StateStoreError: the database cannot be reached or failed.
        """
        attempt = 0
        while True:
            attempt += 1
            pool = self._pool  # (renewed after an outage: a connection goes back to its own)
            if pool is None:
                raise StateStoreError("state store is not open")
            wait = self.queue_timeout if self.reachable else self.connect_timeout
            try:
                conn = await self._getconn(pool, wait)
                try:
                    async with conn.transaction():
                        return await fn(conn)
                finally:
                    await pool.putconn(conn)
            except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure):
                if attempt == RETRIES:
                    raise StateStoreError(
                        f"PostgreSQL at {self.where}: a transaction kept conflicting"
                    ) from None
                await asyncio.sleep(0.01 * attempt * (1 + secrets.randbelow(8)))
            except pgerrors.UniqueViolation as exc:
                raise StoreConflict(f"state store conflict: {exc.diag.message_primary}") from None
            except PoolTimeout:
                raise StateStoreError(
                    f"PostgreSQL at {self.where} is unreachable (no connection within {wait:g} s)"
                ) from None
            except psycopg.Error as exc:
                raise StateStoreError(f"PostgreSQL at {self.where}: {exc}") from None

    async def _getconn(self, pool: AsyncConnectionPool[Conn], wait: float) -> Conn:
        """A connection of the pool within ``wait`` seconds; given up at once when the
        database is found unreachable meanwhile (a queue behind a dead server would otherwise
        wait the whole queue timeout).

        Raises:
            PoolTimeout: none within ``wait``, or the database went away.
        """
        if not self.reachable:
            return await pool.getconn(timeout=wait)
        getter = asyncio.ensure_future(pool.getconn(timeout=wait))
        down = asyncio.ensure_future(self._down.wait())
        try:
            await asyncio.wait({getter, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
        if getter.done():
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError, PoolTimeout):
            conn = await getter  # it may have got one just now: give it back
            await pool.putconn(conn)
        raise PoolTimeout("the database went away")

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def q(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql.encode(), params)
            return await cur.fetchall()

        return await self._tx(q)

    # --- the change feed ---------------------------------------------------------------------

    async def changes(self) -> AsyncIterator[StoreChange]:
        """Changes other stores (and this one) committed since :meth:`open`, until close.

        Readers that start in the first ``STARTUP_HISTORY`` seconds after open (the coordinator
        and its plugins as they start) get every change since open, whatever their order; a
        reader that starts later gets the changes from then on.
        """
        if self._closed or self._pool is None:
            return
        queue: asyncio.Queue[StoreChange | None] = asyncio.Queue()
        if self._history is not None:
            for past in self._history:
                queue.put_nowait(past)
        self._subscribers.append(queue)
        try:
            while (change := await queue.get()) is not None:
                yield change
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(queue)

    def _publish(self, change: StoreChange) -> None:
        if self._history is not None:
            young = asyncio.get_running_loop().time() < self._history_until
            if young and len(self._history) < STARTUP_HISTORY_MAX:
                self._history.append(change)
            else:
                self._history = None  # from now on, a new reader starts at its own start
        for queue in self._subscribers:
            queue.put_nowait(change)

    async def _listen(self) -> None:
        backoff = 0.1
        first = True
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, **self._connect_kwargs()
                )
            except psycopg.Error as exc:
                log.warning("PostgreSQL at %s: cannot listen for changes: %s", self.where, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LISTEN_RETRY_MAX)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                self._down.clear()
                self.reachable = True
                self._listening.set()
                if not first:
                    log.info("PostgreSQL at %s: listening for changes again", self.where)
                    await self._renew_pool()
                    self._publish(StoreChange(kind="resync"))
                first, backoff = False, 0.1
                async for note in conn.notifies():
                    kind, _, rest = note.payload.partition(":")
                    origin, _, key = rest.partition(":")
                    self._publish(StoreChange(kind=kind, key=key, origin=origin))
            except psycopg.Error as exc:
                if not self._closed:
                    log.warning("PostgreSQL at %s: change feed lost: %s", self.where, exc)
            finally:
                self.reachable = False
                self._down.set()
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            if not self._closed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LISTEN_RETRY_MAX)

    # --- peers -------------------------------------------------------------------------------

    async def load_peers(self) -> list[PeerRecord]:
        rows = await self._read(f"SELECT {PEER_COLUMNS} FROM peers ORDER BY name")
        return [peer_from_row(r) for r in rows]

    async def get_peer(self, peer_id: str) -> PeerRecord | None:
        rows = await self._read(f"SELECT {PEER_COLUMNS} FROM peers WHERE peer_id = %s", (peer_id,))
        return peer_from_row(rows[0]) if rows else None

    async def put_peer(self, record: PeerRecord) -> None:
        async def q(conn: Conn) -> None:
            await _write_peer(conn, record)
            await _notify(conn, "peer", self.origin, record.peer_id)

        await self._tx(q)

    async def claim_peer(
        self, record: PeerRecord, *, names: Iterable[str], ips: Iterable[str]
    ) -> PeerRecord:
        names, ips = _Replay(names), _Replay(ips)

        async def q(conn: Conn) -> PeerRecord:
            name = await _free_name(conn, record.peer_id, names)
            stored = msgspec.structs.replace(record, name=name)
            if record.mesh_ip:
                await _write_peer(conn, stored)
            else:  # the name is reserved and the address held by the steps above
                ip = await _free_address(conn, record.peer_id, ips)
                stored = msgspec.structs.replace(stored, mesh_ip=ip)
                await conn.execute(_INSERT_PEER, peer_row(stored))
            await _notify(conn, "peer", self.origin, record.peer_id)
            return stored

        return await self._tx(q)

    async def delete_peer(self, peer_id: str) -> bool:
        async def q(conn: Conn) -> bool:
            await conn.execute("DELETE FROM addresses WHERE owner = %s", (peer_id,))
            cur = await conn.execute("DELETE FROM peers WHERE peer_id = %s", (peer_id,))
            if cur.rowcount > 0:
                await _notify(conn, "peer", self.origin, peer_id)
            return cur.rowcount > 0

        return await self._tx(q)

    async def put_liveness(self, records: Sequence[PeerRecord]) -> None:
        if not records:
            return
        ids = [r.peer_id for r in records]
        seen = [r.last_seen for r in records]
        status = [status_blob(r) for r in records]

        async def q(conn: Conn) -> None:
            await conn.execute(
                "UPDATE peers SET last_seen = v.last_seen, status = v.status FROM "
                "(SELECT unnest(%s::text[]) AS peer_id, unnest(%s::float8[]) AS last_seen, "
                "unnest(%s::bytea[]) AS status) AS v WHERE peers.peer_id = v.peer_id",
                (ids, seen, status),
            )

        await self._tx(q)

    async def load_liveness(self, since: float) -> dict[str, float]:
        rows = await self._read(
            "SELECT peer_id, last_seen FROM peers WHERE last_seen > %s", (since,)
        )
        return {r[0]: r[1] for r in rows}

    # --- meta --------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        rows = await self._read("SELECT value FROM meta WHERE key = %s", (key,))
        return bytes(rows[0][0]) if rows else None

    async def put_meta_if_absent(self, key: str, value: bytes) -> bytes:
        async def q(conn: Conn) -> bytes:
            cur = await conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING "
                "RETURNING value",
                (key, value),
            )
            if await cur.fetchone() is not None:
                await _notify(conn, "meta", self.origin, key)
                return value
            cur = await conn.execute("SELECT value FROM meta WHERE key = %s", (key,))
            row = await cur.fetchone()
            assert row is not None
            return bytes(row[0])

        return await self._tx(q)

    async def put_meta(self, key: str, value: bytes) -> None:
        async def q(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            await _notify(conn, "meta", self.origin, key)

        await self._tx(q)

    # --- names and addresses -----------------------------------------------------------------

    async def load_names(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._read("SELECT name, peer_id FROM names")}

    async def reserve_name(self, name: str, owner: str) -> str:
        async def q(conn: Conn) -> str:
            holder = await _reserve(conn, name, owner)
            if holder == owner:
                await _notify(conn, "name", self.origin, name)
            return holder

        return await self._tx(q)

    async def release_name(self, name: str) -> bool:
        async def q(conn: Conn) -> bool:
            cur = await conn.execute(
                "DELETE FROM names WHERE name = %s AND NOT EXISTS "
                "(SELECT 1 FROM peers WHERE peers.name = names.name)",
                (name,),
            )
            if cur.rowcount > 0:
                await _notify(conn, "name", self.origin, name)
            return cur.rowcount > 0

        return await self._tx(q)

    async def load_addresses(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._read("SELECT mesh_ip, owner FROM addresses")}

    async def claim_address(self, owner: str, ips: Iterable[str]) -> str:
        ips = _Replay(ips)

        async def q(conn: Conn) -> str:
            cur = await conn.execute("SELECT mesh_ip FROM addresses WHERE owner = %s", (owner,))
            row = await cur.fetchone()
            if row is not None:
                return str(row[0])
            ip = await _free_address(conn, owner, ips)
            await _notify(conn, "address", self.origin, owner)
            return ip

        return await self._tx(q)

    async def release_address(self, owner: str) -> bool:
        async def q(conn: Conn) -> bool:
            cur = await conn.execute(
                "DELETE FROM addresses WHERE owner = %s AND NOT EXISTS "
                "(SELECT 1 FROM peers WHERE peers.peer_id = addresses.owner)",
                (owner,),
            )
            if cur.rowcount > 0:
                await _notify(conn, "address", self.origin, owner)
            return cur.rowcount > 0

        return await self._tx(q)

    # --- clients ------------------------------------------------------------------------------

    async def load_clients(self) -> list[ClientRecord]:
        rows = await self._read(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY name")
        return [client_from_row(r) for r in rows]

    async def put_client(self, record: ClientRecord) -> None:
        async def q(conn: Conn) -> None:
            holder = await _reserve(conn, record.name, record.client_id)
            if holder != record.client_id:
                raise NameReserved(record.name, holder)
            await conn.execute(  # a renamed client's old name goes (no tombstones)
                "DELETE FROM names WHERE peer_id = %s AND name <> %s",
                (record.client_id, record.name),
            )
            await _hold_address(conn, record.client_id, record.mesh_ip)
            await conn.execute(_INSERT_CLIENT, client_row(record))
            await _notify(conn, "client", self.origin, record.client_id)

        await self._tx(q)

    async def delete_client(self, client_id: str) -> bool:
        async def q(conn: Conn) -> bool:
            cur = await conn.execute("DELETE FROM clients WHERE client_id = %s", (client_id,))
            if cur.rowcount == 0:
                return False
            await conn.execute("DELETE FROM names WHERE peer_id = %s", (client_id,))
            await conn.execute("DELETE FROM addresses WHERE owner = %s", (client_id,))
            await _notify(conn, "client", self.origin, client_id)
            return True

        return await self._tx(q)

    # --- groups and documents ----------------------------------------------------------------

    async def load_groups(self) -> list[Group]:
        rows = await self._read("SELECT name, members, created_at FROM groups ORDER BY name")
        return [Group(name=r[0], members=members_of(bytes(r[1])), created_at=r[2]) for r in rows]

    async def put_group(self, group: Group) -> None:
        async def q(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO groups (name, members, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET members = excluded.members",
                (group.name, members_blob(group), group.created_at),
            )
            await _notify(conn, "group", self.origin, group.name)

        await self._tx(q)

    async def delete_group(self, name: str) -> bool:
        async def q(conn: Conn) -> bool:
            cur = await conn.execute("DELETE FROM groups WHERE name = %s", (name,))
            if cur.rowcount > 0:
                await _notify(conn, "group", self.origin, name)
            return cur.rowcount > 0

        return await self._tx(q)

    async def get_doc(self, collection: str, key: str) -> bytes | None:
        rows = await self._read(
            "SELECT value FROM docs WHERE collection = %s AND key = %s", (collection, key)
        )
        return bytes(rows[0][0]) if rows else None

    async def put_doc(self, collection: str, key: str, value: bytes) -> None:
        async def q(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO docs (collection, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value",
                (collection, key, value),
            )
            await _notify(conn, "doc", self.origin, f"{collection}/{key}")

        await self._tx(q)

    async def delete_doc(self, collection: str, key: str) -> bool:
        async def q(conn: Conn) -> bool:
            cur = await conn.execute(
                "DELETE FROM docs WHERE collection = %s AND key = %s", (collection, key)
            )
            if cur.rowcount > 0:
                await _notify(conn, "doc", self.origin, f"{collection}/{key}")
            return cur.rowcount > 0

        return await self._tx(q)

    async def load_docs(self, collection: str) -> dict[str, bytes]:
        rows = await self._read(
            "SELECT key, value FROM docs WHERE collection = %s ORDER BY key", (collection,)
        )
        return {r[0]: bytes(r[1]) for r in rows}
