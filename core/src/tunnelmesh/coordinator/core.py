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

Where the code lives, by what it does (each module's functions take the coordinator as
``self`` and are bound in the class body below, so ``coordinator.register`` and the rest are
found on the class as before and cost no extra call):

* this module -- :class:`Coordinator`: its state, start and stop (the store, the CA, the tick
  loop that finds peers gone offline and flushes heartbeats), the peer indexes, who is admin,
  a reloaded config, the server certificate;
* :mod:`~tunnelmesh.coordinator.registration` -- who joins, under which name: challenges and
  the failure allowance, registration, approval, reserved names, the join token's rotation;
* :mod:`~tunnelmesh.coordinator.peerops` -- what a registered peer asks (heartbeat,
  rendezvous) and its deletion;
* :mod:`~tunnelmesh.coordinator.views` -- the mesh as others see it: peer infos, the push
  channel's snapshot, pending peers, the coordinator's own mesh IP, DNS records;
* :mod:`~tunnelmesh.coordinator.announce` -- what goes out on the push channel and when
  (revisions, coalescing, the filter's coordinator layer);
* :mod:`~tunnelmesh.coordinator.sharing` -- several coordinators on one database: the roster,
  the store's change feed, the others' heartbeats, this one's changes written for them;
* :mod:`~tunnelmesh.coordinator.failures` -- :class:`ApiFailure` and the checks of request
  fields that raise it.

Every part logs as ``tunnelmesh.coordinator.core``, the logger this module always had.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from tunnelmesh.config import ServerConfig
from tunnelmesh.coordinator import announce, peerops, registration, sharing, views
from tunnelmesh.coordinator.alloc import IpAllocator
from tunnelmesh.coordinator.announce import PUSH_COALESCE
from tunnelmesh.coordinator.auth import ChallengeBook, FailureLimiter, token_matches
from tunnelmesh.coordinator.backends import state_store_for
from tunnelmesh.coordinator.ca import MeshCa, ServerCert
from tunnelmesh.coordinator.clients import ClientBook
from tunnelmesh.coordinator.failures import STORE_RETRY_AFTER, ApiFailure, store_unavailable
from tunnelmesh.coordinator.filterbook import FilterBook
from tunnelmesh.coordinator.groups import GroupBook
from tunnelmesh.coordinator.limits import RateLimiter
from tunnelmesh.coordinator.liveness import Liveness
from tunnelmesh.coordinator.peerstats import PeerStats
from tunnelmesh.coordinator.push import PushHub
from tunnelmesh.coordinator.registration import (
    _FIRST_ADMIN_KEY,
    _TOKEN_KEY,
    MAX_NAMES_PER_KEY,
    session_hash,
)
from tunnelmesh.coordinator.sealed import Sealer, load_key
from tunnelmesh.coordinator.store import PeerRecord, StateStore
from tunnelmesh.coordinator.transportbook import TransportBook
from tunnelmesh.errors import StateStoreError
from tunnelmesh.identity import fingerprint_of
from tunnelmesh.logs import add_secret

__all__ = [
    "HEARTBEAT_BURST",
    "LIVENESS_POLL",
    "MAX_NAMES_PER_KEY",
    "PUSH_COALESCE",
    "REGISTER_BURST",
    "RENDEZVOUS_BURST",
    "STORE_RETRY_AFTER",
    "ApiFailure",
    "Coordinator",
    "store_unavailable",
]

log = logging.getLogger(__name__)

_CA_KEY = "mesh_ca"
HEARTBEAT_BURST = 10.0
RENDEZVOUS_BURST = 5.0
LIVENESS_POLL = 1.0
"""Seconds between reads of the heartbeats other coordinators stored (several coordinators;
a quarter of the heartbeat interval when that is shorter)."""
REGISTER_BURST, REGISTER_RATE = 10.0, 0.1
"""Registrations of one key: 10 at once, then one every 10 s (each is an fsync)."""


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
        flush_interval: float | None = None,
    ) -> None:
        self.config = config
        add_secret(config.auth_token)  # never logged (tunnelmesh.logs)
        self.data_dir = Path(config.data_dir).expanduser()
        self.store: StateStore = store or state_store_for(config, pm)
        self.clock = clock
        self.pm = pm
        self.coordinator_keys: set[str] = set(coordinator_keys or ())
        # Another coordinator's peer is seen here a flush and a poll after its heartbeat; both
        # stay at a quarter interval (at most 2 s and 1 s), so that lag plus the peer's own
        # heartbeat gap stays under the three intervals that make it offline (a 1 s interval
        # with a 2 s flush flapped online/offline at the other coordinators).
        hb = float(config.heartbeat_interval)
        self.flush_interval = min(2.0, hb / 4) if flush_interval is None else flush_interval
        self.liveness_poll = min(LIVENESS_POLL, hb / 4)
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
        self.snapshot_cache: tuple[tuple[int, tuple[str, ...]], float, bytes] | None = None
        """The last push snapshot: its (revision, coordinators), when it was made, its bytes."""
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
        self._liveness_held_until = 0.0  # no one called offline before (sharing)
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
            events = self.liveness.poll(now) if self._judging_liveness(now) else []
            for ev in events:
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
                if now - last_poll >= self.liveness_poll:
                    # (a second more than a flush: a loaded loop flushes late)
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

        # "doc" and "address": state of features this class does not keep

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

    # --- the parts written in other modules (functions bound here as methods, so they are
    # found on the class as before and cost no extra call) ----------------------------------

    # who joins, under which name (registration.py)
    issue_challenge = registration.issue_challenge
    refuse = registration.refuse
    check_allowance = registration.check_allowance
    register = registration.register
    _apply_registration = registration._apply_registration
    approve = registration.approve
    _forget_old_names = registration._forget_old_names
    resolve_peer = registration.resolve_peer
    release_name = registration.release_name
    rotate_token = registration.rotate_token

    # what a registered peer asks, and its deletion (peerops.py)
    heartbeat = peerops.heartbeat
    rendezvous = peerops.rendezvous
    delete = peerops.delete
    _drop = peerops._drop

    # the mesh as others see it (views.py)
    info = views.info
    peer_infos = views.peer_infos
    push_info = views.push_info
    snapshot_message = views.snapshot_message
    _visible = views._visible
    pending_peers = views.pending_peers
    own_mesh_ip = views.own_mesh_ip
    wait_own_mesh_ip = views.wait_own_mesh_ip
    coordinator_ips = views.coordinator_ips
    dns_records = views.dns_records

    # what goes out on the push channel, and when (announce.py)
    filter_message = announce.filter_message
    set_filter = announce.set_filter
    _pushed = announce._pushed
    _announce = announce._announce
    _announce_soon = announce._announce_soon
    _flush_pushes = announce._flush_pushes

    # several coordinators on one database (sharing.py)
    coordinator_urls = sharing.coordinator_urls
    refresh_roster = sharing.refresh_roster
    _others = sharing._others
    _follow_store = sharing._follow_store
    apply_store_change = sharing.apply_store_change
    reload_from_store = sharing.reload_from_store
    _take_peer = sharing._take_peer
    _seen_as = sharing._seen_as
    _observe_last_seen = sharing._observe_last_seen
    _poll_liveness = sharing._poll_liveness
    _judging_liveness = sharing._judging_liveness
    _share = sharing._share
    _knows = sharing._knows
    _reload_meta = sharing._reload_meta
