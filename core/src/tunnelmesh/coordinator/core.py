"""The coordinator: peer registry, IP allocation, liveness, DNS records and the push channel.

:class:`Coordinator` owns the in-memory view of the mesh (loaded from the
:class:`~tunnelmesh.coordinator.store.StateStore` at start) and the operations the HTTP API
calls. The rules:

* A registration is checked completely (source allowance, token, challenge, signature, name)
  before anything changes; then it is written to the store in one transaction, and only after
  that succeeded does the in-memory view change and the push channel announce it. A refused
  request therefore never changes state.
* Heartbeats only touch memory; a flusher writes the changed peers to the store in one batch
  every ``flush_interval`` seconds (and at stop), so 2,000 peers heartbeating do not mean 200
  fsyncs a second.
* Changes that other peers need (join, leave, rename, endpoints, online/offline) are pushed at
  once; traffic counters and RTTs are not pushed (they are read with ``GET /api/v1/peers``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from tunnelmesh import __version__
from tunnelmesh.config import FilterConfig, ServerConfig
from tunnelmesh.control.messages import (
    Coordinators,
    Counters,
    DnsRecord,
    Heartbeat,
    HeartbeatAck,
    PeerGone,
    PeerInfo,
    PeerUpserted,
    RegisterRequest,
    RegisterResponse,
    Rendezvous,
    RendezvousAck,
    RendezvousRequest,
    Snapshot,
    encode,
)
from tunnelmesh.control.urls import endpoint_problem
from tunnelmesh.coordinator.alloc import AllocationError, IpAllocator, check_name, name_candidates
from tunnelmesh.coordinator.auth import (
    ChallengeBook,
    ChallengesExhausted,
    FailureLimiter,
    registration_message,
    token_binding,
    token_matches,
)
from tunnelmesh.coordinator.backends import state_store_for
from tunnelmesh.coordinator.ca import MeshCa, ServerCert
from tunnelmesh.coordinator.clients import ClientBook
from tunnelmesh.coordinator.filterbook import META_KEY as FILTER_RULES_KEY
from tunnelmesh.coordinator.filterbook import FilterBook
from tunnelmesh.coordinator.groups import GroupBook
from tunnelmesh.coordinator.limits import RateLimiter, source_key
from tunnelmesh.coordinator.liveness import Liveness
from tunnelmesh.coordinator.peerstats import PeerStats
from tunnelmesh.coordinator.policy import MAX_ALIASES, accepted_aliases
from tunnelmesh.coordinator.push import PushHub
from tunnelmesh.coordinator.roster import ROSTER_KEY, decode_roster, encode_roster, refreshed
from tunnelmesh.coordinator.sealed import Sealer, load_key
from tunnelmesh.coordinator.store import (
    NameReserved,
    PeerRecord,
    StateStore,
    StoreChange,
    StoreConflict,
)
from tunnelmesh.coordinator.transportbook import META_KEY as TRANSPORT_ORDERS_KEY
from tunnelmesh.coordinator.transportbook import TransportBook
from tunnelmesh.errors import CoordinatorError, StateStoreError
from tunnelmesh.identity import (
    fingerprint_of,
    parse_public_key,
    peer_id_of,
    verify_signature,
    x25519_public_of,
)
from tunnelmesh.logs import add_secret

__all__ = ["STORE_RETRY_AFTER", "ApiFailure", "Coordinator", "store_unavailable"]

log = logging.getLogger(__name__)

_CA_KEY = "mesh_ca"
HEARTBEAT_BURST = 10.0
RENDEZVOUS_BURST = 5.0
PUSH_COALESCE = 0.05
LIVENESS_POLL = 1.0
"""Seconds between reads of the heartbeats other coordinators stored (several coordinators)."""
REGISTER_BURST, REGISTER_RATE = 10.0, 0.1
"""Registrations of one key: 10 at once, then one every 10 s (each is an fsync)."""
MAX_NAMES_PER_KEY = 4
"""Names reserved for one key: its current name and the last three it renamed away from."""
"""Seconds heartbeat-caused changes of one peer wait, so a burst becomes one push."""
_FIRST_ADMIN_KEY = "first_admin"
_TOKEN_KEY = "auth_token"


@dataclass
class ApiFailure(CoordinatorError):
    """A request refused with an HTTP status, a short code and a sentence for humans."""

    status: int
    error: str
    message: str
    retry_after: float = 0.0

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.message}"


STORE_RETRY_AFTER = 5.0
"""Retry-After (seconds) of a write refused because the state store does not answer."""


def store_unavailable(exc: Exception) -> ApiFailure:
    """The answer to a write the state store refused to take (it is down, or unreachable):
    503 with Retry-After. Reads keep being answered from memory meanwhile. The store's own
    message is logged, not sent (it may name hosts of the operator's network)."""
    log.warning("a write was refused: the state store does not answer: %s", exc)
    return ApiFailure(
        503,
        "store_unavailable",
        "the coordinator cannot save state now (its database does not answer); "
        "reads still work, retry the change later",
        STORE_RETRY_AFTER,
    )


def session_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiFailure(400, "malformed", f"{what} is not valid base64") from None


def _valid_endpoints(endpoints: list[str]) -> list[str]:
    if len(endpoints) > 16:
        raise ApiFailure(400, "malformed", "at most 16 endpoints")
    for ep in endpoints:
        why = endpoint_problem(ep)
        if why is not None:
            raise ApiFailure(400, "bad_endpoint", f"endpoint {ep!r} {why}")
    return list(endpoints)


class Coordinator:
    """The mesh's coordination state and operations (the HTTP layer is in ``api``).

    Args:
        config: the server config.
        store: the state store (default: what ``config.state`` chooses; SQLite in
            ``config.data_dir`` unless it says otherwise).
        clock: wall-clock seconds; tests pass their own.
        pm: the plugin manager, for ``tunnelmesh_register_coordinator_routes``.
        coordinator_keys: OpenSSH public keys of this coordinator's own peer identities; only
            they are marked ``is_coordinator`` (and so get ``this.<domain>``).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
        pm: Any = None,
        coordinator_keys: set[str] | None = None,
        flush_interval: float = 2.0,
    ) -> None:
        self.config = config
        add_secret(config.auth_token)  # never logged (tunnelmesh.logs)
        self.data_dir = Path(config.data_dir).expanduser()
        self.store: StateStore = store or state_store_for(config, pm)
        self.clock = clock
        self.pm = pm
        self.coordinator_keys: set[str] = set(coordinator_keys or ())
        self.flush_interval = flush_interval
        self.domain = config.domain
        self.alloc = IpAllocator(config.mesh_cidr)
        self.liveness = Liveness(interval=float(config.heartbeat_interval), misses=3)
        self.challenges = ChallengeBook()
        self.limiter = FailureLimiter(
            burst=config.auth_failures_burst, per_minute=config.auth_failures_per_minute
        )
        self.hub = PushHub()
        interval = float(config.heartbeat_interval)
        # A peer heartbeats once per interval, sooner when its endpoints change: a burst of
        # HEARTBEAT_BURST, then 4 per interval on average. More is refused (429).
        self.heartbeat_pace = RateLimiter(4.0 / max(interval, 0.01), HEARTBEAT_BURST)
        # Hole-punch requests per (asker, target) pair: enough to re-dial, never a flood that
        # fills the target's push queue.
        self.rendezvous_pace = RateLimiter(1.0, RENDEZVOUS_BURST)
        self.register_pace = RateLimiter(REGISTER_RATE, REGISTER_BURST)  # per key
        # New keys per source: each one that leaves keeps its name reserved (a database row).
        self.join_pace = RateLimiter(config.joins_per_minute / 60.0, float(config.joins_burst))
        self._pending_push: set[str] = set()
        self._push_timer: asyncio.TimerHandle | None = None
        self.ca: MeshCa | None = None
        self.server_cert: ServerCert | None = None
        self.sealer = Sealer(None)  # load() reads state.encryption_key_file
        self.peers: dict[str, PeerRecord] = {}
        self._by_name: dict[str, str] = {}
        self._by_key: dict[str, str] = {}
        self._by_session: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._first_admin: str | None = None
        self._names: dict[str, str] = {}  # reserved name -> peer ID (live peers and tombstones)
        self._admin_entries: frozenset[str] = frozenset(config.admin_peers)
        self._token = config.auth_token
        self.groups = GroupBook(
            self.store,
            admins=lambda: [p.peer_id for p in self.peers.values() if self.is_admin(p)],
            everyone=lambda: [r.peer_id for r in self._visible()],
            clock=self.clock,
        )
        self.filters = FilterBook(self.store, config.filter, clock=clock, changed=self._pushed)
        self.transport_orders = TransportBook(self.store, clock=clock, send=self.hub.send_to)
        self.peerstats, self.started_at = PeerStats(locations=config.locations), clock()
        self._lock = asyncio.Lock()
        self.revision = 0
        self.stun_port = 0
        self.refused_by: dict[str, int] = {}
        self.denied_by: dict[str, int] = {}  # other routes: 401/403 by error code (a few codes)
        """Refused attempts by error code (a fixed set of strings; metrics)."""
        self.stats = {
            "registrations": 0,
            "refused": 0,
            "heartbeats": 0,
            "heartbeats_limited": 0,
            "rendezvous_limited": 0,
            "bad_endpoints": 0,
            "pushes_coalesced": 0,
            "registrations_limited": 0,
            "bad_requests": 0,  # every 400 answer of the API
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._own_peer_known = asyncio.Event()
        self.public_url = config.public_url.rstrip("/")
        self._roster: dict[str, float] = {}
        self._roster_pushed: list[str] = []
        self._to_share: set[str] = set()  # peers whose pushed fields changed here (see _share)
        self._stale = False  # a change of another coordinator could not be read: reload
        self.followed = {"changes": 0, "reloads": 0, "liveness_polls": 0}
        """What the change feed brought (metrics, tests)."""
        self.clients = ClientBook(self)
        """Clients of concentrator peers (tunnelmesh.coordinator.clients)."""

    # --- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        """Open the store, load or create the CA, and load every peer."""
        key_file = self.config.state.encryption_key_file
        self.sealer = Sealer(load_key(key_file) if key_file else None)
        await self.store.open()
        blob = await self.store.get_meta(_CA_KEY)
        if blob is None:
            ca = MeshCa.create(
                self.domain, mesh_cidr=self.config.mesh_cidr, tls_names=self.config.tls_names
            )
            sealed = self.sealer.seal(ca.to_bytes(), _CA_KEY)
            blob = await self.store.put_meta_if_absent(_CA_KEY, sealed)
            log.info("created the mesh CA")
        self.ca = MeshCa.from_bytes(await self._open_secret(_CA_KEY, blob))
        self._check_ca_constraints(self.ca)
        first = await self.store.get_meta(_FIRST_ADMIN_KEY)
        self._first_admin = first.decode("ascii") if first else None
        rotated = await self.store.get_meta(_TOKEN_KEY)
        if rotated is not None:
            self._token = (await self._open_secret(_TOKEN_KEY, rotated)).decode("utf-8")
            add_secret(self._token)
            if not token_matches(self._token, self.config.auth_token):
                log.info(
                    "the join token was rotated (tunnelmesh token rotate): server.yaml's "
                    "auth_token is not used"
                )
        self._names = await self.store.load_names()
        await self.groups.load()
        await self.filters.load()
        await self.transport_orders.load()
        now = self.clock()
        for rec in await self.store.load_peers():
            rec.is_admin = self.is_admin(rec)
            self._index(rec)
            if self.alloc.contains(rec.mesh_ip):
                self.alloc.mark_used(rec.mesh_ip)
            if rec.last_seen:
                self.liveness.restore(rec.peer_id, rec.last_seen, now)
        await self.clients.load()
        self.revision = len(self.peers)
        log.info("loaded %d peers from %s", len(self.peers), self.data_dir)
        await self.refresh_roster()

    def seal(self, value: bytes, slot: str) -> bytes:
        """``value`` sealed for ``slot`` with ``state.encryption_key_file`` (as is without)."""
        return self.sealer.seal(value, slot)

    def unseal(self, blob: bytes, slot: str) -> bytes:
        """What :meth:`seal` stored at ``slot``.

        Raises:
            ConfigError: sealed, and no key or another key is configured.
        """
        return self.sealer.open(blob, slot)[0]

    async def _open_secret(self, slot: str, blob: bytes) -> bytes:
        """A sealed meta blob's plaintext; a plaintext one is sealed in the store now when a
        key is configured (an install from before ``state.encryption_key_file``)."""
        value, reseal = self.sealer.open(blob, slot)
        if reseal:
            await self.store.put_meta(slot, self.sealer.seal(value, slot))
            log.info("the state store's %s is now stored encrypted", slot)
        return value

    def start_background(self) -> None:
        """Start the liveness ticker and the store flusher (call inside the running loop)."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._tick_loop()))
        self._tasks.append(loop.create_task(self._follow_store()))

    async def close(self) -> None:
        if self._push_timer is not None:
            self._push_timer.cancel()
            self._push_timer = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        await self.hub.close()
        with contextlib.suppress(StateStoreError):
            await self.flush()
        await self.store.close()

    def _check_ca_constraints(self, ca: MeshCa) -> None:
        if ca.name_constraints is None:
            log.warning(
                "the mesh CA has no name constraints (it was created by an older version): a "
                "trust store that holds it trusts it for every name. It is kept, since every "
                "joined peer pins it; see docs/security.md"
            )
            return
        for name in self.config.tls_names:
            if not ca.permits(name):
                log.warning(
                    "tls_names entry %r is outside the mesh CA's name constraints (fixed when "
                    "the CA was created); the coordinator's certificate leaves it out",
                    name,
                )

    async def _tick_loop(self) -> None:
        last_flush = last_roster = last_poll = last_reload = self.clock()
        while True:
            await asyncio.sleep(0.25)
            now = self.clock()
            for ev in self.liveness.poll(now):
                rec = self.peers.get(ev.peer_id)
                if rec is not None:
                    log.info(
                        "peer %s is offline (no heartbeat since %.0fs)",
                        rec.name,
                        now - ev.last_seen,
                    )
                    self._announce(rec)
            await self.filters.expire()
            self.clients.poll(now)
            if now - last_flush >= self.flush_interval:
                last_flush = now
                try:
                    await self.flush()
                except StateStoreError as exc:
                    log.error("cannot save peer liveness: %s", exc)
            if now - last_roster >= float(self.config.heartbeat_interval):
                last_roster = now
                await self.refresh_roster()
            if self._others():
                await self._share()
                if now - last_poll >= LIVENESS_POLL:
                    await self._poll_liveness(last_poll - self.flush_interval - LIVENESS_POLL)
                    last_poll = now
            if self._stale and now - last_reload >= 1.0:
                last_reload = now
                with contextlib.suppress(StateStoreError):
                    await self.reload_from_store()

    async def flush(self) -> None:
        """Write heartbeat-updated peers to the store (one transaction)."""
        if not self._dirty:
            return
        ids, self._dirty = self._dirty, set()
        batch = [self.peers[i] for i in ids if i in self.peers]
        try:
            await self.store.put_liveness(batch)
        except StateStoreError:
            self._dirty |= ids
            raise

    # --- indexes ---------------------------------------------------------------------------

    def _index(self, rec: PeerRecord) -> None:
        self.peers[rec.peer_id] = rec
        self._by_name[rec.name] = rec.peer_id
        self._by_key[rec.public_key] = rec.peer_id
        if rec.session_hash:
            self._by_session[rec.session_hash] = rec.peer_id
        if rec.public_key in self.coordinator_keys:
            self._own_peer_known.set()

    def _unindex(self, rec: PeerRecord) -> None:
        self.peers.pop(rec.peer_id, None)
        if self._by_name.get(rec.name) == rec.peer_id:
            del self._by_name[rec.name]
        self._by_key.pop(rec.public_key, None)
        self._by_session.pop(rec.session_hash, None)

    def peer_by_name(self, name: str) -> PeerRecord | None:
        pid = self._by_name.get(name)
        return None if pid is None else self.peers.get(pid)

    def peer_by_session(self, token: str) -> PeerRecord | None:
        """The peer whose session token this is, or None."""
        pid = self._by_session.get(session_hash(token))
        return None if pid is None else self.peers.get(pid)

    def token_ok(self, token: str) -> bool:
        """True when ``token`` is the current mesh join token (constant time)."""
        return bool(token) and token_matches(self._token, token)

    @property
    def auth_token(self) -> str:
        """The current mesh join token (``server.yaml``'s, or the last rotated one)."""
        return self._token

    def name_owner(self, name: str) -> str | None:
        """The peer ID a name is reserved for (a live peer's, a tombstone's, or a client's
        ID), or None."""
        return self._names.get(name)

    def note_name(self, name: str, owner: str) -> None:
        """Record that the store reserved ``name`` for ``owner`` (a client's ID)."""
        self._names[name] = owner

    def forget_name(self, name: str, owner: str) -> None:
        """Record that the store dropped ``owner``'s reservation of ``name``."""
        if self._names.get(name) == owner:
            del self._names[name]

    def client_records_changed(self) -> None:
        """A client was added, changed or removed: push the list (it carries no revision: it
        is the whole list each time, never a delta)."""
        self.clients.push()

    def is_admin(self, rec: PeerRecord) -> bool:
        """Whether ``rec``'s key is an admin now (``admin_peers``, else the first peer).

        Keyed by the peer's key only: ``admin_peers`` holds peer IDs and ``SHA256:`` key
        fingerprints; the first peer to register is admin only while ``admin_peers`` is empty.
        """
        return self._admin_key(rec.peer_id, rec.public_key, self._first_admin)

    def _admin_key(self, peer_id: str, public_key: str, first_admin: str | None) -> bool:
        if not self._admin_entries:
            return peer_id == first_admin
        if peer_id in self._admin_entries:
            return True
        try:
            return fingerprint_of(public_key) in self._admin_entries
        except ValueError:
            return False

    # --- views -----------------------------------------------------------------------------

    def info(self, rec: PeerRecord, *, figures: bool = True) -> PeerInfo:
        """``rec`` as other peers and the CLI see it.

        ``figures=False`` leaves out what the peer reports about its own paths (transports,
        RTTs, reasons, counters): maps keyed by the other peers, so their size grows with the
        mesh. The push channel carries peers without them (see :meth:`push_info`).
        """
        raw = parse_public_key(rec.public_key).public_bytes_raw()
        if not figures:
            return PeerInfo(
                name=rec.name,
                peer_id=rec.peer_id,
                public_key=rec.public_key,
                wg_public_key=base64.b64encode(x25519_public_of(raw)).decode("ascii"),
                mesh_ip=rec.mesh_ip,
                endpoints=rec.endpoints,
                online=self.liveness.is_online(rec.peer_id),
                last_seen=rec.last_seen,
                is_admin=rec.is_admin,
                is_coordinator=rec.is_coordinator,
                version=rec.version,
                allow_exit_traffic=rec.allow_exit_traffic,
                aliases=rec.aliases,
                concentrator_endpoint=rec.concentrator_endpoint,
            )
        return PeerInfo(
            name=rec.name,
            peer_id=rec.peer_id,
            public_key=rec.public_key,
            wg_public_key=base64.b64encode(x25519_public_of(raw)).decode("ascii"),
            mesh_ip=rec.mesh_ip,
            endpoints=rec.endpoints,
            online=self.liveness.is_online(rec.peer_id),
            last_seen=rec.last_seen,
            is_admin=rec.is_admin,
            is_coordinator=rec.is_coordinator,
            transports=rec.transports,
            rtt_ms=rec.rtt_ms,
            reasons=rec.reasons,
            counters=rec.counters,
            version=rec.version,
            allow_exit_traffic=rec.allow_exit_traffic,
            aliases=rec.aliases,
            concentrator_endpoint=rec.concentrator_endpoint,
        )

    def peer_infos(self) -> list[PeerInfo]:
        """Every approved peer (a key waiting for approval is shown to nobody)."""
        return [self.info(r) for r in self._visible()]

    def push_info(self, rec: PeerRecord) -> PeerInfo:
        """``rec`` as the push channel carries it: what the other peers' data plane and DNS
        use, constant in size whatever the size of the mesh (the path figures a peer reports
        are keyed by every other peer; ``GET /api/v1/peers`` has them). One change of one peer
        therefore costs one message of constant size per connected peer."""
        return self.info(rec, figures=False)

    def snapshot_message(self) -> bytes:
        """The first message of a push channel: every approved peer and the revision the
        deltas that follow continue from (each carries the next revision; a peer that sees a
        gap reconnects for a new snapshot)."""
        return encode(
            Snapshot(
                peers=[self.push_info(r) for r in self._visible()],
                revision=self.revision,
                coordinators=self.coordinator_urls(),
            )
        )

    # --- the coordinators of the mesh -------------------------------------------------------

    def coordinator_urls(self) -> list[str]:
        """The ``public_url`` of every live coordinator of the mesh (this one's included)."""
        urls = set(self._roster)
        if self.public_url:
            urls.add(self.public_url)
        return sorted(urls)

    async def refresh_roster(self, *, write: bool = True) -> None:
        """Say in the store that this coordinator is alive (unless ``write`` is False: another
        coordinator just wrote the list), read which others are, and push the list to every
        peer when it changed (see ``roster``). With the store unreachable the last list read
        stays."""
        now = self.clock()
        interval = float(self.config.heartbeat_interval)
        try:
            stored = decode_roster(await self.store.get_meta(ROSTER_KEY))
            roster = refreshed(stored, self.public_url if write else "", now, interval)
            if self.public_url and write:
                await self.store.put_meta(ROSTER_KEY, encode_roster(roster))
            elif self.public_url:
                roster[self.public_url] = stored.get(self.public_url, now)
        except StateStoreError as exc:
            log.warning("cannot refresh the list of coordinators: %s", exc)
            return
        self._roster = roster
        urls = self.coordinator_urls()
        if urls != self._roster_pushed:
            if self._roster_pushed or len(urls) > 1:
                log.info("coordinators of this mesh: %s", ", ".join(urls) or "none announced")
            self._roster_pushed = urls
            self.hub.broadcast(encode(Coordinators(urls=urls)))

    # --- other coordinators' changes (several coordinators on one database) --------------------

    def _others(self) -> bool:
        """Whether other coordinators may share this one's database: a networked backend (they
        need not have a ``public_url``), or others announced themselves."""
        return self.config.state.backend != "sqlite" or any(
            url != self.public_url for url in self._roster
        )

    async def _follow_store(self) -> None:
        """Apply what other coordinators write (the store's change feed) and push it to this
        coordinator's peers. A change that cannot be read now (the database went away) turns
        into a full reload as soon as the database answers again (the tick loop retries)."""
        async for change in self.store.changes():
            if change.origin and change.origin == self.store.origin:
                continue  # our own write: applied already
            self.followed["changes"] += 1
            try:
                if change.kind == "resync" or self._stale:
                    await self.reload_from_store()
                else:
                    await self.apply_store_change(change)
            except StateStoreError as exc:
                log.warning("cannot read what another coordinator changed: %s", exc)
                self._stale = True

    async def apply_store_change(self, change: StoreChange) -> None:
        """Take one change another coordinator committed.

        Raises:
            StateStoreError: the store cannot be read now.
        """
        if change.kind == "peer":
            # Read, then apply without an await in between (no lock: a registration holds it
            # across its database write, and the feed must not wait behind this one's).
            self._take_peer(change.key, await self.store.get_peer(change.key))
        elif change.kind == "name":
            self._names = await self.store.load_names()
        elif change.kind == "group":
            await self.groups.load()
        elif change.kind == "meta":
            await self._reload_meta(change.key)
        elif change.kind == "client":
            await self.clients.reload()
        # "doc" and "address": state of features this class does not keep

    async def reload_from_store(self) -> None:
        """Read everything again (after a gap in the change feed) and push what differs.

        Raises:
            StateStoreError: the store cannot be read now (``_stale`` stays set).
        """
        self._stale = True
        async with self._lock:
            stored = {r.peer_id: r for r in await self.store.load_peers()}
            for rec in list(self.peers.values()):
                if rec.peer_id not in stored:
                    self._drop(rec)
            for peer_id, rec in stored.items():
                self._take_peer(peer_id, rec)
        self._names = await self.store.load_names()
        await self.groups.load()
        await self.clients.reload()
        for key in (
            _TOKEN_KEY,
            _FIRST_ADMIN_KEY,
            FILTER_RULES_KEY,
            TRANSPORT_ORDERS_KEY,
            ROSTER_KEY,
        ):
            await self._reload_meta(key)
        self._stale = False
        self.followed["reloads"] += 1

    def _take_peer(self, peer_id: str, rec: PeerRecord | None) -> None:
        """Make ``rec`` (as stored; None = deleted) this coordinator's view of ``peer_id`` and
        push it when something the peers see changed."""
        old = self.peers.get(peer_id)
        if rec is None:
            if old is not None:
                log.info("peer %s (%s) was deleted through another coordinator", old.name, peer_id)
                self._drop(old)
            return
        if old is not None and peer_id in self._dirty and old.last_seen >= rec.last_seen:
            # It heartbeats to this coordinator: what it reported here is newer.
            rec = msgspec.structs.replace(
                rec,
                last_seen=old.last_seen,
                endpoints=old.endpoints,
                transports=old.transports,
                rtt_ms=old.rtt_ms,
                reasons=old.reasons,
                counters=old.counters,
                allow_exit_traffic=old.allow_exit_traffic,
                aliases=old.aliases,
            )
        rec.is_admin = self.is_admin(rec)
        rec.alias_request = old.alias_request if old is not None else []
        before = self._seen_as(old) if old is not None else None
        if old is not None:
            if old.mesh_ip != rec.mesh_ip and self.alloc.contains(old.mesh_ip):
                self.alloc.release(old.mesh_ip)
            self._unindex(old)
        self._index(rec)
        if self.alloc.contains(rec.mesh_ip):
            self.alloc.mark_used(rec.mesh_ip)
        self._names[rec.name] = peer_id
        self._observe_last_seen(peer_id, rec.last_seen)
        if old is None or old.pending or self._seen_as(rec) != before:
            self._announce(rec)

    def _seen_as(self, rec: PeerRecord) -> PeerInfo:
        """What the peers see of ``rec``, its last heartbeat's time aside (a reload must not
        push every peer again because time went on)."""
        return msgspec.structs.replace(self.push_info(rec), last_seen=0.0)

    def _observe_last_seen(self, peer_id: str, last_seen: float) -> bool:
        """Take a ``last_seen`` another coordinator stored; True when the peer's online state
        changed. Every coordinator applies the same rule (online = a heartbeat within three
        intervals) to the same stored times, so they agree on who is online."""
        known = self.liveness.last_seen(peer_id)
        if not last_seen or (known is not None and known >= last_seen):
            return False
        was = self.liveness.is_online(peer_id)
        now = self.clock()
        if last_seen + self.liveness.timeout > now:
            self.liveness.seen(peer_id, last_seen)
        else:
            self.liveness.restore(peer_id, last_seen, now)
        return self.liveness.is_online(peer_id) != was

    async def _poll_liveness(self, since: float) -> None:
        """Read the heartbeats other coordinators stored since ``since``; push peers that came
        online (going offline is found by the liveness ticker, as for this one's peers)."""
        try:
            seen = await self.store.load_liveness(since)
        except StateStoreError as exc:
            log.debug("cannot read the peers' liveness: %s", exc)
            return
        self.followed["liveness_polls"] += 1
        for peer_id, last_seen in seen.items():
            rec = self.peers.get(peer_id)
            if rec is not None and self._observe_last_seen(peer_id, last_seen):
                rec.last_seen = max(rec.last_seen, last_seen)
                self._announce(rec)

    async def _share(self) -> None:
        """Write the peers whose endpoints, exit flag or aliases changed here, so the other
        coordinators push them too (a heartbeat's liveness alone goes with the batched flush,
        which notifies nobody)."""
        if not self._to_share:
            return
        ids, self._to_share = self._to_share, set()
        for peer_id in sorted(ids):
            rec = self.peers.get(peer_id)
            if rec is None:
                continue
            try:
                await self.store.put_peer(rec)
            except StoreConflict as exc:
                log.warning("cannot share the new endpoints of %s: %s", rec.name, exc)
            except StateStoreError:
                self._to_share |= ids
                return
            self._dirty.discard(peer_id)

    async def _knows(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is registered. With other coordinators on the database, a key
        this one has not heard of yet (it registered elsewhere a moment ago) is looked up."""
        if peer_id in self.peers or not self._others():
            return peer_id in self.peers
        try:
            rec = await self.store.get_peer(peer_id)
        except StateStoreError:
            return False
        if rec is not None:
            self._take_peer(peer_id, rec)
        return rec is not None

    async def _reload_meta(self, key: str) -> None:
        if key == ROSTER_KEY:
            await self.refresh_roster(write=False)
        elif key == _TOKEN_KEY:
            rotated = await self.store.get_meta(_TOKEN_KEY)
            if rotated is not None:
                token = (await self._open_secret(_TOKEN_KEY, rotated)).decode("utf-8")
                add_secret(token)
                if token != self._token:
                    log.info("the join token was rotated through another coordinator")
                self._token = token
        elif key == _FIRST_ADMIN_KEY:
            first = await self.store.get_meta(_FIRST_ADMIN_KEY)
            self._first_admin = first.decode("ascii") if first else None
        elif key == TRANSPORT_ORDERS_KEY:
            orders = {pid: self.transport_orders.get(pid) for pid in self.peers}
            await self.transport_orders.load()
            for pid, setting in orders.items():
                if self.transport_orders.get(pid) != setting:  # set through another coordinator
                    self.hub.send_to(pid, self.transport_orders.message(pid))
        elif key == FILTER_RULES_KEY:
            before = self.filters.rules()
            await self.filters.load()
            if self.filters.rules() != before:
                log.info("coordinator filter rules changed through another coordinator")
                self._pushed()

    def _visible(self) -> list[PeerRecord]:
        return sorted((r for r in self.peers.values() if not r.pending), key=lambda r: r.name)

    def pending_peers(self) -> list[PeerRecord]:
        """Keys that registered and wait for an admin (``approve_new_peers``), by name."""
        return sorted((r for r in self.peers.values() if r.pending), key=lambda r: r.name)

    def own_mesh_ip(self) -> str | None:
        """The mesh IP of this coordinator's own peer (``join_mesh``), or None until it has
        registered (or when it does not join its mesh)."""
        for key in sorted(self.coordinator_keys):
            pid = self._by_key.get(key)
            if pid is not None and pid in self.peers:
                return self.peers[pid].mesh_ip
        return None

    async def wait_own_mesh_ip(self) -> str:
        """Wait until this coordinator's own peer is registered; return its mesh IP.

        For plugins that serve on the mesh IP (the S3 service): at a restart the IP is known
        as soon as the state is loaded; at first start, once ``join_mesh`` has registered.
        Never returns when the coordinator does not join its mesh.
        """
        while True:
            ip = self.own_mesh_ip()
            if ip is not None:
                return ip
            self._own_peer_known.clear()
            await self._own_peer_known.wait()

    def coordinator_ips(self) -> list[str]:
        return sorted(r.mesh_ip for r in self.peers.values() if r.is_coordinator)

    def dns_records(self) -> list[DnsRecord]:
        """``<name>.<domain>`` for every peer; ``this.<domain>``/``this.tm`` for coordinators."""
        out = [DnsRecord(name=f"{r.name}.{self.domain}", ip=r.mesh_ip) for r in self._visible()]
        for r in self._visible():
            out += [
                DnsRecord(name=f"{a}.{self.domain}", ip=r.mesh_ip)
                for a in r.aliases
                if a not in self._by_name  # a peer's name wins over an alias
            ]
        now = self.clock()
        out += [
            DnsRecord(name=f"{c.name}.{self.domain}", ip=c.mesh_ip)
            for c in self.clients.sorted()
            if self.clients.active(c, now)
        ]
        for ip in self.coordinator_ips():
            for suffix in dict.fromkeys((self.domain, "tunnelmesh", "tm")):
                out.append(DnsRecord(name=f"this.{suffix}", ip=ip))
        return out

    def filter_message(self) -> bytes:
        """The push message with the coordinator layer of the filter (see ``filterbook``)."""
        return self.filters.message()

    def set_filter(self, config: FilterConfig) -> bool:
        """Take server.yaml's filter rules (a reload); pushed to every peer when they changed."""
        self.config = msgspec.structs.replace(self.config, filter=config)
        return self.filters.set_config(config)

    def _pushed(self) -> None:  # the filter rules changed
        self.hub.broadcast(self.filter_message())

    def _announce(self, rec: PeerRecord) -> None:
        self._pending_push.discard(rec.peer_id)  # this push carries the latest record
        if rec.pending:
            return  # a key waiting for approval is announced once it is approved
        self.revision += 1
        self.hub.broadcast(encode(PeerUpserted(peer=self.push_info(rec), revision=self.revision)))

    def _announce_soon(self, rec: PeerRecord) -> None:
        """Push ``rec`` within PUSH_COALESCE seconds: every change of the peer meanwhile
        rides on the same push (its record as it is then)."""
        if rec.peer_id in self._pending_push:
            self.stats["pushes_coalesced"] += 1
            return
        self._pending_push.add(rec.peer_id)
        if self._push_timer is None:
            loop = asyncio.get_running_loop()
            self._push_timer = loop.call_later(PUSH_COALESCE, self._flush_pushes)

    def _flush_pushes(self) -> None:
        self._push_timer = None
        pending, self._pending_push = self._pending_push, set()
        for peer_id in sorted(pending):
            rec = self.peers.get(peer_id)
            if rec is not None:  # deleted meanwhile: its PeerGone went out already
                self._announce(rec)

    # --- registration ------------------------------------------------------------------------

    def issue_challenge(self, source: str) -> bytes:
        """A registration nonce (refused while ``source`` is over its failure allowance)."""
        now = self.clock()
        wait = self.limiter.retry_after(source, now)
        if wait > 0:
            raise ApiFailure(429, "rate_limited", "too many failed attempts; try later", wait)
        try:
            return self.challenges.issue(now, source_key(source))
        except ChallengesExhausted as exc:
            if not exc.mine:
                raise ApiFailure(503, "busy", str(exc), 5.0) from None
            # More challenges than it redeems: charged like a failed attempt.
            self.limiter.charge(source, now)
            raise ApiFailure(429, "rate_limited", str(exc), max(1.0, exc.retry_after)) from None

    def refuse(self, source: str, failure: ApiFailure, *, registration: bool = True) -> ApiFailure:
        """Charge a refused attempt to ``source`` and return the failure to raise.

        ``registration=False``: a request refused for its credential or role (401, 403) on
        another route; counted in ``denied_by``, not as a refused registration.
        """
        self.limiter.charge(source, self.clock())
        if not registration:
            self.denied_by[failure.error] = self.denied_by.get(failure.error, 0) + 1
            return failure
        self.stats["refused"] += 1
        self.refused_by[failure.error] = self.refused_by.get(failure.error, 0) + 1
        if failure.error == "bad_endpoint":
            self.stats["bad_endpoints"] += 1
        return failure

    def check_allowance(self, source: str) -> None:
        wait = self.limiter.retry_after(source, self.clock())
        if wait > 0:
            raise ApiFailure(429, "rate_limited", "too many failed attempts; try later", wait)

    async def register(self, req: RegisterRequest, token: str, source: str) -> RegisterResponse:
        """Check and apply one registration.

        A key that is registered (a live peer) proves itself with its signature alone; only a
        new key needs the mesh join token (``token``, empty when none was sent).

        Raises:
            ApiFailure: 401 bad token/challenge/signature, 400 malformed, 403 reserved name,
                409 name reserved for another key (when ``rename`` is false), 429 over the
                allowance, when the key registers too often (REGISTER_BURST, then one every
                10 s) or its source joins new keys too often (``joins_burst``, then
                ``joins_per_minute``), 503 store.
        """
        self.check_allowance(source)
        now = self.clock()
        try:
            try:
                pub = parse_public_key(req.public_key)
            except ValueError as exc:
                raise ApiFailure(400, "malformed", str(exc)) from None
            known = await self._knows(peer_id_of(pub.public_bytes_raw()))
            if not known and not self.token_ok(token):
                if not token:
                    raise ApiFailure(
                        401,
                        "token_required",
                        "this key has not joined this mesh: its first registration needs the "
                        "mesh join token",
                    )
                raise ApiFailure(401, "bad_token", "the mesh auth token is wrong")
            nonce = _b64(req.nonce, "nonce")
            signature = _b64(req.signature, "signature")
            endpoints = _valid_endpoints(req.endpoints)
            if len(req.version) > 64:
                raise ApiFailure(400, "malformed", "version is too long")
            if not self.challenges.redeem(nonce, now):
                raise ApiFailure(
                    401,
                    "bad_challenge",
                    "unknown or expired challenge; ask /api/v1/register/challenge again",
                )
            public_key = " ".join(req.public_key.split()[:2])
            message = registration_message(
                nonce, req.name, req.public_key, token_binding(token, nonce)
            )
            if not verify_signature(pub, signature, message):
                raise ApiFailure(
                    401, "bad_signature", "the signature does not match the public key"
                )
            reason = check_name(req.name)
            if reason is not None:
                status = 403 if "reserved" in reason else 400
                raise ApiFailure(status, "bad_name", reason)
        except ApiFailure as failure:
            raise self.refuse(source, failure) from None
        wait = self.register_pace.take(peer_id_of(pub.public_bytes_raw()), now)
        if wait == 0 and not known:
            wait = self.join_pace.take(source_key(source), now)
        if wait > 0:
            self.stats["registrations_limited"] += 1
            raise ApiFailure(429, "rate_limited", "too many registrations; try later", wait)

        async with self._lock:
            return await self._apply_registration(req, public_key, endpoints, now)

    async def _apply_registration(
        self, req: RegisterRequest, public_key: str, endpoints: list[str], now: float
    ) -> RegisterResponse:
        raw = parse_public_key(public_key).public_bytes_raw()
        peer_id = peer_id_of(raw)
        old = self.peers.get(peer_id)

        # Candidates in order; the store takes the first one nobody else holds, in the same
        # transaction that writes the peer, so coordinators sharing a database never hand out
        # one name or address twice (memory can be stale; the database is not).
        names = name_candidates(req.name, rename=req.rename)
        keep_ip = old.mesh_ip if old is not None and self.alloc.contains(old.mesh_ip) else ""
        first_admin = self._first_admin
        if first_admin is None and not self.peers and not self._admin_entries:
            first_admin = peer_id  # the first key is admin only when admin_peers names none
        is_admin = self._admin_key(peer_id, public_key, first_admin)
        # approve_new_peers: a new key waits for an admin (an admin key never waits: someone
        # must be able to approve; nor does this coordinator's own join_mesh key, which the
        # operator configured); a known key keeps its state.
        pending = (
            old.pending if old else self.config.approve_new_peers and not is_admin
        ) and public_key not in self.coordinator_keys
        session = secrets.token_urlsafe(32)
        rec = PeerRecord(
            peer_id=peer_id,
            public_key=public_key,
            name=req.name,
            mesh_ip=keep_ip,
            is_admin=is_admin,
            is_coordinator=public_key in self.coordinator_keys,
            session_hash=session_hash(session),
            created_at=old.created_at if old else now,
            last_seen=now,
            endpoints=endpoints,
            transports=old.transports if old else {},
            rtt_ms=old.rtt_ms if old else {},
            reasons=old.reasons if old else {},
            counters=old.counters if old else Counters(),
            version=req.version,
            pending=pending,
        )
        try:
            if first_admin is not None and first_admin != self._first_admin:
                await self.store.put_meta_if_absent(_FIRST_ADMIN_KEY, first_admin.encode("ascii"))
            rec = await self.store.claim_peer(rec, names=names, ips=self.alloc.candidates(raw))
        except NameReserved as exc:
            gone = "" if exc.owner in self.peers else " (that peer left; the name stays its own)"
            raise ApiFailure(
                409,
                "name_taken",
                f"name {req.name!r} is reserved for another key, peer {exc.owner}{gone}; choose "
                f"another name, or an admin frees it with: tunnelmesh peers release {req.name}",
            ) from None
        except AllocationError as exc:
            raise ApiFailure(507, "mesh_full", f"mesh range {self.alloc.network} is full") from exc
        except StoreConflict as exc:
            raise ApiFailure(409, "conflict", str(exc)) from None
        except StateStoreError as exc:
            log.error("registration of %s not saved: %s", req.name, exc)
            raise store_unavailable(exc) from None
        name, mesh_ip = rec.name, rec.mesh_ip
        if old is not None and old.mesh_ip != mesh_ip and self.alloc.contains(old.mesh_ip):
            self.alloc.release(old.mesh_ip)
        self.alloc.mark_used(mesh_ip)
        self._first_admin = first_admin
        self._names[name] = peer_id
        await self._forget_old_names(peer_id, name)
        if old is not None:
            self._unindex(old)
        self._index(rec)
        self._dirty.discard(peer_id)
        self.liveness.seen(peer_id, now)
        self.stats["registrations"] += 1
        log.info(
            "%s %s (%s) at %s%s%s",
            "re-registered" if old else "registered",
            name,
            peer_id,
            mesh_ip,
            " [admin]" if is_admin else "",
            " [waits for approval: tunnelmesh peers approve]" if pending else "",
        )
        self._announce(rec)
        return RegisterResponse(
            peer_id=peer_id,
            name=name,
            mesh_ip=mesh_ip,
            mesh_cidr=str(self.alloc.network),
            domain=self.domain,
            is_admin=is_admin,
            session_token=session,
            heartbeat_interval=float(self.config.heartbeat_interval),
            server_version=__version__,
            renamed=name != req.name,
            coordinator_ips=self.coordinator_ips(),
            coordinators=self.coordinator_urls(),
            stun_port=self.stun_port,
            pending=pending,
        )

    async def approve(self, rec: PeerRecord) -> bool:
        """Admit a key that waits for approval; False when it was not waiting.

        Raises:
            ApiFailure: 503 the store cannot save it.
        """
        async with self._lock:
            if not rec.pending or self.peers.get(rec.peer_id) is not rec:
                return False
            approved = msgspec.structs.replace(rec, pending=False)
            try:
                await self.store.put_peer(approved)
            except StateStoreError as exc:
                raise store_unavailable(exc) from None
            self._unindex(rec)
            self._index(approved)
            log.info("approved %s (%s)", rec.name, rec.peer_id)
            self._announce(approved)
            return True

    async def _forget_old_names(self, peer_id: str, current: str) -> None:
        """Keep at most MAX_NAMES_PER_KEY names reserved for ``peer_id``: a key that renames
        itself again and again must not grow the names table without bound. The oldest of its
        former names go (its own choice to leave them; another key's names are never touched)."""
        held = [n for n, pid in self._names.items() if pid == peer_id and n != current]
        for n in held[: max(0, len(held) - (MAX_NAMES_PER_KEY - 1))]:
            try:
                await self.store.release_name(n)
            except StateStoreError as exc:
                log.warning("cannot release the former name %s of %s: %s", n, peer_id, exc)
                return
            del self._names[n]

    # --- peer operations -------------------------------------------------------------------

    def heartbeat(self, rec: PeerRecord, hb: Heartbeat, observed: str) -> HeartbeatAck:
        """Record a heartbeat; pushes the peer when its endpoints, exit flag or online state changed.

        Raises:
            ApiFailure: 429 when the peer heartbeats faster than its allowance (burst
                HEARTBEAT_BURST, then 4 per interval), 400 for an endpoint that is not a unicast
                IP:port (counted in ``stats``); nothing changes then.
        """
        now = self.clock()
        wait = self.heartbeat_pace.take(rec.peer_id, now)
        if wait > 0:
            self.stats["heartbeats_limited"] += 1
            raise ApiFailure(429, "rate_limited", "heartbeats too frequent; slow down", wait)
        try:
            endpoints = _valid_endpoints(hb.endpoints)
        except ApiFailure:
            self.stats["bad_endpoints"] += 1
            raise
        changed = endpoints != rec.endpoints or hb.allow_exit_traffic != rec.allow_exit_traffic
        served = hb.concentrator
        serving = ""
        if served is not None:
            why = endpoint_problem(served.endpoint, names=True) if served.endpoint else None
            if why is not None:
                self.stats["bad_endpoints"] += 1
                raise ApiFailure(
                    400, "bad_endpoint", f"concentrator endpoint {served.endpoint!r} {why}"
                )
            serving = served.endpoint
            self.clients.report(rec.peer_id, served.clients)
        changed = changed or serving != rec.concentrator_endpoint
        rec.concentrator_endpoint = serving
        if hb.aliases != rec.alias_request:
            rec.alias_request = list(hb.aliases[:MAX_ALIASES])
            aliases = accepted_aliases(rec.alias_request, rec, self.peers.values())
            changed = changed or aliases != rec.aliases
            rec.aliases = aliases
        rec.endpoints = endpoints
        rec.allow_exit_traffic = hb.allow_exit_traffic
        rec.transports = dict(list(hb.transports.items())[:4096])
        rec.rtt_ms = dict(list(hb.rtt_ms.items())[:4096])
        rec.reasons = {k: v[:200] for k, v in list(hb.reasons.items())[:4096]}
        rec.counters = hb.counters
        rec.last_seen = now
        self.peerstats.heartbeat(rec.peer_id, hb, now)
        self._dirty.add(rec.peer_id)
        self.stats["heartbeats"] += 1
        if self.liveness.seen(rec.peer_id, now):
            self._announce(rec)  # back online: at once
        elif changed:
            self._announce_soon(rec)
        if changed:
            self._to_share.add(rec.peer_id)
        return HeartbeatAck(
            interval=float(self.config.heartbeat_interval), server_time=now, observed_addr=observed
        )

    async def delete(self, rec: PeerRecord) -> None:
        """Remove a peer: frees its IP, tells every peer; its name stays reserved for its key."""
        async with self._lock:
            if self.peers.get(rec.peer_id) is not rec:
                return
            try:
                await self.store.delete_peer(rec.peer_id)
            except StateStoreError as exc:
                raise store_unavailable(exc) from None
            self._drop(rec)
            log.info("deleted peer %s (%s), freed %s", rec.name, rec.peer_id, rec.mesh_ip)

    def _drop(self, rec: PeerRecord) -> None:
        """Forget a deleted peer (here or by another coordinator) and tell every peer."""
        self._unindex(rec)
        self._dirty.discard(rec.peer_id)
        self._pending_push.discard(rec.peer_id)
        self._to_share.discard(rec.peer_id)
        self.heartbeat_pace.forget(rec.peer_id)
        if self.alloc.contains(rec.mesh_ip):
            self.alloc.release(rec.mesh_ip)
        self.liveness.forget(rec.peer_id)
        self.peerstats.forget(rec.peer_id)
        self.revision += 1
        self.hub.broadcast(
            encode(PeerGone(peer_id=rec.peer_id, name=rec.name, revision=self.revision))
        )

    def resolve_peer(self, who: str, *, known_only: bool = True) -> str:
        """The peer ID for ``who``: a peer ID, or the name of a registered peer.

        With ``known_only`` a peer ID must belong to a registered peer or hold a reserved name.

        Raises:
            ApiFailure: 404 no such peer.
        """
        rec = self.peer_by_name(who)
        if rec is not None:
            return rec.peer_id
        is_id = len(who) == 16 and all(c in "0123456789abcdef" for c in who)
        if is_id and (not known_only or who in self.peers or who in self._names.values()):
            return who
        raise ApiFailure(404, "no_such_peer", f"no peer named or with the ID {who!r}")

    async def release_name(self, name: str) -> str:
        """Free a name reserved for a key that left (``tunnelmesh peers release``).

        Returns:
            The peer ID the name was reserved for.

        Raises:
            ApiFailure: 404 not reserved, 409 a live peer holds it (delete the peer first).
        """
        async with self._lock:
            owner = self._names.get(name)
            if owner is None:
                raise ApiFailure(404, "not_reserved", f"no key holds the name {name!r}")
            if self.clients.by_name(name) is not None:
                raise ApiFailure(
                    409,
                    "name_in_use",
                    f"client {name!r} holds that name; remove it first (tunnelmesh wg remove)",
                )
            if self._by_name.get(name) is not None:
                raise ApiFailure(
                    409,
                    "name_in_use",
                    f"peer {name!r} is registered; delete it first (tunnelmesh peers delete)",
                )
            try:
                await self.store.release_name(name)
            except StateStoreError as exc:
                raise store_unavailable(exc) from None
            del self._names[name]
            log.info("released the name %s (was reserved for %s)", name, owner)
            return owner

    async def rotate_token(self, new: str | None = None) -> str:
        """Replace the mesh join token (kept in the state store); joined peers are untouched.

        Returns:
            The new token.
        """
        token = new or secrets.token_hex(32)
        if len(token) < 16:
            raise ApiFailure(400, "malformed", "a token has at least 16 characters")
        try:
            await self.store.put_meta(_TOKEN_KEY, self.sealer.seal(token.encode(), _TOKEN_KEY))
        except StateStoreError as exc:
            raise store_unavailable(exc) from None
        add_secret(token)  # never in a log line
        self._token = token
        log.info("the mesh join token was rotated")
        return token

    def apply_config(self, config: ServerConfig) -> list[str]:
        """Take ``admin_peers`` from a reloaded config (the filter goes through set_filter).

        Admin flags are recomputed at once, so an entry removed demotes that peer now.

        Returns:
            The names of the peers whose admin flag changed.
        """
        self.config = msgspec.structs.replace(self.config, admin_peers=config.admin_peers)
        self._admin_entries = frozenset(config.admin_peers)
        changed = []
        for rec in list(self.peers.values()):
            admin = self.is_admin(rec)
            if admin != rec.is_admin:
                rec.is_admin = admin
                changed.append(rec.name)
                self._announce(rec)
        if changed:
            log.info("admin changed by the reloaded config: %s", ", ".join(sorted(changed)))
        return sorted(changed)

    def rendezvous(self, rec: PeerRecord, req: RendezvousRequest) -> RendezvousAck:
        """Relay a hole-punch request to ``req.to`` over its push channel."""
        target = self.peer_by_name(req.to)
        if target is None or target.pending:
            raise ApiFailure(404, "no_such_peer", f"no peer named {req.to!r}")
        wait = self.rendezvous_pace.take(f"{rec.peer_id}>{target.peer_id}", self.clock())
        if wait > 0:
            self.stats["rendezvous_limited"] += 1
            raise ApiFailure(429, "rate_limited", f"too many rendezvous with {req.to!r}", wait)
        try:
            endpoints = _valid_endpoints(req.endpoints) or rec.endpoints
        except ApiFailure:
            self.stats["bad_endpoints"] += 1
            raise
        msg = Rendezvous(from_peer=rec.name, peer_id=rec.peer_id, endpoints=endpoints)
        delivered = self.hub.send_to(target.peer_id, encode(msg))
        return RendezvousAck(delivered=delivered, peer_endpoints=target.endpoints)

    def reissue_server_cert(self, dns_names: list[str], ips: list[str]) -> ServerCert:
        """Issue the coordinator's TLS certificate, adding the coordinators' mesh IPs."""
        assert self.ca is not None
        names = list(dns_names)
        extra_ips = list(ips)
        if self.coordinator_ips():
            names += [f"this.{self.domain}", "this.tunnelmesh", "this.tm"]
            extra_ips += self.coordinator_ips()
        self.server_cert = self.ca.issue_server_cert(names, extra_ips)
        return self.server_cert

    def ip_in_mesh(self, addr: str) -> bool:
        try:
            return ipaddress.ip_address(addr) in self.alloc.network
        except ValueError:
            return False
