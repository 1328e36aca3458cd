"""The coordinator's durable state behind one small interface.

:class:`StateStore` is everything the coordinator asks of its database: the peers (one
transaction per write, a batch for liveness), the names reserved for keys (tombstones), the
addresses held in the mesh range, the groups, a few named blobs (the mesh CA, the rotated join
token) and named collections of documents for other features. Two implementations:
:class:`~tunnelmesh.coordinator.sqlite.SqliteStore`, the embedded default (one coordinator), and
the PostgreSQL store of the ``tunnelmesh-postgres`` distribution (several coordinators on one
database). Uniqueness of key, name and IP is enforced by the database, so a lost race between
two coordinators surfaces as :class:`StoreConflict` (or, in :meth:`StateStore.claim_peer`, as
the next free candidate) instead of two peers sharing an IP.

Names belong to keys: :meth:`StateStore.put_peer` records ``name -> peer_id`` in the ``names``
table in the same transaction, and that row stays when the peer is deleted (a tombstone), so the
name can never be registered by another key until an admin releases it
(:meth:`StateStore.release_name`).

This module holds the interface, the records and the row encoding both backends share; a
backend's conformance checks are :mod:`tunnelmesh.testing.statestore`.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgspec

from tunnelmesh.control.messages import Counters
from tunnelmesh.errors import StateStoreError

if TYPE_CHECKING:
    from tunnelmesh.config import StateConfig

__all__ = [
    "CHANGE_KINDS",
    "CLIENT_COLUMNS",
    "PEER_COLUMNS",
    "ClientRecord",
    "Group",
    "NameReserved",
    "PeerRecord",
    "StateBackend",
    "StateStore",
    "StoreChange",
    "StoreConflict",
    "candidate_batches",
    "client_from_row",
    "client_row",
    "members_blob",
    "members_of",
    "peer_from_row",
    "peer_row",
    "status_blob",
]


class StoreConflict(StateStoreError):
    """A write broke a uniqueness rule (public key, name or mesh IP already held)."""


class NameReserved(StoreConflict):
    """No candidate name is free: ``name`` (the first asked for) belongs to ``owner``."""

    def __init__(self, name: str, owner: str) -> None:
        super().__init__(f"name {name!r} is reserved for {owner}")
        self.name = name
        self.owner = owner


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
    concentrator_endpoint: str = ""  # serves clients: "host:port" they dial (from heartbeats)


class ClientRecord(msgspec.Struct, kw_only=True):
    """One client of the mesh (a host that is no peer, served by a concentrator peer), as
    stored. ``preshared_key`` is a secret (never logged, never sent to another peer than the
    concentrator); the client's private key is never anywhere on the coordinator. Its name and
    mesh IP are held in the same tables as the peers', so neither can be a peer's."""

    client_id: str
    name: str
    kind: str
    public_key: str
    mesh_ip: str
    concentrator: str  # peer ID
    preshared_key: str = ""
    enabled: bool = True
    expires_at: float = 0.0  # unix time, 0 = never
    exit_peer: str = ""  # peer ID, "" = none
    created_by: str = ""  # peer ID
    created_at: float = 0.0


class StoreChange(msgspec.Struct, frozen=True, kw_only=True):
    """One committed change another coordinator of the same database may have to apply.

    ``kind``: ``peer`` (``key`` a peer ID, upserted or deleted: ask :meth:`StateStore.get_peer`),
    ``name`` (a reserved name was taken or released), ``client`` (a client ID, upserted or
    deleted), ``group`` (a group name, changed or
    deleted), ``meta`` (a meta key), ``doc`` (``collection/key`` of a document), ``address``
    (an owner ID whose address was claimed or released), or ``resync`` (changes may have been
    missed: reload everything cached).
    """

    kind: str
    key: str = ""
    origin: str = ""  # StateStore.origin of the writer ("" unknown)


CHANGE_KINDS = frozenset({"peer", "name", "client", "group", "meta", "doc", "address", "resync"})


class StateBackend(Protocol):
    """A state store class a plugin registers (``tunnelmesh_register_state_backends``)."""

    name: ClassVar[str]
    """What ``server.yaml``'s ``state.backend`` names it by."""

    @classmethod
    def from_config(cls, state: StateConfig, data_dir: Path) -> StateStore:
        """An unopened store for ``server.yaml``'s ``state:`` section.

        Raises:
            ConfigError: the section is incomplete for this backend (names the key).
        """
        ...


@runtime_checkable
class StateStore(Protocol):
    """What the coordinator needs from a database. Every method is atomic.

    Several coordinators may share one database (a networked backend): uniqueness of key, name
    and mesh IP is then the database's to enforce, and :meth:`changes` tells each coordinator
    what the others committed.
    """

    origin: str
    """Random ID of this open store (one per coordinator process), stamped on every change it
    writes, so a coordinator skips the notifications of its own writes."""

    async def open(self) -> None:
        """Connect, create the schema when missing and run the missing migrations.

        Raises:
            StateStoreError: the database cannot be opened, or its schema is newer than this
                tunnelmesh knows.
        """

    async def close(self) -> None:
        """Flush and close; idempotent. Ends :meth:`changes`."""

    def changes(self) -> AsyncIterator[StoreChange]:
        """Changes committed by any writer of the database after :meth:`open`, in commit order,
        until :meth:`close`. After a gap (the listening connection was lost) it yields
        ``StoreChange(kind="resync")``. A store that only one coordinator can use (SQLite)
        yields nothing and ends at close."""

    async def load_peers(self) -> list[PeerRecord]:
        """Every registered peer."""

    async def get_peer(self, peer_id: str) -> PeerRecord | None:
        """One peer as stored, or None when there is none."""

    async def put_peer(self, record: PeerRecord) -> None:
        """Insert or replace the peer ``record.peer_id`` in one transaction.

        Also reserves ``record.name`` for ``record.peer_id`` (kept after a delete) and its
        address in the address table.

        Raises:
            StoreConflict: another peer holds the name or the mesh IP, or the name is
                reserved for another key.
        """

    async def claim_peer(
        self, record: PeerRecord, *, names: Iterable[str], ips: Iterable[str]
    ) -> PeerRecord:
        """Store ``record`` under the first free candidate name and address; one transaction.

        A name is free when no other key holds or reserved it; an address when no other owner
        holds it. With ``record.mesh_ip`` set that address is kept (``ips`` is not read).
        Concurrent claims through other stores of the same database never end with two owners
        of one name or one address: the loser of a race takes the next candidate.

        Returns:
            The record as stored (its ``name`` and ``mesh_ip`` are the ones taken).

        Raises:
            NameReserved: no candidate name is free (it names the first and its owner).
            AllocationError: no candidate address is free.
            StoreConflict: the kept ``record.mesh_ip`` belongs to another owner.
        """

    async def delete_peer(self, peer_id: str) -> bool:
        """Remove a peer and free its address; True when it existed. Its name stays reserved."""

    async def put_liveness(self, records: Sequence[PeerRecord]) -> None:
        """Update last_seen, endpoints and reported status of existing peers, one transaction.

        Peers deleted meanwhile are skipped. Notifies nobody (too frequent).
        """

    async def load_liveness(self, since: float) -> dict[str, float]:
        """Peer ID -> last_seen of every peer whose last_seen is later than ``since``."""

    async def get_meta(self, key: str) -> bytes | None:
        """A named blob, or None."""

    async def put_meta_if_absent(self, key: str, value: bytes) -> bytes:
        """Store ``value`` under ``key`` unless a value is there; return the stored value."""

    async def put_meta(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing what was there."""

    async def load_names(self) -> dict[str, str]:
        """Every reserved name and the ID it belongs to (live peers, tombstones, others)."""

    async def reserve_name(self, name: str, owner: str) -> str:
        """Reserve ``name`` for ``owner`` unless someone holds it; return its holder now."""

    async def release_name(self, name: str) -> bool:
        """Forget the reservation of ``name`` unless a live peer holds it; True when freed."""

    async def load_addresses(self) -> dict[str, str]:
        """Every held mesh address and its owner ID (peers, and others such as clients)."""

    async def claim_address(self, owner: str, ips: Iterable[str]) -> str:
        """The address ``owner`` holds, else the first free candidate, now held by it.

        Raises:
            AllocationError: no candidate is free.
        """

    async def release_address(self, owner: str) -> bool:
        """Free the address ``owner`` holds (not a live peer's); True when it held one."""

    async def load_clients(self) -> list[ClientRecord]:
        """Every client, by name."""

    async def put_client(self, record: ClientRecord) -> None:
        """Insert or replace the client ``record.client_id`` in one transaction.

        Also reserves ``record.name`` for ``record.client_id`` in the names peers use (a name
        is unique among peers and clients) and holds its mesh IP in the address table; both go
        with :meth:`delete_client`.

        Raises:
            StoreConflict: the name is reserved for another ID (a peer's or a client's), the
                mesh IP is held by a peer or another client, or another client has the key.
        """

    async def delete_client(self, client_id: str) -> bool:
        """Remove a client, its name reservation and its address; True when it existed."""

    async def load_groups(self) -> list[Group]:
        """Every group."""

    async def put_group(self, group: Group) -> None:
        """Create or replace one group."""

    async def delete_group(self, name: str) -> bool:
        """Remove a group; True when it existed."""

    async def get_doc(self, collection: str, key: str) -> bytes | None:
        """A document of a named collection (filter rules, clients, ...), or None."""

    async def put_doc(self, collection: str, key: str, value: bytes) -> None:
        """Create or replace one document."""

    async def delete_doc(self, collection: str, key: str) -> bool:
        """Remove one document; True when it existed."""

    async def load_docs(self, collection: str) -> dict[str, bytes]:
        """Every document of ``collection`` by key."""


PEER_COLUMNS = (
    "peer_id, public_key, name, mesh_ip, is_admin, is_coordinator, session_hash, created_at, "
    "last_seen, status, pending"
)
"""The stored columns of a peer, in the order :func:`peer_row` and :func:`peer_from_row` use."""

CLIENT_COLUMNS = (
    "client_id, name, kind, public_key, mesh_ip, concentrator, preshared_key, enabled, "
    "expires_at, exit_peer, created_by, created_at"
)
"""The stored columns of a client, in the order :func:`client_row` uses."""

CANDIDATE_BATCH = 64
"""Candidates a store looks up in one query when it claims a name or an address."""


class _Status(msgspec.Struct, kw_only=True):
    endpoints: list[str] = msgspec.field(default_factory=list)
    transports: dict[str, str] = msgspec.field(default_factory=dict)
    rtt_ms: dict[str, float] = msgspec.field(default_factory=dict)
    reasons: dict[str, str] = msgspec.field(default_factory=dict)
    counters: Counters = msgspec.field(default_factory=Counters)
    version: str = ""
    allow_exit_traffic: bool = False
    aliases: list[str] = msgspec.field(default_factory=list)
    concentrator_endpoint: str = ""


_status_enc = msgspec.json.Encoder()
_status_dec = msgspec.json.Decoder(_Status)
_members_dec = msgspec.json.Decoder(list[str])


def candidate_batches(
    candidates: Iterable[str], size: int = CANDIDATE_BATCH
) -> Iterator[list[str]]:
    """``candidates`` in lists of ``size`` (a store asks the database about one list at once)."""
    it = iter(candidates)
    while batch := list(itertools.islice(it, size)):
        yield batch


def peer_row(
    r: PeerRecord,
) -> tuple[str, str, str, str, bool, bool, str, float, float, bytes, bool]:
    """The stored columns of ``r`` (:data:`PEER_COLUMNS`)."""
    return (
        r.peer_id,
        r.public_key,
        r.name,
        r.mesh_ip,
        r.is_admin,
        r.is_coordinator,
        r.session_hash,
        r.created_at,
        r.last_seen,
        status_blob(r),
        r.pending,
    )


def peer_from_row(row: Sequence[Any]) -> PeerRecord:
    """A :class:`PeerRecord` from the columns of :data:`PEER_COLUMNS`."""
    status = _status_dec.decode(row[9])
    return PeerRecord(
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
        concentrator_endpoint=status.concentrator_endpoint,
    )


def client_row(
    r: ClientRecord,
) -> tuple[str, str, str, str, str, str, str, bool, float, str, str, float]:
    """The stored columns of ``r`` (:data:`CLIENT_COLUMNS`)."""
    return (
        r.client_id,
        r.name,
        r.kind,
        r.public_key,
        r.mesh_ip,
        r.concentrator,
        r.preshared_key,
        r.enabled,
        r.expires_at,
        r.exit_peer,
        r.created_by,
        r.created_at,
    )


def client_from_row(row: Sequence[Any]) -> ClientRecord:
    """A :class:`ClientRecord` from the columns of :data:`CLIENT_COLUMNS`."""
    return ClientRecord(
        client_id=row[0],
        name=row[1],
        kind=row[2],
        public_key=row[3],
        mesh_ip=row[4],
        concentrator=row[5],
        preshared_key=row[6],
        enabled=bool(row[7]),
        expires_at=row[8],
        exit_peer=row[9],
        created_by=row[10],
        created_at=row[11],
    )


def members_blob(group: Group) -> bytes:
    """A group's members as stored (sorted, unique, JSON)."""
    return _status_enc.encode(sorted(set(group.members)))


def members_of(blob: bytes) -> list[str]:
    """A group's members from :func:`members_blob`."""
    return _members_dec.decode(blob)


def status_blob(r: PeerRecord) -> bytes:
    """The reported status of ``r`` (endpoints, transports, counters, ...) as stored JSON."""
    return _status_of(r)


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
            concentrator_endpoint=r.concentrator_endpoint,
        )
    )
