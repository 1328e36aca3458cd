"""The driver of path selection for one peer: dials, probes, and the link the forwarder uses.

:class:`PeerPaths` runs a :class:`~tunnelmesh.node.negotiate.PathSelector` on the event loop:
it carries out the selector's :class:`~tunnelmesh.node.negotiate.Dial` actions
(``Transport.dial`` in a task), sends its probes, feeds back answers, link arrivals and
closures with ``now = loop.time()``, and on :class:`~tunnelmesh.node.negotiate.Switched`
points the routing table at the chosen link. One ``loop.call_at`` timer per peer.

Probes travel *inside* the links, so every transport (WireGuard over UDP, SSH channel,
relayed WireGuard) is measured the same way, end to end: a probe is a small IPv4 packet from
this node's mesh IP to the peer's, IP protocol 253 (RFC 3692, experimentation), payload
``TMPR`` + kind + token + sequence number. The other node answers a request on the *same*
link and never hands probes to the TUN device; answers come back to the selector as RTT
samples, unanswered probes as losses. Every link of a peer, active or not, delivers to the
forwarder, which takes the probes out in its one pass over each batch
(:attr:`~tunnelmesh.mesh.forwarder.Forwarder.probe_sink` -> :meth:`PeerPaths.probes_received`),
so a peer that still sends on another path (while both ends switch) is heard. Without a
forwarder (no ``probes_in_deliver``), this module's own receiver separates them.

Links stay open when they are not the active path: a UDP path that broke is still probed (so
the node notices when it works again) and WireGuard re-handshakes on its own; an SSH or relay
link that closes is reported to the selector, which redials with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tunnelmesh.abc import Link, Transport
from tunnelmesh.errors import TransportError
from tunnelmesh.mesh.forwarder import PROBE_PROTOCOL
from tunnelmesh.node.negotiate import Dial, NegotiationSettings, PathSelector, Probe, Switched

if TYPE_CHECKING:
    from tunnelmesh.node.peers import PeerSync

__all__ = ["PROBE_PROTOCOL", "PeerPaths", "parse_probe", "probe_packet"]

log = logging.getLogger(__name__)

MAGIC = b"TMPR"
REQUEST, REPLY = 1, 2
_PAYLOAD = struct.Struct("!4sB3x4sI")
_HEADER = struct.Struct("!BBHHHBBH4s4s")


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def probe_packet(src: bytes, dst: bytes, kind: int, token: bytes, seq: int) -> bytes:
    """An IPv4 probe packet (``src``/``dst``: packed mesh addresses)."""
    payload = _PAYLOAD.pack(MAGIC, kind, token, seq)
    length = 20 + len(payload)
    head = _HEADER.pack(0x45, 0, length, 0, 0x4000, 64, PROBE_PROTOCOL, 0, src, dst)
    head = head[:10] + _checksum(head).to_bytes(2, "big") + head[12:]
    return head + payload


def parse_probe(packet: bytes) -> tuple[int, bytes, int] | None:
    """``(kind, token, seq)`` of a probe packet, or None for anything else."""
    if len(packet) < 20 + _PAYLOAD.size or packet[0] != 0x45 or packet[9] != PROBE_PROTOCOL:
        return None
    magic, kind, token, seq = _PAYLOAD.unpack_from(packet, 20)
    if magic != MAGIC or kind not in (REQUEST, REPLY):
        return None
    return kind, token, seq


class PeerPaths:
    """Path selection for one peer, on the running event loop.

    Args:
        sync: the owning :class:`~tunnelmesh.node.peers.PeerSync` (routes, transports,
            forwarder, rendezvous, notifications).
        name: the peer's name.
        order: transport names, most preferred first.
        settings: selector thresholds.
    """

    def __init__(
        self,
        sync: PeerSync,
        name: str,
        order: Sequence[str],
        settings: NegotiationSettings | None = None,
    ) -> None:
        self.sync = sync
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.selector = PathSelector(name, order, settings)
        self.links: dict[str, list[Link]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.token = os.urandom(4)
        self.extra: list[str] = []
        self.started = False
        self.closed = False
        self.announced = False
        self.passive = False
        """This end has the larger key: on re-dials it lets the other end go first (crossing
        WireGuard initiations on UDP or the relay each wait a 5 s retransmit)."""
        self._dialled: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # --- inputs ----------------------------------------------------------------------------

    def start(self, delay: float = 0.0) -> None:
        """Begin dialling (the first transport after ``delay`` seconds)."""
        if self.started or self.closed:
            return
        self.started = True
        self.selector.start(self.loop.time(), delay)
        self._after()

    def set_order(self, order: Sequence[str]) -> None:
        self.selector.set_order(order, self.loop.time())
        self._after()

    def rendezvous(self, endpoints: Sequence[str]) -> None:
        """The peer asked (through the coordinator) for a dial towards ``endpoints`` now."""
        self.extra = list(endpoints)
        punch = [
            t.name
            for t in self.sync.transports
            if t.capabilities.nat_punch and t.name in self.selector.paths
        ]
        for name in punch or self.selector.order[:1]:
            self.selector.request_dial(name, self.loop.time())
        self._after()

    def network_changed(self) -> None:
        """This node's addresses changed: probe every path now (the probes leave from the new
        address, so the peer's WireGuard roams to it at once) and let broken ones fall back."""
        self._prune()
        self.selector.probe_now(self.loop.time())
        self.selector.handle_timer(self.loop.time())
        self._after()

    def link_arrived(self, transport: Transport, link: Link) -> None:
        """A link on ``transport`` (dialled or incoming)."""
        if self.closed:
            return
        held = self.links.setdefault(transport.name, [])
        if link not in held:
            held.append(link)  # a crossing second link is kept open and listened to
        sync = self.sync
        link.set_receiver(sync.deliver if sync.probes_in_deliver else self._receiver)
        if self.selector.active == transport.name and self._link_of(transport.name) is link:
            self.sync.attach_active(self.name, link)
        self.selector.link_up(transport.name, self.loop.time())
        self._after()

    # --- the data path (called per received batch) ------------------------------------------

    def _receiver(self, link: Link, packets: list[bytes]) -> None:
        probes = None
        for p in packets:
            if len(p) > 9 and p[9] == PROBE_PROTOCOL:
                if probes is None:
                    probes = []
                probes.append(p)
        if probes is not None:
            ids = {id(p) for p in probes}
            packets = [p for p in packets if id(p) not in ids]
            for p in probes:
                self._probe_received(link, p)
        if packets:
            deliver = self.sync.deliver
            if deliver is not None:
                deliver(link, packets)

    def probes_received(self, link: Link, probes: list[bytes]) -> None:
        """Probes the forwarder took out of a batch from ``link``."""
        for p in probes:
            self._probe_received(link, p)

    def _probe_received(self, link: Link, packet: bytes) -> None:
        parsed = parse_probe(packet)
        if parsed is None:
            return
        kind, token, seq = parsed
        if kind == REQUEST:
            reply = probe_packet(packet[16:20], packet[12:16], REPLY, token, seq)
            with contextlib.suppress(TransportError):
                link.send_batch([reply])
        elif token == self.token:
            self.selector.probe_answered(seq, self.loop.time())
            self._after()

    # --- outputs ---------------------------------------------------------------------------

    def _link_of(self, transport: str) -> Link | None:
        held = self.links.get(transport)
        if not held:
            return None
        for link in held:
            if not link.closed:
                return link
        return None

    def _prune(self) -> None:
        """Drop closed links; tell the selector about transports left without one."""
        now = self.loop.time()
        for name, held in list(self.links.items()):
            alive = [lk for lk in held if not lk.closed]
            if len(alive) != len(held):
                self.links[name] = alive
                if not alive:
                    del self.links[name]
                    self.selector.link_down(name, now, "link closed")

    def _after(self) -> None:
        if self.closed:
            return
        sel = self.selector
        while (action := sel.next_action()) is not None:
            if isinstance(action, Probe):
                self._send_probe(action)
            elif isinstance(action, Dial):
                self._dial(action.transport)
            elif isinstance(action, Switched):
                self._switched(action)
        deadline = sel.get_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = deadline
            if deadline is not None:
                self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._prune()
        self.selector.handle_timer(self.loop.time())
        self._after()

    def _send_probe(self, probe: Probe) -> None:
        link = self._link_of(probe.transport)
        route = self.sync.routes.peers.get(self.name)
        if link is None or route is None or not route.mesh_ips or not self.sync.local_ip:
            return
        try:
            dst = _packed(route.mesh_ips[0])
            src = _packed(self.sync.local_ip)
        except ValueError:
            return
        try:
            link.send_batch([probe_packet(src, dst, REQUEST, self.token, probe.seq)])
        except TransportError as exc:
            self.selector.link_down(probe.transport, self.loop.time(), str(exc) or "closed")

    def _switched(self, sw: Switched) -> None:
        sync = self.sync
        link = self._link_of(sw.transport) if sw.transport is not None else None
        sync.path_changed(self.name, sw.transport, sw.reason)
        if link is not None:
            sync.attach_active(self.name, link)
            if not self.announced:
                self.announced = True
                sync.say(f"link up: {self.name} via {sw.transport}")
            else:
                sync.say(f"path to {self.name}: {sw.transport} ({sw.reason})")
        else:
            sync.routes.set_link(self.name, None)
            if sw.previous is not None:
                sync.say(f"link down: {self.name} ({sw.reason})")

    def _dial(self, transport_name: str) -> None:
        transport = next((t for t in self.sync.transports if t.name == transport_name), None)
        if transport is None:
            self.selector.dial_failed(transport_name, self.loop.time(), "not running")
            return
        running = self.tasks.get(transport_name)
        if running is not None and not running.done():
            return
        self.tasks[transport_name] = self.loop.create_task(
            self._dial_task(transport), name=f"tm-dial-{self.name}-{transport_name}"
        )

    async def _dial_task(self, transport: Transport) -> None:
        if self.passive and self._dialled and not self.extra:
            # both ends usually notice a broken path at the same moment
            await asyncio.sleep(self.sync.passive_delay / 2)
            path = self.selector.paths.get(transport.name)
            if path is not None and path.up:
                return  # the other end's link arrived meanwhile
        self._dialled.add(transport.name)
        route = self.sync.routes.peers.get(self.name)
        if route is None:
            return
        extra, self.extra = self.extra, []
        endpoints = self.sync.ordered([*extra, *route.endpoints])
        try:
            link = await transport.dial(self.name, endpoints, public_key=route.public_key)
        except TransportError as exc:
            if self.closed:
                return
            log.debug("%s: dial %s: %s", transport.name, self.name, exc)
            error = _short(exc).removeprefix(f"{transport.name}: ")
            self.selector.dial_failed(transport.name, self.loop.time(), error)
            if self.selector.active is None or transport.capabilities.nat_punch:
                self.sync.ask_rendezvous(self.name)
            self._after()
            return
        if self.closed:
            return
        self.link_arrived(transport, link)

    # --- status ----------------------------------------------------------------------------

    @property
    def active(self) -> str | None:
        return self.selector.active

    @property
    def reason(self) -> str:
        return self.selector.current_reason(self.loop.time())

    def rtt_ms(self) -> float | None:
        active = self.selector.active
        if active is None:
            return None
        return self.selector.paths[active].rtt()

    def describe(self) -> dict[str, object]:
        return self.selector.describe(self.loop.time())

    async def aclose(self, close_links: bool = True) -> None:
        """Stop dialling and probing; close the links (unless told not to). Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if close_links:
            for held in self.links.values():
                for link in held:
                    with contextlib.suppress(Exception):
                        await link.aclose()
        self.links.clear()


def _packed(ip: str) -> bytes:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    if addr.version != 4:
        raise ValueError("probes are IPv4")
    return addr.packed


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


_Deliver = Callable[[Link, list[bytes]], None]
