"""Coordinator: several coordinators on one database (functions bound as methods of
:class:`~tunnelmesh.coordinator.core.Coordinator`).

The roster of live coordinators; the store's change feed applied here and pushed to this
coordinator's peers (a full reload after a gap); the heartbeats other coordinators stored;
the changes made here written for the others to push. See docs/scale.md.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import msgspec

from tunnelmesh.control.messages import Coordinators, PeerInfo, encode
from tunnelmesh.coordinator.filterbook import META_KEY as FILTER_RULES_KEY
from tunnelmesh.coordinator.registration import _FIRST_ADMIN_KEY, _TOKEN_KEY
from tunnelmesh.coordinator.roster import (
    ROSTER_KEY,
    TTL_INTERVALS,
    decode_roster,
    encode_roster,
    refreshed,
)
from tunnelmesh.coordinator.store import PeerRecord, StoreChange, StoreConflict
from tunnelmesh.coordinator.transportbook import META_KEY as TRANSPORT_ORDERS_KEY
from tunnelmesh.errors import StateStoreError
from tunnelmesh.logs import add_secret

if TYPE_CHECKING:
    from tunnelmesh.coordinator.core import Coordinator

log = logging.getLogger("tunnelmesh.coordinator.core")
"""Coordinator's log: every part of it logs under the name it always had."""


def coordinator_urls(self: Coordinator) -> list[str]:
    """The ``public_url`` of every live coordinator of the mesh (this one's included)."""
    urls = set(self._roster)
    if self.public_url:
        urls.add(self.public_url)
    return sorted(urls)


async def refresh_roster(self: Coordinator, *, write: bool = True) -> None:
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


def _others(self: Coordinator) -> bool:
    """Whether other coordinators may share this one's database: a networked backend (they
    need not have a ``public_url``), or others announced themselves."""
    return self.config.state.backend != "sqlite" or any(
        url != self.public_url for url in self._roster
    )


async def _follow_store(self: Coordinator) -> None:
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


async def apply_store_change(self: Coordinator, change: StoreChange) -> None:
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


async def reload_from_store(self: Coordinator) -> None:
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


def _take_peer(self: Coordinator, peer_id: str, rec: PeerRecord | None) -> None:
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


def _seen_as(self: Coordinator, rec: PeerRecord) -> PeerInfo:
    """What the peers see of ``rec``, its last heartbeat's time aside (a reload must not
    push every peer again because time went on)."""
    return msgspec.structs.replace(self.push_info(rec), last_seen=0.0)


def _observe_last_seen(self: Coordinator, peer_id: str, last_seen: float) -> bool:
    """Take a ``last_seen`` another coordinator stored; True when the peer came online.
    Every coordinator applies the same rule (online = a heartbeat within three intervals) to
    the same stored times, so they agree on who is online.

    A stored time that has already expired does not take the peer offline here: the ticker
    does, and only while ``_judging_liveness``. A reload right after the database came back
    reads times the others wrote before it went away (their fresher heartbeats are still
    waiting to be flushed); taking those as "offline now" flapped peers of the other
    coordinators offline and back to every peer here."""
    known = self.liveness.last_seen(peer_id)
    if not last_seen or (known is not None and known >= last_seen):
        return False
    return bool(self.liveness.observe(peer_id, last_seen, self.clock()))


async def _poll_liveness(self: Coordinator, since: float) -> None:
    """Read the heartbeats other coordinators stored since ``since``; push peers that came
    online (going offline is found by the liveness ticker, as for this one's peers)."""
    try:
        seen = await self.store.load_liveness(since)
    except StateStoreError as exc:
        log.debug("cannot read the peers' liveness: %s", exc)
        self._liveness_held_until = math.inf  # see _judging_liveness
        return
    self.followed["liveness_polls"] += 1
    if self._liveness_held_until == math.inf:
        # the others get as long to write again as they have before they count as gone
        grace = TTL_INTERVALS * float(self.config.heartbeat_interval) + self.liveness.timeout
        self._liveness_held_until = self.clock() + grace
    for peer_id, last_seen in seen.items():
        rec = self.peers.get(peer_id)
        if rec is None:
            continue
        changed = self._observe_last_seen(peer_id, last_seen)
        rec.last_seen = max(rec.last_seen, last_seen)  # what GET /api/v1/peers says
        if changed:
            self._announce(rec)


def _judging_liveness(self: Coordinator, now: float) -> bool:
    """Whether peers may be called offline now (``Liveness.poll``).

    With other coordinators a peer's heartbeats may go to any of them and reach this one only
    through the store. While the store cannot be read, and after it can again for as long as
    the others have to write again before they count as gone (the roster's 3.5 intervals)
    plus one liveness timeout, nobody is called offline: else every peer of the others would
    be pushed to every peer here as offline, and again as online when the database answers. A
    peer that sent no heartbeat anywhere meanwhile goes offline after that."""
    return not self._others() or now >= self._liveness_held_until


async def _share(self: Coordinator) -> None:
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


async def _knows(self: Coordinator, peer_id: str) -> bool:
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


async def _reload_meta(self: Coordinator, key: str) -> None:
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
