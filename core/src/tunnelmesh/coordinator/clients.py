"""The coordinator's clients: hosts that are no tunnelmesh peer (a phone with the WireGuard app),
each a mesh citizen with a mesh IP and a DNS name, reached through the concentrator peer that
serves it.

A client's identity is its public key: its ``client_id`` is derived from it
(:func:`client_id_of`, in the peer-ID space but domain-separated from peer IDs). Its name is
one DNS label, unique among peers and clients (the same reservation table as peer names); its
mesh IP comes from the same allocator as the peers'. The coordinator never holds a client's
private key: it is given the public key (and optionally a preshared key, a secret that goes to
the concentrator only and never into a log line).

Every change (add, enable, disable, remove, an expiry passing) pushes the whole client list to
every peer as one :class:`~tunnelmesh.control.messages.Clients` message, encoded per recipient
so only a client's own concentrator gets its preshared key. Peers route an active client's
address to its concentrator and answer its DNS name; expiry is enforced here (an expired client
is pushed as inactive the moment it expires) and by the concentrator itself.

Which callers may add or change clients is the routes' business (the plugin that adds them,
e.g. tunnelmesh_wg); this module checks the records themselves.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from tunnelmesh.control.messages import ClientInfo, Clients, ClientStatus, encode
from tunnelmesh.coordinator.alloc import AllocationError, check_name
from tunnelmesh.coordinator.failures import STORE_RETRY_AFTER
from tunnelmesh.coordinator.store import ClientRecord, StoreConflict
from tunnelmesh.errors import CoordinatorError, StateStoreError
from tunnelmesh.logs import add_secret

if TYPE_CHECKING:
    from tunnelmesh.coordinator.core import Coordinator

__all__ = ["MAX_CLIENTS", "ClientBook", "ClientRefused", "client_id_of"]

log = logging.getLogger(__name__)

MAX_CLIENTS = 4096
"""Clients one coordinator keeps (each is a row, an IP and a record in every push)."""

_KIND = re.compile(r"^[a-z0-9]{1,16}$")


def client_id_of(kind: str, public_key: bytes) -> str:
    """The 16-hex-digit ID of a client's key (SHA-256 over a label, the kind and the raw key):
    the same shape as a peer ID, never equal to the peer ID of the same bytes."""
    data = b"tunnelmesh-client\0" + kind.encode("ascii") + b"\0" + public_key
    return hashlib.sha256(data).digest()[:8].hex()


@dataclass
class ClientRefused(CoordinatorError):
    """A client change refused: the HTTP status, a short code and a sentence for humans (a
    route turns it into its API failure answer)."""

    status: int
    error: str
    message: str
    retry_after: float = 0.0  # seconds (Retry-After); set when the state store refused

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.message}"


_SEALED = "sealed:"
"""Prefix of a stored preshared key sealed with the state store's key (base64 after it)."""


def _failure(status: int, error: str, message: str) -> ClientRefused:
    return ClientRefused(status, error, message)


def _store_refused(exc: StateStoreError, what: str) -> ClientRefused:
    """A change the state store did not take: 503 with Retry-After, as every write refused
    for that. The store's own words are logged, not sent (they may name the operator's
    hosts)."""
    log.error("%s not saved: %s", what, exc)
    return ClientRefused(
        503,
        "store_unavailable",
        "the coordinator cannot save state now (its database does not answer); "
        "retry the change later",
        STORE_RETRY_AFTER,
    )


class ClientBook:
    """The clients of one coordinator (loaded from its state store at start)."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.records: dict[str, ClientRecord] = {}  # by client_id
        self._by_name: dict[str, str] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self.status: dict[str, ClientStatus] = {}  # by client_id, from concentrators
        self._active: frozenset[str] = frozenset()  # client IDs active at the last push
        self.stats = {"added": 0, "removed": 0, "expired": 0, "refused": 0}
        self.refused_by: dict[str, int] = {}
        """Refused client requests by error code (the routes count them; metrics)."""

    # --- state ---------------------------------------------------------------------------------

    def _stored(self, rec: ClientRecord) -> ClientRecord:
        """``rec`` as written to the store: its preshared key sealed with the state store's
        key (``state.encryption_key_file``) when one is configured, as the mesh CA's key is."""
        sealer = self.coord.sealer
        if not rec.preshared_key or sealer.key is None:
            return rec
        blob = sealer.seal(rec.preshared_key.encode("ascii"), f"client_psk/{rec.client_id}")
        return msgspec.structs.replace(
            rec, preshared_key=_SEALED + base64.b64encode(blob).decode("ascii")
        )

    def _opened(self, rec: ClientRecord) -> ClientRecord:
        """``rec`` as read from the store, its preshared key opened.

        Raises:
            ConfigError: the key is sealed and no (or another) key is configured.
        """
        if not rec.preshared_key.startswith(_SEALED):
            return rec
        blob = base64.b64decode(rec.preshared_key[len(_SEALED) :])
        plain, _ = self.coord.sealer.open(blob, f"client_psk/{rec.client_id}")
        return msgspec.structs.replace(rec, preshared_key=plain.decode("ascii"))

    async def load(self) -> None:
        """Load every client from the store and take its mesh IP from the allocator.

        Raises:
            ConfigError: preshared keys are sealed and no (or another) key is configured.
        """
        for stored in await self.coord.store.load_clients():
            rec = self._opened(stored)
            add_secret(rec.preshared_key)
            if stored.preshared_key == rec.preshared_key != self._stored(rec).preshared_key:
                await self.coord.store.put_client(self._stored(rec))  # a key was configured
            self._index(rec)
            if self.coord.alloc.contains(rec.mesh_ip):
                self.coord.alloc.mark_used(rec.mesh_ip)
        self._active = self._active_ids(self.coord.clock())

    async def reload(self) -> None:
        """Read the clients again (another coordinator of the same database changed them);
        push the list when it differs.

        Raises:
            StateStoreError: the store cannot be read now.
        """
        stored = {r.client_id: self._opened(r) for r in await self.coord.store.load_clients()}
        if stored == self.records:
            return
        alloc = self.coord.alloc
        for rec in list(self.records.values()):
            if rec.client_id not in stored:
                self._unindex(rec)
                if alloc.contains(rec.mesh_ip):
                    alloc.release(rec.mesh_ip)
        for rec in stored.values():
            old = self.records.get(rec.client_id)
            status = self.status.get(rec.client_id)
            if old is not None:
                self._unindex(old)
            add_secret(rec.preshared_key)
            self._index(rec)
            if status is not None:
                self.status[rec.client_id] = status
            if alloc.contains(rec.mesh_ip):
                alloc.mark_used(rec.mesh_ip)
        self.coord.client_records_changed()

    def _index(self, rec: ClientRecord) -> None:
        self.records[rec.client_id] = rec
        self._by_name[rec.name] = rec.client_id
        self._by_key[(rec.kind, rec.public_key)] = rec.client_id

    def _unindex(self, rec: ClientRecord) -> None:
        self.records.pop(rec.client_id, None)
        self._by_name.pop(rec.name, None)
        self._by_key.pop((rec.kind, rec.public_key), None)
        self.status.pop(rec.client_id, None)

    def by_name(self, name: str) -> ClientRecord | None:
        cid = self._by_name.get(name)
        return None if cid is None else self.records.get(cid)

    def names(self) -> set[str]:
        return set(self._by_name)

    def active(self, rec: ClientRecord, now: float) -> bool:
        """Enabled and not expired."""
        return rec.enabled and (not rec.expires_at or now < rec.expires_at)

    def _active_ids(self, now: float) -> frozenset[str]:
        return frozenset(cid for cid, r in self.records.items() if self.active(r, now))

    def sorted(self) -> list[ClientRecord]:
        return sorted(self.records.values(), key=lambda r: r.name)

    # --- views ---------------------------------------------------------------------------------

    def info(self, rec: ClientRecord, *, secret: bool = False, status: bool = False) -> ClientInfo:
        """The record as peers and the API see it; ``secret``: with the preshared key (for
        its concentrator only); ``status``: with what the concentrator last reported."""
        return ClientInfo(
            client_id=rec.client_id,
            name=rec.name,
            kind=rec.kind,
            public_key=rec.public_key,
            mesh_ip=rec.mesh_ip,
            concentrator=rec.concentrator,
            enabled=rec.enabled,
            expires_at=rec.expires_at,
            active=self.active(rec, self.coord.clock()),
            exit_peer=rec.exit_peer,
            preshared_key=rec.preshared_key if secret else "",
            created_by=rec.created_by,
            created_at=rec.created_at,
            status=self.status.get(rec.client_id) if status else None,
        )

    def infos(self, *, status: bool = True) -> list[ClientInfo]:
        """Every client without secrets (for the API)."""
        return [self.info(r, status=status) for r in self.sorted()]

    def message_for(self, peer_id: str) -> bytes:
        """The push message with every client, as ``peer_id`` may see it (its own clients'
        preshared keys when it is their concentrator)."""
        return encode(
            Clients(
                clients=[
                    self.info(r, secret=r.concentrator == peer_id and bool(r.preshared_key))
                    for r in self.sorted()
                ]
            )
        )

    def push(self) -> None:
        """Send the client list to every peer with a push channel (one encoding for all but
        the concentrators that have a preshared key among their clients)."""
        now = self.coord.clock()
        self._active = self._active_ids(now)
        holders = {r.concentrator for r in self.records.values() if r.preshared_key}
        hub = self.coord.hub
        public = self.message_for("")
        for pid in holders:
            if hub.is_connected(pid):
                hub.send_to(pid, self.message_for(pid))
        hub.broadcast_except(public, holders)

    def poll(self, now: float) -> None:
        """Push when a client expired since the last push (called from the coordinator's
        ticker, every 0.25 s)."""
        active = self._active_ids(now)
        if active != self._active:
            expired = self._active - active
            for cid in sorted(expired):
                rec = self.records.get(cid)
                if rec is not None and rec.enabled:
                    self.stats["expired"] += 1
                    log.info("client %s (%s) expired", rec.name, cid)
            self.push()

    def report(self, peer_id: str, clients: dict[str, ClientStatus]) -> None:
        """Take a concentrator's report of its clients; entries about clients it does not
        serve are ignored (a peer cannot speak for another concentrator's clients)."""
        for cid, st in list(clients.items())[:MAX_CLIENTS]:
            rec = self.records.get(cid)
            if rec is not None and rec.concentrator == peer_id:
                self.status[cid] = st

    # --- changes -------------------------------------------------------------------------------

    async def add(
        self,
        *,
        name: str,
        kind: str,
        public_key: str,
        raw_key: bytes,
        concentrator: str,
        preshared_key: str = "",
        expires_at: float = 0.0,
        exit_peer: str = "",
        created_by: str = "",
    ) -> ClientRecord:
        """Register a client; push the new list.

        Args:
            public_key: the key as the kind writes it (stored and pushed as given).
            raw_key: its raw bytes (the identity: ``client_id`` and the preferred IP).
            concentrator: peer ID of a registered peer.

        Raises:
            ClientRefused: 400 a bad name, kind or expiry; 404 no such concentrator or exit;
                409 the name is taken (a peer's or a client's, or reserved for a key that
                left) or the key is already a client; 507 the mesh range or the client table
                is full; 503 the store cannot save it. Nothing changes then.
        """
        coord = self.coord
        if not _KIND.match(kind):
            raise _failure(400, "malformed", f"client kind {kind!r} is not a short word")
        why = check_name(name)
        if why is not None:
            raise _failure(400, "bad_name", why)
        now = coord.clock()
        if expires_at and expires_at <= now:
            raise _failure(400, "malformed", "expires_at is in the past")
        target = coord.peers.get(concentrator)
        if target is None or target.pending:
            raise _failure(404, "no_such_peer", f"no concentrator peer {concentrator!r}")
        if exit_peer:
            ex = coord.peers.get(exit_peer)
            if ex is None or ex.pending:
                raise _failure(404, "no_such_peer", f"no exit peer {exit_peer!r}")
        cid = client_id_of(kind, raw_key)
        async with coord._lock:
            if (kind, public_key) in self._by_key or cid in self.records:
                other = self.records[self._by_key.get((kind, public_key), cid)]
                raise _failure(409, "key_taken", f"that key is already client {other.name!r}")
            owner = coord.name_owner(name)
            if name in self._by_name or coord.peer_by_name(name) is not None or owner:
                raise _failure(
                    409,
                    "name_taken",
                    f"name {name!r} belongs to a peer or client (or is reserved for a key that "
                    "left: tunnelmesh peers release); choose another",
                )
            if len(self.records) >= MAX_CLIENTS:
                raise _failure(507, "too_many_clients", f"at most {MAX_CLIENTS} clients")
            store = coord.store
            try:
                # the name and the address are held for the client's ID in the store's names
                # and addresses, beside the peers' (several coordinators never give one twice)
                holder = await store.reserve_name(name, cid)
                if holder != cid:
                    raise _failure(409, "name_taken", f"name {name!r} belongs to {holder}")
                try:
                    mesh_ip = await store.claim_address(
                        cid, coord.alloc.candidates(b"client\0" + raw_key)
                    )
                except AllocationError as exc:
                    await store.release_name(name)
                    raise _failure(507, "mesh_full", str(exc)) from None
            except StateStoreError as exc:
                with contextlib.suppress(StateStoreError):  # the name it may have reserved
                    await store.release_name(name)
                raise _store_refused(exc, f"client {name}") from None
            rec = ClientRecord(
                client_id=cid,
                name=name,
                kind=kind,
                public_key=public_key,
                mesh_ip=mesh_ip,
                concentrator=concentrator,
                preshared_key=preshared_key,
                enabled=True,
                expires_at=expires_at,
                exit_peer=exit_peer,
                created_by=created_by,
                created_at=now,
            )
            add_secret(preshared_key)
            try:
                await store.put_client(self._stored(rec))
            except StoreConflict as exc:
                with contextlib.suppress(StateStoreError):
                    await store.release_address(cid)
                    await store.release_name(name)
                raise _failure(409, "conflict", str(exc)) from None
            except StateStoreError as exc:
                with contextlib.suppress(StateStoreError):  # else kept until removed by hand
                    await store.release_address(cid)
                    await store.release_name(name)
                raise _store_refused(exc, f"client {name}") from None
            coord.alloc.mark_used(mesh_ip)
            coord.note_name(name, cid)
            self._index(rec)
            self.stats["added"] += 1
            log.info(
                "added client %s (%s, %s) at %s through %s",
                name,
                kind,
                cid,
                mesh_ip,
                target.name,
            )
            coord.client_records_changed()
            return rec

    async def set_enabled(self, rec: ClientRecord, enabled: bool) -> bool:
        """Enable or disable a client (pushed at once); False when it already was so.

        Raises:
            ClientRefused: 503 the store cannot save it.
        """
        coord = self.coord
        async with coord._lock:
            if self.records.get(rec.client_id) is not rec or rec.enabled == enabled:
                return False
            changed = msgspec.structs.replace(rec, enabled=enabled)
            try:
                await coord.store.put_client(self._stored(changed))
            except StateStoreError as exc:
                raise _store_refused(exc, f"client {rec.name}") from None
            self._index(changed)
            log.info(
                "%s client %s (%s)", "enabled" if enabled else "disabled", rec.name, rec.client_id
            )
            coord.client_records_changed()
            return True

    async def remove(self, rec: ClientRecord) -> bool:
        """Remove a client: frees its IP and its name, tells every peer; False when gone.

        Raises:
            ClientRefused: 503 the store cannot save it.
        """
        coord = self.coord
        async with coord._lock:
            if self.records.get(rec.client_id) is not rec:
                return False
            try:
                await coord.store.delete_client(rec.client_id)
            except StateStoreError as exc:
                raise _store_refused(exc, f"removal of client {rec.name}") from None
            self._unindex(rec)
            coord.forget_name(rec.name, rec.client_id)
            if coord.alloc.contains(rec.mesh_ip):
                coord.alloc.release(rec.mesh_ip)
            self.stats["removed"] += 1
            log.info("removed client %s (%s), freed %s", rec.name, rec.client_id, rec.mesh_ip)
            coord.client_records_changed()
            return True
