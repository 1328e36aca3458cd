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
a rolled-back write notifies nobody and listeners see changes in commit order. The pool, the
transactions, the migrations and the change feed are :mod:`tunnelmesh_postgres.database`; the
connection string (with its password) comes from ``state.dsn_file``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import msgspec
from tunnelmesh.coordinator.alloc import AllocationError
from tunnelmesh.coordinator.store import (
    CLIENT_COLUMNS,
    PEER_COLUMNS,
    ClientRecord,
    Group,
    NameReserved,
    PeerRecord,
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
from tunnelmesh.private_files import read_secret_file

from tunnelmesh_postgres.database import CHANNEL, Conn, Database

if TYPE_CHECKING:
    from tunnelmesh.config import StateConfig

__all__ = ["CHANNEL", "PostgresStore"]

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


class PostgresStore(Database):
    """:class:`~tunnelmesh.coordinator.store.StateStore` on a PostgreSQL database (the
    arguments are :class:`~tunnelmesh_postgres.database.Database`'s)."""

    name: ClassVar[str] = "postgres"

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
