"""The connection side of the PostgreSQL state store: the pool, transactions with their
retries, the migrations run at open, and the connection that LISTENs for the changes other
coordinators commit (:meth:`Database.changes`).

Every write is one transaction at READ COMMITTED (:meth:`Database._tx`); a deadlock or
serialization failure is retried, a uniqueness violation is a
:class:`~tunnelmesh.coordinator.store.StoreConflict`, anything else a
:class:`~tunnelmesh.errors.StateStoreError`. While the listening connection is lost the
database counts as unreachable: calls fail fast, the listener reconnects with back-off, and
then the pool is renewed and the feed yields a ``resync`` change (notifications of the gap are
gone). What is stored, and how, is :mod:`tunnelmesh_postgres.store`.

The connection string (with its password) is registered with the log redactor before anything
can log it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tunnelmesh.coordinator.store import StoreChange, StoreConflict
from tunnelmesh.errors import ConfigError, StateStoreError
from tunnelmesh.logs import add_secret

from tunnelmesh_postgres.schema import LOCK_ID, MIGRATIONS

__all__ = ["CHANNEL", "Conn", "Database"]

log = logging.getLogger("tunnelmesh_postgres.store")
"""(the store's log: its messages kept their logger when the module was split)"""

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

CHANNEL = "tunnelmesh_state"
STARTUP_HISTORY = 30.0
"""Seconds after open during which a new change-feed reader still gets every change since open."""
STARTUP_HISTORY_MAX = 10_000
RETRIES = 8
"""Attempts of one transaction that keeps losing to deadlocks or serialization failures."""

LISTEN_RETRY_MAX = 2.0
"""Seconds at most between tries of the listening connection while it is lost: when it is
back the store also renews its pool, so this bounds how long writes stay refused after the
database answers again."""


class Database:
    """A PostgreSQL database, its pool and its change feed (the base of
    :class:`~tunnelmesh_postgres.store.PostgresStore`).

    Args:
        dsn: a libpq connection string or URI (with its password); registered as a secret.
        pool_size: the most connections this store holds for its work (one more listens).
        connect_timeout: while the database is unreachable (the listening connection is
            lost), seconds a call waits for a connection before it fails with StateStoreError
            (the coordinator answers 503 then).
        queue_timeout: while it is reachable, seconds a call may wait for a free connection of
            the pool (a burst of registrations queues; it is not an outage).
    """

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
