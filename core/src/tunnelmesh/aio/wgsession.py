"""The WireGuard engine driven by the event loop, for any carrier: no socket, a transmit callable.

:class:`WireGuardSession` is the part every WireGuard transport shares (the UDP transport's
socket in :mod:`tunnelmesh_udp`, the relay transport's WebSocket):

* one :class:`~tunnelmesh.proto.WireGuard` engine and one :class:`WireGuardLink` per peer;
* sending: seal a batch for a peer, send the control messages the engine queued (a rekey
  initiation leaves *before* the burst it rides on), then the sealed run;
* receiving: the carrier hands over datagrams, the session opens them, groups the packets per
  peer and delivers each peer's batch to its link in one call;
* events: a completed handshake of a peer without a link makes its link (announced through
  ``on_link``); every event goes to ``on_event``;
* one ``loop.call_at`` timer, at or before the engine's earliest deadline (re-armed after a
  batch only when a deadline set by it comes earlier: one comparison with the engine's
  ``timer_floor``, no scan of the peers).

The carrier gives one callable, ``transmit(messages, address)``: send these WireGuard messages,
in order, to this address (what the address is, a ``(host, port)`` or a peer name, is the
carrier's business). It must not block and must not raise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tunnelmesh.abc import Packet
from tunnelmesh.aio.queuedlink import QueuedLink
from tunnelmesh.proto import EndpointChanged, HandshakeCompleted, Peer, WireGuard

__all__ = ["Transmit", "TransmitSealed", "WireGuardLink", "WireGuardSession", "traffic_of"]

log = logging.getLogger(__name__)

Transmit = Callable[[list[bytes], Any], None]
"""``transmit(messages, address)``: send WireGuard messages, in order, to one address."""
TransmitSealed = Callable[[bytearray, list[int], Any], None]
"""``transmit_sealed(buffer, sizes, address)``: send the WireGuard messages that lie back to
back at the start of ``buffer`` (their sizes in order) to one address, before returning (the
buffer is reused)."""


def traffic_of(engine: WireGuard) -> dict[str, tuple[int, int]]:
    """Transport bytes received and sent per peer name of ``engine``, ``(rx, tx)``."""
    return {p.name: (p.rx_bytes, p.tx_bytes) for p in engine.peers.values()}


class WireGuardLink(QueuedLink):
    """A link to one WireGuard peer of a :class:`WireGuardSession`."""

    def __init__(self, session: WireGuardSession, peer: Peer, mtu: int) -> None:
        super().__init__(peer.name, mtu)
        self.kind = session.link_kind
        self._session = session
        self.wg_peer = peer

    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        if self.closed:
            raise self._closed_error()
        if datagrams:
            self._session.send_packets(self.wg_peer, datagrams)

    def _queue_full(self, count: int) -> None:
        self._session.drops["link_queue_full"] += count

    async def aclose(self) -> None:
        await super().aclose()
        links = self._session.links
        if links.get(self.wg_peer.public_key) is self:
            del links[self.wg_peer.public_key]


class WireGuardSession:
    """A WireGuard engine, its links and its timer, sending through ``transmit``.

    Args:
        engine: the protocol engine (its peers are the session's peers).
        transmit: sends messages to one address (see the module docstring).
        mtu: the MTU of the links.
        on_link: called with a new link when a peer without one completes a handshake or
            sends data.
        on_event: called with every engine event, after the session handled it.
        announce_dialled: also call ``on_link`` for a link whose handshake we initiated (the
            UDP transport does: a dial that timed out may still complete later).
        link_kind: how the links name themselves in errors (``"relay link"``).
        transmit_sealed: a carrier that sends runs of messages from one buffer (UDP GSO) gives
            this too: the packets of a link's batch are then sealed into one reused buffer
            (:meth:`~tunnelmesh.proto.WireGuard.seal_into`), no bytes object per message.
    """

    def __init__(
        self,
        engine: WireGuard,
        transmit: Transmit,
        *,
        mtu: int = 1420,
        on_link: Callable[[WireGuardLink], None] | None = None,
        on_event: Callable[[object], None] | None = None,
        announce_dialled: bool = True,
        link_kind: str = "link",
        transmit_sealed: TransmitSealed | None = None,
    ) -> None:
        self.engine = engine
        self.transmit = transmit
        self.transmit_sealed = transmit_sealed
        self._sealed = bytearray()
        self.mtu = mtu
        self.on_link = on_link
        self.on_event = on_event
        self.announce_dialled = announce_dialled
        self.link_kind = link_kind
        self.links: dict[bytes, WireGuardLink] = {}
        self.drops = engine.drops
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind to the running loop (its clock is the engine's ``now``)."""
        self._loop = loop = loop or asyncio.get_running_loop()
        self.engine.wall_offset = time.time() - loop.time()
        self._rearm()  # deadlines set before the start

    def traffic(self) -> dict[str, tuple[int, int]]:
        """Transport bytes received and sent per peer name, ``(rx, tx)``: what a transport
        on this session answers for :meth:`tunnelmesh.abc.Transport.traffic`."""
        return traffic_of(self.engine)

    @property
    def started(self) -> bool:
        return self._loop is not None

    def close(self) -> None:
        """Cancel the timer and end every link (a pending ``recv_batch`` raises). Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        links = list(self.links.values())
        self.links.clear()  # in place: transports hold this dict as their ``links``
        for link in links:
            link._lost()

    def now(self) -> float:
        assert self._loop is not None, "the session is not started"
        return self._loop.time()

    def link_for(self, peer: Peer) -> WireGuardLink:
        """The link to ``peer``, created on first use (not announced)."""
        link = self.links.get(peer.public_key)
        if link is None:
            link = self.links[peer.public_key] = WireGuardLink(self, peer, self.mtu)
        return link

    def _new_link(self, peer: Peer) -> WireGuardLink:
        link = self.link_for(peer)
        if self.on_link is not None:
            self.on_link(link)
        return link

    # --- sending ------------------------------------------------------------------------------

    def send_packets(self, peer: Peer, packets: Sequence[Packet]) -> None:
        """Seal IP packets for ``peer`` and send them (staged while there is no session)."""
        transmit_sealed = self.transmit_sealed
        if transmit_sealed is not None and len(packets) > 1:  # one packet: bytes are cheaper
            buf = self._sealed
            sizes = self.engine.seal_into(peer, packets, self.now(), buf)
            self._send_queued()  # a rekey initiation first, as below
            if sizes and peer.endpoint is not None:
                transmit_sealed(buf, sizes, peer.endpoint)
            self._events_and_timer()
            return
        msgs = self.engine.encrypt_batch(peer, packets, self.now())
        # A rekey initiation queued by this batch leaves *before* the batch: behind a burst of
        # up to 128 datagrams it lands last in the peer's receive buffer, the first place a
        # slow peer drops (wireguard-go with the default 208 KiB SO_RCVBUF lost about one
        # rekey in ten that way in the lab), and a lost initiation waits REKEY_TIMEOUT.
        self._send_queued()
        if msgs and peer.endpoint is not None:
            self.transmit(msgs, peer.endpoint)
        self._events_and_timer()  # what after() does but the queue, sent just now

    def send_keepalives(self) -> int:
        """Send a keepalive to every peer that has a session; returns how many.

        Call it when a local address changed: an authenticated packet from the new address is
        how peers learn where we went (roaming). A peer that only receives would otherwise stay
        silent, and its peers would keep sending to the old address until a handshake timer
        fires (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT = 15 s).
        """
        engine = self.engine
        now = self.now()
        count = 0
        for peer in list(engine.peers.values()):
            if peer.endpoint is not None and engine.has_session(peer, now):
                engine.send_keepalive(peer, now)
                count += 1
        self.after()
        return count

    def initiate(self, peer: Peer) -> None:
        """Start a handshake with ``peer`` now (also when one was sent recently)."""
        peer.last_sent_handshake = None
        self.engine.initiate(peer, self.now())
        self.after()

    def _send_queued(self) -> None:
        """Send the engine's queued messages, consecutive ones to one address together."""
        out = self.engine.datagrams_to_send()
        if not out:
            return
        transmit = self.transmit
        run: list[bytes] = []
        run_addr: Any = None
        for data, addr in out:
            if addr is None:
                continue
            if run and addr != run_addr:
                transmit(run, run_addr)
                run = []
            run_addr = addr
            run.append(data)
        if run:
            transmit(run, run_addr)

    def after(self) -> None:
        """Send what the engine queued, hand out events, re-arm the timer."""
        self._send_queued()
        self._events_and_timer()

    def _events_and_timer(self) -> None:
        """Hand out the engine's events, re-arm the timer (:meth:`after` without sending)."""
        engine = self.engine
        while (event := engine.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                peer = engine.peers.get(event.public_key)
                if peer is not None and peer.public_key not in self.links:
                    if self.announce_dialled or not event.initiator:
                        self._new_link(peer)
                    else:
                        self.link_for(peer)
            elif isinstance(event, EndpointChanged):
                log.info("peer %s roamed to %s", event.peer, event.endpoint)
            if self.on_event is not None:
                self.on_event(event)
        # Re-armed only for an earlier deadline: traffic moves the keepalive and handshake
        # deadlines at every batch, mostly later, and a timer that fires early finds nothing
        # due and re-arms to the engine's deadline then (one wake-up per ~10 s of traffic,
        # where a cancel and a new loop timer per batch were). The engine's timer_floor says
        # whether this batch set a deadline before the armed one; only then are the peers
        # scanned (get_timer visits every peer).
        armed = self._timer_at
        if engine.timer_floor < (math.inf if armed is None else armed):
            self._rearm()

    def _rearm(self) -> None:
        """Arm the loop timer at the engine's earliest deadline if that is before the armed one."""
        loop = self._loop
        if loop is None:  # not started: start() re-arms (timer_floor keeps what was set)
            return
        engine = self.engine
        engine.timer_floor = math.inf  # the scan below covers every deadline set so far
        deadline = engine.get_timer()
        armed = self._timer_at
        if deadline is not None and (armed is None or deadline < armed):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self.now())
        self.after()
        if self._timer is None:  # the deadlines not due now, which no floor announces
            self._rearm()

    # --- receiving ----------------------------------------------------------------------------

    def open(
        self,
        datagrams: Iterable[bytes | memoryview],
        addr: Any,
        now: float,
        per_peer: dict[Peer, list[bytes]],
    ) -> int:
        """Open datagrams from ``addr`` into ``per_peer`` (packets grouped by peer).

        One engine call per carrier read (:meth:`~tunnelmesh.proto.WireGuard.receive_batch`);
        call :meth:`deliver` with ``per_peer`` once the carrier's batch is read. Returns how
        many datagrams were fed to the engine. A datagram may be a view of the carrier's
        buffer: it is read during this call only.
        """
        return self.engine.receive_batch(datagrams, addr, now, per_peer)

    def deliver(self, per_peer: dict[Peer, list[bytes]]) -> None:
        """Hand each peer's packets to its link in one call, then :meth:`after`."""
        links = self.links
        for peer, packets in per_peer.items():
            link = links.get(peer.public_key)
            if link is None:
                link = self._new_link(peer)
            link._received(packets)
        self.after()

    def receive(self, datagrams: Iterable[bytes | memoryview], addr: Any) -> int:
        """:meth:`open` and :meth:`deliver` for one carrier batch from one address."""
        per_peer: dict[Peer, list[bytes]] = {}
        count = self.open(datagrams, addr, self.now(), per_peer)
        self.deliver(per_peer)
        return count
