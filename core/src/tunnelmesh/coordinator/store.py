"""The coordinator's durable state behind one small interface.

:class:`StateStore` is everything the coordinator asks of its database: load the peers, write
one peer (one transaction), delete one, write a batch of liveness updates, and keep a few named
blobs (the mesh CA), the names reserved for keys (tombstones) and the groups.
:class:`SqliteStore` implements it with the standard library's sqlite3 in
a single worker thread, WAL journal and ``synchronous=FULL`` (a registration acknowledged to a
peer survives a power cut). A networked database for several coordinators implements the same
protocol; uniqueness of key, name and IP is enforced by the database, so a lost race between
two coordinators surfaces as :class:`StoreConflict` instead of two peers sharing an IP.

Names belong to keys: :meth:`StateStore.put_peer` records ``name -> peer_id`` in the ``names``
table in the same transaction, and that row stays when the peer is deleted (a tombstone), so the
name can never be registered by another key until an admin releases it
(:meth:`StateStore.release_name`).

Schema versions: the database's ``PRAGMA user_version`` says which :data:`MIGRATIONS` have run;
:meth:`SqliteStore.open` runs the missing ones in order, each in one transaction, so a state
directory of an older release is upgraded at start (and a newer one is refused).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import msgspec

from tunnelmesh.control.messages import Counters
from tunnelmesh.errors import StateStoreError
from tunnelmesh.private_files import PRIVATE_UMASK, ensure_private_dir, private_umask

__all__ = ["MIGRATIONS", "Group", "PeerRecord", "SqliteStore", "StateStore", "StoreConflict"]

T = TypeVar("T")


class StoreConflict(StateStoreError):
    """A write broke a uniqueness rule (public key, name or mesh IP already held)."""


class Group(msgspec.Struct, kw_only=True):
    """A named set of peers, by peer ID (a peer's name can change, its key cannot)."""

    name: str
    members: list[str] = msgspec.field(default_factory=list)
    created_at: float = 0.0


class PeerRecord(msgspec.Struct, kw_only=True):
    """One registered peer, as stored."""

    peer_id: str
    public_key: str
    name: str
    mesh_ip: str
    is_admin: bool = False
    is_coordinator: bool = False
    session_hash: str = ""  # hex SHA-256 of the peer's session token
    created_at: float = 0.0
    last_seen: float = 0.0
    endpoints: list[str] = msgspec.field(default_factory=list)
    transports: dict[str, str] = msgspec.field(default_factory=dict)
    rtt_ms: dict[str, float] = msgspec.field(default_factory=dict)
    reasons: dict[str, str] = msgspec.field(default_factory=dict)
    counters: Counters = msgspec.field(default_factory=Counters)
    version: str = ""
    allow_exit_traffic: bool = False
    aliases: list[str] = msgspec.field(default_factory=list)  # the accepted dns aliases
    alias_request: list[str] = msgspec.field(default_factory=list)  # asked for; not stored
    pending: bool = False  # approve_new_peers: registered, waiting for an admin


@runtime_checkable
class StateStore(Protocol):
    """What the coordinator needs from a database. Every method is atomic."""

    async def open(self) -> None:
        """Connect and create the schema when missing.

        Raises:
            StateStoreError: the database cannot be opened.
        """

    async def close(self) -> None:
        """Flush and close; idempotent."""

    async def load_peers(self) -> list[PeerRecord]:
        """Every registered peer."""

    async def put_peer(self, record: PeerRecord) -> None:
        """Insert or replace the peer ``record.peer_id`` in one transaction.

        Also reserves ``record.name`` for ``record.peer_id`` (kept after a delete).

        Raises:
            StoreConflict: another peer holds the name or the mesh IP, or the name is
                reserved for another key.
        """

    async def delete_peer(self, peer_id: str) -> bool:
        """Remove a peer; True when it existed."""

    async def put_liveness(self, records: Sequence[PeerRecord]) -> None:
        """Update last_seen, endpoints and reported status of existing peers, one transaction.

        Peers deleted meanwhile are skipped.
        """

    async def get_meta(self, key: str) -> bytes | None:
        """A named blob, or None."""

    async def load_names(self) -> dict[str, str]:
        """Every reserved name and the peer ID it belongs to (live peers and tombstones)."""

    async def release_name(self, name: str) -> bool:
        """Forget the reservation of ``name`` unless a live peer holds it; True when freed."""

    async def load_groups(self) -> list[Group]:
        """Every group."""

    async def put_group(self, group: Group) -> None:
        """Create or replace one group."""

    async def delete_group(self, name: str) -> bool:
        """Remove a group; True when it existed."""

    async def put_meta_if_absent(self, key: str, value: bytes) -> bytes:
        """Store ``value`` under ``key`` unless a value is there; return the stored value."""

    async def put_meta(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing what was there."""


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

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V0, _SCHEMA_V1, _SCHEMA_V2)
"""SQL run to reach schema version ``i + 1`` from version ``i`` (``PRAGMA user_version``).

Version 1 reserves every existing peer's name for its key and adds the groups table; version 2
adds the ``pending`` flag (``approve_new_peers``; existing peers are approved).
"""


class _Status(msgspec.Struct, kw_only=True):
    endpoints: list[str] = msgspec.field(default_factory=list)
    transports: dict[str, str] = msgspec.field(default_factory=dict)
    rtt_ms: dict[str, float] = msgspec.field(default_factory=dict)
    reasons: dict[str, str] = msgspec.field(default_factory=dict)
    counters: Counters = msgspec.field(default_factory=Counters)
    version: str = ""
    allow_exit_traffic: bool = False
    aliases: list[str] = msgspec.field(default_factory=list)


_status_enc = msgspec.json.Encoder()
_status_dec = msgspec.json.Decoder(_Status)
_members_dec = msgspec.json.Decoder(list[str])


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


def _status_of(r: PeerRecord) -> bytes:
    return _status_enc.encode(
        _Status(
            endpoints=r.endpoints,
            transports=r.transports,
            rtt_ms=r.rtt_ms,
            reasons=r.reasons,
            counters=r.counters,
            version=r.version,
            allow_exit_traffic=r.allow_exit_traffic,
            aliases=r.aliases,
        )
    )


class SqliteStore:
    """:class:`StateStore` on an SQLite file (``<data_dir>/state.db``).

    All database work runs in one dedicated thread, so the event loop never blocks on a disk
    write and sqlite3 sees a single connection user.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None

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
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
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

    async def close(self) -> None:
        if self._conn is None or self._pool is None:
            return
        conn, pool = self._conn, self._pool
        await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        self._conn = None
        self._pool = None
        pool.shutdown(wait=True)

    async def load_peers(self) -> list[PeerRecord]:
        def q(conn: sqlite3.Connection) -> list[PeerRecord]:
            rows = conn.execute(
                "SELECT peer_id, public_key, name, mesh_ip, is_admin, is_coordinator, "
                "session_hash, created_at, last_seen, status, pending FROM peers ORDER BY name"
            ).fetchall()
            out = []
            for row in rows:
                status = _status_dec.decode(row[9])
                out.append(
                    PeerRecord(
                        peer_id=row[0],
                        public_key=row[1],
                        name=row[2],
                        mesh_ip=row[3],
                        is_admin=bool(row[4]),
                        is_coordinator=bool(row[5]),
                        session_hash=row[6],
                        created_at=row[7],
                        last_seen=row[8],
                        endpoints=status.endpoints,
                        transports=status.transports,
                        rtt_ms=status.rtt_ms,
                        reasons=status.reasons,
                        counters=status.counters,
                        version=status.version,
                        allow_exit_traffic=status.allow_exit_traffic,
                        aliases=status.aliases,
                        pending=bool(row[10]),
                    )
                )
            return out

        return await self._run(q)

    async def put_peer(self, record: PeerRecord) -> None:
        row = (
            record.peer_id,
            record.public_key,
            record.name,
            record.mesh_ip,
            int(record.is_admin),
            int(record.is_coordinator),
            record.session_hash,
            record.created_at,
            record.last_seen,
            _status_of(record),
            int(record.pending),
        )

        def q(conn: sqlite3.Connection) -> None:
            with conn:  # one transaction: all or nothing
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO names (name, peer_id) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                    (record.name, record.peer_id),
                )
                owner = conn.execute(
                    "SELECT peer_id FROM names WHERE name = ?", (record.name,)
                ).fetchone()
                if owner[0] != record.peer_id:
                    raise StoreConflict(f"name {record.name!r} is reserved for peer {owner[0]}")
                conn.execute(
                    "INSERT INTO peers (peer_id, public_key, name, mesh_ip, is_admin, "
                    "is_coordinator, session_hash, created_at, last_seen, status, pending) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(peer_id) DO UPDATE SET "
                    "public_key=excluded.public_key, name=excluded.name, "
                    "mesh_ip=excluded.mesh_ip, is_admin=excluded.is_admin, "
                    "is_coordinator=excluded.is_coordinator, "
                    "session_hash=excluded.session_hash, created_at=excluded.created_at, "
                    "last_seen=excluded.last_seen, status=excluded.status, "
                    "pending=excluded.pending",
                    row,
                )

        await self._run(q)

    async def delete_peer(self, peer_id: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,))
                return cur.rowcount > 0

        return await self._run(q)

    async def put_liveness(self, records: Sequence[PeerRecord]) -> None:
        rows = [(r.last_seen, _status_of(r), r.peer_id) for r in records]
        if not rows:
            return

        def q(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "UPDATE peers SET last_seen = ?, status = ? WHERE peer_id = ?", rows
                )

        await self._run(q)

    async def get_meta(self, key: str) -> bytes | None:
        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(q)

    async def put_meta_if_absent(self, key: str, value: bytes) -> bytes:
        def q(conn: sqlite3.Connection) -> bytes:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                    (key, value),
                )
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                return bytes(row[0])

        return await self._run(q)

    async def put_meta(self, key: str, value: bytes) -> None:
        def q(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

        await self._run(q)

    async def load_names(self) -> dict[str, str]:
        def q(conn: sqlite3.Connection) -> dict[str, str]:
            return dict(conn.execute("SELECT name, peer_id FROM names").fetchall())

        return await self._run(q)

    async def release_name(self, name: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.execute(
                    "DELETE FROM names WHERE name = ? AND NOT EXISTS "
                    "(SELECT 1 FROM peers WHERE peers.name = names.name)",
                    (name,),
                )
                return cur.rowcount > 0

        return await self._run(q)

    async def load_groups(self) -> list[Group]:
        def q(conn: sqlite3.Connection) -> list[Group]:
            rows = conn.execute(
                "SELECT name, members, created_at FROM groups ORDER BY name"
            ).fetchall()
            return [
                Group(name=r[0], members=_members_dec.decode(r[1]), created_at=r[2]) for r in rows
            ]

        return await self._run(q)

    async def put_group(self, group: Group) -> None:
        row = (group.name, _status_enc.encode(sorted(set(group.members))), group.created_at)

        def q(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO groups (name, members, created_at) VALUES (?,?,?) "
                    "ON CONFLICT(name) DO UPDATE SET members=excluded.members",
                    row,
                )

        await self._run(q)

    async def delete_group(self, name: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                return conn.execute("DELETE FROM groups WHERE name = ?", (name,)).rowcount > 0

        return await self._run(q)

    async def dump(self) -> list[str]:
        """Every row as SQL text (tests compare dumps to prove nothing changed)."""

        def q(conn: sqlite3.Connection) -> list[str]:
            return list(conn.iterdump())

        return await self._run(q)
