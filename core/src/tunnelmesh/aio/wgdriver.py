"""The asyncio driver of the WireGuard engine over one UDP socket (any transport may reuse it).

:class:`WireGuardSocket` owns a non-blocking UDP socket and a
:class:`~tunnelmesh.proto.wireguard.WireGuard` engine. It reads in batches from the event
loop's reader callback (``recvmsg_into`` a preallocated buffer; with UDP GRO one call returns
many datagrams of one size), feeds the engine, delivers decrypted packets per peer through each
:class:`WireGuardLink`'s receiver, and sends what the engine queues. Sealed packets leave with
UDP GSO where the kernel has it: a run of equal-sized messages to one endpoint becomes a single
``sendmsg`` with a ``UDP_SEGMENT`` control message, and the kernel cuts it into datagrams, each
one WireGuard message (so the wire is exactly what wireguard-go sends).

One ``loop.call_at`` timer is re-armed to the engine's earliest deadline after every batch.

Roaming: on Linux the socket also listens to rtnetlink address events; when an address of the
host comes or goes it sends a keepalive to every peer with a session (:meth:`send_keepalives`),
so peers learn the new source address at once, also when this side only receives.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from tunnelmesh.abc import Packet
from tunnelmesh.aio.queuedlink import QueuedLink
from tunnelmesh.proto import EndpointChanged, HandshakeCompleted, Peer, WireGuard
from tunnelmesh.proto.wgmessages import TRANSPORT_OVERHEAD

__all__ = ["WireGuardLink", "WireGuardSocket", "parse_endpoint"]

log = logging.getLogger(__name__)

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000
_RECV_BUDGET = 256
_H = struct.Struct("=H")
_I = struct.Struct("=i")


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` to a socket address tuple."""
    host, _, port = text.rpartition(":")
    if not host:
        raise ValueError(f"endpoint {text!r} is not host:port")
    return host.strip("[]"), int(port)


class WireGuardLink(QueuedLink):
    """A link to one WireGuard peer over a shared :class:`WireGuardSocket`."""

    def __init__(self, owner: WireGuardSocket, peer: Peer, mtu: int) -> None:
        super().__init__(peer.name, mtu)
        self._owner = owner
        self.wg_peer = peer

    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        if self.closed:
            raise self._closed_error()
        self._owner.send_packets(self.wg_peer, datagrams)

    def _queue_full(self, count: int) -> None:
        self._owner.drops["link_queue_full"] += count

    async def aclose(self) -> None:
        await super().aclose()
        links = self._owner.links
        if links.get(self.wg_peer.public_key) is self:
            del links[self.wg_peer.public_key]


class WireGuardSocket:
    """One UDP socket and one WireGuard engine, driven by the running event loop.

    Args:
        engine: the protocol engine (its peers are this socket's peers).
        sock: a bound UDP socket; it is made non-blocking.
        on_link: called with a new :class:`WireGuardLink` when a peer without a link completes
            a handshake (an incoming link).
        gso / gro: use UDP segmentation / receive offload when the kernel has it.
        watch_addresses: send keepalives when a local address changes (Linux rtnetlink).
    """

    def __init__(
        self,
        engine: WireGuard,
        sock: socket.socket,
        *,
        on_link: Callable[[WireGuardLink], None] | None = None,
        on_event: Callable[[object], None] | None = None,
        gso: bool = True,
        gro: bool = True,
        mtu: int = 1420,
        watch_addresses: bool = True,
    ) -> None:
        self.engine = engine
        self.sock = sock
        self.mtu = mtu
        self.on_link = on_link
        self.on_event = on_event
        self.links: dict[bytes, WireGuardLink] = {}
        self.drops = engine.drops
        self.gso = gso
        self.gro = False
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        if gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._netlink: socket.socket | None = None
        self.watch_addresses = watch_addresses
        self.stats = {"rx_datagrams": 0, "tx_datagrams": 0, "tx_sendmsg": 0, "rx_recvmsg": 0}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading (call from the running loop)."""
        self._loop = loop = asyncio.get_running_loop()
        self.engine.wall_offset = time.time() - loop.time()
        loop.add_reader(self.sock.fileno(), self._on_readable)
        if self.watch_addresses:
            self._netlink = _address_events()
            if self._netlink is not None:
                loop.add_reader(self._netlink.fileno(), self._on_address_event)

    def close(self) -> None:
        """Stop reading, cancel the timer and close the socket. Idempotent."""
        if self._netlink is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._netlink.fileno())
            self._netlink.close()
            self._netlink = None
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for link in list(self.links.values()):
            link._lost()  # wakes a pending recv_batch
        self.links.clear()
        self.sock.close()

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def link_for(self, peer: Peer) -> WireGuardLink:
        """The link to ``peer``, created on first use."""
        link = self.links.get(peer.public_key)
        if link is None:
            link = self.links[peer.public_key] = WireGuardLink(self, peer, self.mtu)
        return link

    def _on_address_event(self) -> None:
        nl = self._netlink
        if nl is None:
            return
        try:
            while nl.recv(65536):  # only the fact matters: an address came or went
                pass
        except OSError:  # BlockingIOError when drained; ENOBUFS after a burst
            pass
        self.send_keepalives()

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
        self._after()
        return count

    # --- sending --------------------------------------------------------------------------------

    def send_packets(self, peer: Peer, packets: Sequence[Packet]) -> None:
        """Seal IP packets for ``peer`` and send them (staged while there is no session)."""
        engine = self.engine
        msgs = engine.encrypt_batch(peer, packets, self.now())
        # A rekey initiation queued by this batch leaves *before* the batch: behind a burst of
        # up to 128 datagrams it lands last in the peer's receive buffer, the first place a
        # slow peer drops (wireguard-go with the default 208 KiB SO_RCVBUF lost about one
        # rekey in ten that way in the lab), and a lost initiation waits REKEY_TIMEOUT.
        for data, addr in engine.datagrams_to_send():
            if addr is not None:
                self._sendto(data, addr)
        if msgs and peer.endpoint is not None:
            self._send_run(msgs, peer.endpoint)
        self._after()

    def _send_run(self, msgs: list[bytes], addr: Any) -> None:
        """Send messages to one address: GSO runs of equal size, else one sendto each."""
        sock = self.sock
        self.stats["tx_datagrams"] += len(msgs)
        if not self.gso or len(msgs) == 1:
            for m in msgs:
                self._sendto(m, addr)
            return
        i, n = 0, len(msgs)
        while i < n:
            size = len(msgs[i])
            j = i + 1
            limit = min(n, i + _GSO_MAX_SEGMENTS, i + _GSO_MAX_BYTES // size)
            while j < limit and len(msgs[j]) == size:
                j += 1
            if j < n and j < limit and len(msgs[j]) < size:
                j += 1  # the last segment may be shorter
            if j - i == 1:
                self._sendto(msgs[i], addr)
            else:
                try:
                    sock.sendmsg(
                        [b"".join(msgs[i:j])], [(SOL_UDP, UDP_SEGMENT, _H.pack(size))], 0, addr
                    )
                    self.stats["tx_sendmsg"] += 1
                except BlockingIOError:
                    self.drops["tx_full"] += j - i
                except OSError as exc:
                    if exc.errno in (5, 22, 90, 95):  # EIO/EINVAL/EMSGSIZE/EOPNOTSUPP: no GSO
                        self.gso = False
                        for m in msgs[i:j]:
                            self._sendto(m, addr)
                    else:
                        self.drops["tx_error"] += j - i
            i = j

    def _sendto(self, data: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(data, addr)
            self.stats["tx_sendmsg"] += 1
        except BlockingIOError:
            self.drops["tx_full"] += 1
        except OSError:
            self.drops["tx_error"] += 1

    def _after(self) -> None:
        """Send what the engine queued, hand out events, re-arm the timer."""
        engine = self.engine
        out = engine.datagrams_to_send()
        for data, addr in out:
            if addr is not None:
                self._sendto(data, addr)
        while (event := engine.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                peer = engine.peers.get(event.public_key)
                if peer is not None and peer.public_key not in self.links:
                    link = self.link_for(peer)
                    if self.on_link is not None:
                        self.on_link(link)
            elif isinstance(event, EndpointChanged):
                log.info("peer %s roamed to %s", event.peer, event.endpoint)
            if self.on_event is not None:
                self.on_event(event)
        deadline = engine.get_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = deadline
            if deadline is not None and self._loop is not None:
                self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self.now())
        self._after()

    # --- receiving --------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        engine = self.engine
        receive = engine.receive_datagram
        sock = self.sock
        buf, view = self._buf, self._view
        now = self.now()
        gro = self.gro
        ancsize = socket.CMSG_SPACE(4) if gro else 0
        per_peer: dict[Peer, list[bytes]] = {}
        count = 0
        for _ in range(_RECV_BUDGET):
            try:
                n, anc, _flags, addr = sock.recvmsg_into([buf], ancsize)
            except BlockingIOError:
                break
            except OSError:
                self.drops["rx_error"] += 1
                break
            self.stats["rx_recvmsg"] += 1
            seg = n
            if anc:
                for level, kind, data in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        seg = _I.unpack(data[:4])[0]
            off = 0
            while off < n:
                end = off + seg if off + seg < n else n
                result = receive(bytes(view[off:end]), addr, now)
                off = end
                count += 1
                if result is not None:
                    peer, packet = result
                    lst = per_peer.get(peer)
                    if lst is None:
                        per_peer[peer] = [packet]
                    else:
                        lst.append(packet)
        self.stats["rx_datagrams"] += count
        for peer, packets in per_peer.items():
            link = self.links.get(peer.public_key)
            if link is None:
                link = self.link_for(peer)
                if self.on_link is not None:
                    self.on_link(link)
            link._received(packets)
        self._after()


_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV6_IFADDR = 0x100


def _address_events() -> socket.socket | None:
    """A non-blocking rtnetlink socket subscribed to address changes, or None (not Linux)."""
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except (AttributeError, OSError):
        return None
    try:
        nl.bind((0, _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
        nl.setblocking(False)
    except OSError:
        nl.close()
        return None
    return nl


def max_inner_mtu(path_mtu: int = 1500, ipv6: bool = False) -> int:
    """The largest tunnel MTU whose datagrams fit ``path_mtu`` (1420 for 1500 over IPv4... and
    IPv6, as WireGuard's default leaves room for the larger IPv6 header)."""
    return path_mtu - (40 if ipv6 else 20) - 8 - TRANSPORT_OVERHEAD
