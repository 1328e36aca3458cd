"""The embedded state store: SQLite in the coordinator's data dir (one coordinator).

:class:`SqliteStore` implements :class:`~tunnelmesh.coordinator.store.StateStore` with the
standard library's sqlite3 in a single worker thread, WAL journal and ``synchronous=FULL`` (a
registration acknowledged to a peer survives a power cut). Every write is ``BEGIN IMMEDIATE``, so
two stores open on one file (tests do that) still never give one address or name twice.

Schema versions: the database's ``PRAGMA user_version`` says which :data:`MIGRATIONS` have run;
:meth:`SqliteStore.open` runs the missing ones in order, each in one transaction, so a state
directory of an older release is upgraded at start (and a newer one is refused).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

import msgspec

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
from tunnelmesh.errors import StateStoreError
from tunnelmesh.private_files import PRIVATE_UMASK, ensure_private_dir, private_umask

if TYPE_CHECKING:
    from tunnelmesh.config import StateConfig

__all__ = ["MIGRATIONS", "SqliteStore"]

T = TypeVar("T")

_SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    mesh_ip TEXT NOT NULL UNIQUE,
    is_admin INTEGER NOT NULL DEFAULT 0,
    is_coordinator INTEGER NOT NULL DEFAULT 0,
    session_hash TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL DEFAULT 0,
    last_seen REAL NOT NULL DEFAULT 0,
    status BLOB NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""

_SCHEMA_V1 = """
CREATE TABLE names (
    name TEXT PRIMARY KEY,
    peer_id TEXT NOT NULL
);
INSERT OR IGNORE INTO names (name, peer_id) SELECT name, peer_id FROM peers;
CREATE TABLE groups (
    name TEXT PRIMARY KEY,
    members BLOB NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL DEFAULT 0
);
"""

_SCHEMA_V2 = """
ALTER TABLE peers ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
"""

_SCHEMA_V3 = """
CREATE TABLE addresses (
    mesh_ip TEXT PRIMARY KEY,
    owner TEXT NOT NULL UNIQUE
);
INSERT OR IGNORE INTO addresses (mesh_ip, owner) SELECT mesh_ip, peer_id FROM peers;
CREATE TABLE docs (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (collection, key)
);
"""

_SCHEMA_V4 = """
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    public_key TEXT NOT NULL,
    mesh_ip TEXT NOT NULL UNIQUE,
    concentrator TEXT NOT NULL,
    preshared_key TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL DEFAULT 1,
    expires_at REAL NOT NULL DEFAULT 0,
    exit_peer TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL DEFAULT 0,
    UNIQUE (kind, public_key)
);
"""

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V0, _SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4)
"""SQL run to reach schema version ``i + 1`` from version ``i`` (``PRAGMA user_version``).

Version 1 reserves every existing peer's name for its key and adds the groups table; version 2
adds the ``pending`` flag (``approve_new_peers``; existing peers are approved); version 3 adds
the address table (every held mesh IP and its owner: peers, and clients that are not peers) and
the documents table (named collections other features keep in the store); version 5 adds the
clients table (WireGuard clients of concentrator peers: their names and addresses are held in the
names and address tables, so none is ever a peer's).
"""


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to ``len(MIGRATIONS)``, one transaction per step."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StateStoreError(
            f"state store {path} has schema version {version}, newer than this tunnelmesh "
            f"knows ({len(MIGRATIONS)}): upgrade tunnelmesh"
        )
    for target in range(version + 1, len(MIGRATIONS) + 1):
        # executescript commits first; BEGIN ... COMMIT around each step keeps it atomic.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{MIGRATIONS[target - 1]}\n"
                f"PRAGMA user_version = {target};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


_INSERT_PEER = (
    f"INSERT INTO peers ({PEER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(peer_id) DO UPDATE SET "
    "public_key=excluded.public_key, name=excluded.name, "
    "mesh_ip=excluded.mesh_ip, is_admin=excluded.is_admin, "
    "is_coordinator=excluded.is_coordinator, "
    "session_hash=excluded.session_hash, created_at=excluded.created_at, "
    "last_seen=excluded.last_seen, status=excluded.status, "
    "pending=excluded.pending"
)


_INSERT_CLIENT = (
    f"INSERT INTO clients ({CLIENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(client_id) DO UPDATE SET name=excluded.name, kind=excluded.kind, "
    "public_key=excluded.public_key, mesh_ip=excluded.mesh_ip, "
    "concentrator=excluded.concentrator, preshared_key=excluded.preshared_key, "
    "enabled=excluded.enabled, expires_at=excluded.expires_at, exit_peer=excluded.exit_peer, "
    "created_by=excluded.created_by, created_at=excluded.created_at"
)


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _free_name(conn: sqlite3.Connection, owner: str, names: Iterable[str]) -> str:
    """The first of ``names`` not reserved for another ID (inside the caller's transaction)."""
    first: tuple[str, str] | None = None
    for batch in candidate_batches(names):
        held = dict(
            conn.execute(
                f"SELECT name, peer_id FROM names WHERE name IN ({_marks(len(batch))})", batch
            ).fetchall()
        )
        for name in batch:
            holder = held.get(name, owner)
            if holder == owner:
                return name
            if first is None:
                first = (name, holder)
    if first is None:
        raise StateStoreError("no name was asked for")
    raise NameReserved(*first)


def _free_address(conn: sqlite3.Connection, owner: str, ips: Iterable[str]) -> str:
    for batch in candidate_batches(ips):
        held = dict(
            conn.execute(
                f"SELECT mesh_ip, owner FROM addresses WHERE mesh_ip IN ({_marks(len(batch))})",
                batch,
            ).fetchall()
        )
        for ip in batch:
            if held.get(ip, owner) == owner:
                return ip
    raise AllocationError("no free address in the mesh range")


def _hold_address(conn: sqlite3.Connection, owner: str, ip: str) -> None:
    conn.execute("DELETE FROM addresses WHERE owner = ? AND mesh_ip <> ?", (owner, ip))
    conn.execute(
        "INSERT INTO addresses (mesh_ip, owner) VALUES (?, ?) ON CONFLICT(mesh_ip) DO NOTHING",
        (ip, owner),
    )
    holder = conn.execute("SELECT owner FROM addresses WHERE mesh_ip = ?", (ip,)).fetchone()[0]
    if holder != owner:
        raise StoreConflict(f"mesh IP {ip} is held by {holder}")


def _write_peer(conn: sqlite3.Connection, record: PeerRecord) -> None:
    """Reserve the name, hold the address and upsert the row (inside a transaction)."""
    conn.execute(
        "INSERT INTO names (name, peer_id) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
        (record.name, record.peer_id),
    )
    owner = conn.execute("SELECT peer_id FROM names WHERE name = ?", (record.name,)).fetchone()
    if owner[0] != record.peer_id:
        raise NameReserved(record.name, owner[0])
    _hold_address(conn, record.peer_id, record.mesh_ip)
    conn.execute(_INSERT_PEER, peer_row(record))


class SqliteStore:
    """:class:`~tunnelmesh.coordinator.store.StateStore` on an SQLite file
    (``<data_dir>/state.db``).

    All database work runs in one dedicated thread, so the event loop never blocks on a disk
    write and sqlite3 sees a single connection user.
    """

    name: ClassVar[str] = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.origin = secrets.token_hex(8)
        self._conn: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed: asyncio.Event | None = None

    @classmethod
    def from_config(cls, state: StateConfig, data_dir: Path) -> SqliteStore:
        """``<data_dir>/state.db``."""
        return cls(data_dir / "state.db")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None or self._pool is None:
            raise StateStoreError("state store is not open")
        conn = self._conn

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.IntegrityError as exc:
                raise StoreConflict(f"state store conflict: {exc}") from None
            except sqlite3.Error as exc:
                raise StateStoreError(f"state store {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction (all or nothing)."""

        def tx(conn: sqlite3.Connection) -> T:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                return fn(conn)

        return await self._run(tx)

    async def open(self) -> None:
        """Open (creating) the database in a private directory.

        The directory is created 0700, or refused when it exists open to other users (the
        database holds the mesh CA's key). The database and SQLite's ``-wal``/``-shm`` files
        are created under umask 077, so they are 0600 from the start; files an older version
        left wider are narrowed to 0600 before use.

        Raises:
            ConfigError: the directory is group/world-accessible or cannot be created.
            StateStoreError: the database cannot be opened.
        """
        ensure_private_dir(self.path.parent, "the coordinator's data dir")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tm-state")

        def connect() -> sqlite3.Connection:
            with private_umask():
                for suffix in ("", "-wal", "-shm"):
                    f = self.path.with_name(self.path.name + suffix)
                    if f.exists() and f.stat().st_mode & PRIVATE_UMASK:
                        f.chmod(0o600)
                conn = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=30
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                _migrate(conn, self.path)
            return conn

        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._pool, connect)
        except (sqlite3.Error, OSError) as exc:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise StateStoreError(f"cannot open state store {self.path}: {exc}") from exc
        except StateStoreError:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise
        self._closed = asyncio.Event()

    async def close(self) -> None:
        if self._closed is not None:
            self._closed.set()
        if self._conn is None or self._pool is None:
            return
        conn, pool = self._conn, self._pool
        await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        self._conn = None
        self._pool = None
        pool.shutdown(wait=True)

    async def changes(self) -> AsyncIterator[StoreChange]:
        """Nothing: one coordinator per file. Ends when the store closes."""
        if self._closed is not None:
            await self._closed.wait()
        return
        yield  # an async generator

    # --- peers -----------------------------------------------------------------------------

    async def load_peers(self) -> list[PeerRecord]:
        def q(conn: sqlite3.Connection) -> list[PeerRecord]:
            rows = conn.execute(f"SELECT {PEER_COLUMNS} FROM peers ORDER BY name").fetchall()
            return [peer_from_row(row) for row in rows]

        return await self._run(q)

    async def get_peer(self, peer_id: str) -> PeerRecord | None:
        def q(conn: sqlite3.Connection) -> PeerRecord | None:
            row = conn.execute(
                f"SELECT {PEER_COLUMNS} FROM peers WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            return None if row is None else peer_from_row(row)

        return await self._run(q)

    async def put_peer(self, record: PeerRecord) -> None:
        await self._write(lambda conn: _write_peer(conn, record))

    async def claim_peer(
        self, record: PeerRecord, *, names: Iterable[str], ips: Iterable[str]
    ) -> PeerRecord:
        def q(conn: sqlite3.Connection) -> PeerRecord:
            name = _free_name(conn, record.peer_id, names)
            ip = record.mesh_ip or _free_address(conn, record.peer_id, ips)
            stored = msgspec.structs.replace(record, name=name, mesh_ip=ip)
            _write_peer(conn, stored)
            return stored

        return await self._write(q)

    async def delete_peer(self, peer_id: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM addresses WHERE owner = ?", (peer_id,))
            return conn.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,)).rowcount > 0

        return await self._write(q)

    async def put_liveness(self, records: Sequence[PeerRecord]) -> None:
        rows = [(r.last_seen, status_blob(r), r.peer_id) for r in records]
        if not rows:
            return
        await self._write(
            lambda conn: conn.executemany(
                "UPDATE peers SET last_seen = ?, status = ? WHERE peer_id = ?", rows
            )
        )

    async def load_liveness(self, since: float) -> dict[str, float]:
        def q(conn: sqlite3.Connection) -> dict[str, float]:
            return dict(
                conn.execute(
                    "SELECT peer_id, last_seen FROM peers WHERE last_seen > ?", (since,)
                ).fetchall()
            )

        return await self._run(q)

    # --- meta --------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(q)

    async def put_meta_if_absent(self, key: str, value: bytes) -> bytes:
        def q(conn: sqlite3.Connection) -> bytes:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                (key, value),
            )
            return bytes(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

        return await self._write(q)

    async def put_meta(self, key: str, value: bytes) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    # --- names and addresses -----------------------------------------------------------------

    async def load_names(self) -> dict[str, str]:
        def q(conn: sqlite3.Connection) -> dict[str, str]:
            return dict(conn.execute("SELECT name, peer_id FROM names").fetchall())

        return await self._run(q)

    async def reserve_name(self, name: str, owner: str) -> str:
        def q(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO names (name, peer_id) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                (name, owner),
            )
            row = conn.execute("SELECT peer_id FROM names WHERE name = ?", (name,)).fetchone()
            return str(row[0])

        return await self._write(q)

    async def release_name(self, name: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM names WHERE name = ? AND NOT EXISTS "
                "(SELECT 1 FROM peers WHERE peers.name = names.name)",
                (name,),
            )
            return cur.rowcount > 0

        return await self._write(q)

    async def load_addresses(self) -> dict[str, str]:
        def q(conn: sqlite3.Connection) -> dict[str, str]:
            return dict(conn.execute("SELECT mesh_ip, owner FROM addresses").fetchall())

        return await self._run(q)

    async def claim_address(self, owner: str, ips: Iterable[str]) -> str:
        def q(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT mesh_ip FROM addresses WHERE owner = ?", (owner,)).fetchone()
            if row is not None:
                return str(row[0])
            ip = _free_address(conn, owner, ips)
            _hold_address(conn, owner, ip)
            return ip

        return await self._write(q)

    async def release_address(self, owner: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM addresses WHERE owner = ? AND NOT EXISTS "
                "(SELECT 1 FROM peers WHERE peers.peer_id = addresses.owner)",
                (owner,),
            )
            return cur.rowcount > 0

        return await self._write(q)

    # --- groups and documents ----------------------------------------------------------------

    async def load_clients(self) -> list[ClientRecord]:
        def q(conn: sqlite3.Connection) -> list[ClientRecord]:
            rows = conn.execute(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY name").fetchall()
            return [client_from_row(r) for r in rows]

        return await self._run(q)

    async def put_client(self, record: ClientRecord) -> None:
        def q(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO names (name, peer_id) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                (record.name, record.client_id),
            )
            owner = conn.execute(
                "SELECT peer_id FROM names WHERE name = ?", (record.name,)
            ).fetchone()[0]
            if owner != record.client_id:
                raise NameReserved(record.name, owner)
            # a renamed client's old name goes (clients leave no tombstones)
            conn.execute(
                "DELETE FROM names WHERE peer_id = ? AND name <> ?", (record.client_id, record.name)
            )
            _hold_address(conn, record.client_id, record.mesh_ip)
            conn.execute(_INSERT_CLIENT, client_row(record))

        await self._write(q)

    async def delete_client(self, client_id: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM clients WHERE client_id = ?", (client_id,)).rowcount == 0:
                return False
            conn.execute("DELETE FROM names WHERE peer_id = ?", (client_id,))
            conn.execute("DELETE FROM addresses WHERE owner = ?", (client_id,))
            return True

        return await self._write(q)

    async def load_groups(self) -> list[Group]:
        def q(conn: sqlite3.Connection) -> list[Group]:
            rows = conn.execute(
                "SELECT name, members, created_at FROM groups ORDER BY name"
            ).fetchall()
            return [Group(name=r[0], members=members_of(r[1]), created_at=r[2]) for r in rows]

        return await self._run(q)

    async def put_group(self, group: Group) -> None:
        row = (group.name, members_blob(group), group.created_at)
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO groups (name, members, created_at) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET members=excluded.members",
                row,
            )
        )

    async def delete_group(self, name: str) -> bool:
        return await self._write(
            lambda conn: conn.execute("DELETE FROM groups WHERE name = ?", (name,)).rowcount > 0
        )

    async def get_doc(self, collection: str, key: str) -> bytes | None:
        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT value FROM docs WHERE collection = ? AND key = ?", (collection, key)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(q)

    async def put_doc(self, collection: str, key: str, value: bytes) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO docs (collection, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT(collection, key) DO UPDATE SET value = excluded.value",
                (collection, key, value),
            )
        )

    async def delete_doc(self, collection: str, key: str) -> bool:
        return await self._write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM docs WHERE collection = ? AND key = ?", (collection, key)
                ).rowcount
                > 0
            )
        )

    async def load_docs(self, collection: str) -> dict[str, bytes]:
        def q(conn: sqlite3.Connection) -> dict[str, bytes]:
            rows = conn.execute(
                "SELECT key, value FROM docs WHERE collection = ? ORDER BY key", (collection,)
            ).fetchall()
            return {k: bytes(v) for k, v in rows}

        return await self._run(q)

    async def dump(self) -> list[str]:
        """Every row as SQL text (tests compare dumps to prove nothing changed)."""

        def q(conn: sqlite3.Connection) -> list[str]:
            return list(conn.iterdump())

        return await self._run(q)
