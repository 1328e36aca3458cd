"""A WireGuard session over one UDP socket: batched reads (GRO), GSO sends, address watching.

:class:`WireGuardSocket` owns a non-blocking UDP socket and a
:class:`~tunnelmesh.aio.wgsession.WireGuardSession` (the engine, the links, the events and the
timer, shared with the relay transport). It reads in batches from the event loop's reader
callback (``recvmsg_into`` a preallocated buffer; with UDP GRO one call returns many datagrams
of one size) and hands them to the session as views of that buffer (opened without a copy). It
is the session's ``transmit`` and ``transmit_sealed`` (the engine seals a batch into one buffer,
:meth:`~tunnelmesh.proto.WireGuard.seal_into`): sealed messages leave with UDP GSO where the
kernel has it, a run of equal-sized messages to one endpoint
becoming a single ``sendmsg`` with a ``UDP_SEGMENT`` control message that the kernel cuts into
datagrams, each one WireGuard message (so the wire is exactly what wireguard-go sends).

Roaming: on Linux the socket also listens to rtnetlink address events; when an address of the
host comes or goes it sends a keepalive to every peer with a session
(:meth:`~tunnelmesh.aio.wgsession.WireGuardSession.send_keepalives`), so peers learn the new
source address at once, also when this side only receives.
"""

from __future__ import annotations

import asyncio
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from tunnelmesh.aio.wgsession import WireGuardLink, WireGuardSession
from tunnelmesh.proto import Peer, WireGuard

__all__ = ["WireGuardSocket", "parse_endpoint"]

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


class WireGuardSocket:
    """One UDP socket carrying one :class:`~tunnelmesh.aio.wgsession.WireGuardSession`.

    Args:
        engine: the protocol engine (its peers are this socket's peers).
        sock: a bound UDP socket; it is made non-blocking.
        on_link: called with a new link when a peer without a link completes a handshake.
        on_event: called with every engine event.
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
        self.session = WireGuardSession(
            engine,
            self._send_run,
            mtu=mtu,
            on_link=on_link,
            on_event=on_event,
            transmit_sealed=self._send_sealed,
        )
        self.engine = engine
        self.sock = sock
        self.mtu = mtu
        self.links = self.session.links
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
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._buf = bytearray(65536)
        self._bufs = [self._buf]  # recvmsg_into's buffer list, made once
        self._view = memoryview(self._buf)
        self._ancsize = socket.CMSG_SPACE(4) if self.gro else 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._netlink: socket.socket | None = None
        self.watch_addresses = watch_addresses
        self.stats = {"rx_datagrams": 0, "tx_datagrams": 0, "tx_sendmsg": 0, "rx_recvmsg": 0}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading (call from the running loop)."""
        self._loop = loop = asyncio.get_running_loop()
        self.session.start(loop)
        loop.add_reader(self.sock.fileno(), self._on_readable)
        if self.watch_addresses:
            self._netlink = _address_events()
            if self._netlink is not None:
                loop.add_reader(self._netlink.fileno(), self._on_address_event)

    def close(self) -> None:
        """Stop reading, end the session and close the socket. Idempotent."""
        if self._netlink is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._netlink.fileno())
            self._netlink.close()
            self._netlink = None
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.session.close()
        self.sock.close()

    def now(self) -> float:
        return self.session.now()

    def link_for(self, peer: Peer) -> WireGuardLink:
        """The link to ``peer``, created on first use."""
        return self.session.link_for(peer)

    def send_keepalives(self) -> int:
        """A keepalive to every peer with a session (see ``WireGuardSession.send_keepalives``)."""
        return self.session.send_keepalives()

    def _on_address_event(self) -> None:
        nl = self._netlink
        if nl is None:
            return
        try:
            while nl.recv(65536):  # only the fact matters: an address came or went
                pass
        except OSError:  # BlockingIOError when drained; ENOBUFS after a burst
            pass
        self.session.send_keepalives()

    # --- sending (the session's transmit) -------------------------------------------------------

    def _send_run(self, msgs: list[bytes], addr: Any) -> None:
        """Send messages to one address (handshakes, keepalives, a batch of one packet)."""
        if len(msgs) == 1:
            self.stats["tx_datagrams"] += 1
            self._sendto(msgs[0], addr)
            return
        self._send_sealed(b"".join(msgs), [len(m) for m in msgs], addr)

    def _send_sealed(self, buf: bytes | bytearray, sizes: list[int], addr: Any) -> None:
        """Send the messages that lie back to back in ``buf`` (``sizes``) to one address: GSO
        runs of equal size (the last may be shorter), each one ``sendmsg`` of a slice of
        ``buf``, else one ``sendto`` each."""
        sock = self.sock
        n = len(sizes)
        self.stats["tx_datagrams"] += n
        view = memoryview(buf)
        if not self.gso or n == 1:
            off = 0
            for size in sizes:
                self._sendto(view[off : off + size], addr)
                off += size
            return
        i = off = 0
        while i < n:
            size = sizes[i]
            j = i + 1
            limit = min(n, i + _GSO_MAX_SEGMENTS, i + _GSO_MAX_BYTES // size)
            while j < limit and sizes[j] == size:
                j += 1
            end = off + size * (j - i)
            if j < n and j < limit and sizes[j] < size:
                end += sizes[j]  # the last segment may be shorter
                j += 1
            if j - i == 1:
                self._sendto(view[off:end], addr)
            else:
                try:
                    sock.sendmsg([view[off:end]], [(SOL_UDP, UDP_SEGMENT, _H.pack(size))], 0, addr)
                    self.stats["tx_sendmsg"] += 1
                except BlockingIOError:
                    self.drops["tx_full"] += j - i
                except OSError as exc:
                    if exc.errno in (5, 22, 90, 95):  # EIO/EINVAL/EMSGSIZE/EOPNOTSUPP: no GSO
                        self.gso = False
                        for k in range(i, j):
                            self._sendto(view[off : off + sizes[k]], addr)
                            off += sizes[k]
                    else:
                        self.drops["tx_error"] += j - i
            off = end
            i = j

    def _sendto(self, data: bytes | memoryview, addr: Any) -> None:
        try:
            self.sock.sendto(data, addr)
            self.stats["tx_sendmsg"] += 1
        except BlockingIOError:
            self.drops["tx_full"] += 1
        except OSError:
            self.drops["tx_error"] += 1

    # --- receiving ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        session = self.session
        open_ = self.engine.receive_batch  # what session.open() calls, without the hop
        recvmsg_into = self.sock.recvmsg_into
        bufs, view, ancsize = self._bufs, self._view, self._ancsize
        now = session.now()
        per_peer: dict[Peer, list[bytes]] = {}
        count = reads = 0
        for _ in range(_RECV_BUDGET):
            try:
                n, anc, _flags, addr = recvmsg_into(bufs, ancsize)
            except BlockingIOError:
                break
            except OSError:
                self.drops["rx_error"] += 1
                break
            reads += 1
            last = reads == 1 and not self._poll.poll(0)  # alone: no read ending in EAGAIN
            if not n:
                continue
            seg = n
            if anc:
                for level, kind, data in anc:
                    if level == SOL_UDP and kind == UDP_GRO:
                        seg = _I.unpack(data[:4])[0]
            # views of the buffer, opened in place (the engine reads them during the call only)
            got = view[:n]  # the buffer is longer than this read: its tail is stale bytes
            if seg >= n:
                count += open_((got,), addr, now, per_peer)
            else:  # GRO: equal segments, the last one may be shorter
                count += open_(
                    [got[off : off + seg] for off in range(0, n, seg)], addr, now, per_peer
                )
            if last:
                break
        stats = self.stats
        stats["rx_recvmsg"] += reads
        stats["rx_datagrams"] += count
        session.deliver(per_peer)


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
