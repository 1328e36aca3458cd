"""The WireGuard engine's data path: transport messages in and out (wireguard-go ``send.go`` and
``receive.go`` without the handshake).

Sending seals IP packets under the peer's current keypair, or stages them and starts a handshake
when there is none. Receiving dispatches each datagram by type (handshake messages go to
:mod:`tunnelmesh.proto.wghandshake`), opens transport messages, checks the replay window, cuts
the padding off the inner packet and runs the receive timers; :func:`receive_batch` does the
same for a carrier read in one call, a run of one keypair's messages in a tight loop.

Its functions are methods of :class:`~tunnelmesh.proto.wireguard.WireGuard`, bound there.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag

from tunnelmesh.proto.events import EndpointChanged
from tunnelmesh.proto.replay import _BIT_MASK, _BLOCK_BITS, _BLOCK_BITS_LOG, _BLOCK_MASK
from tunnelmesh.proto.wgmessages import (
    KEEPALIVE_TIMEOUT,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_DATA,
    MESSAGE_DATA_MIN_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
)
from tunnelmesh.proto.wgpeer import Address, Keypair, Peer
from tunnelmesh.proto.wgtimers import LAST_MINUTE_AFTER, NEW_HANDSHAKE_AFTER

if TYPE_CHECKING:
    from tunnelmesh.proto.wireguard import WireGuard

_NONCE_PREFIX = b"\x00\x00\x00\x00"
_NONCE = struct.Struct("<4xQ")
"""The AEAD nonce of a transport message: four zero bytes and its 64-bit counter."""
_DATA_HEADER = struct.Struct("<IIQ")
"""A transport message's type (with its three reserved bytes), receiver index and counter."""
_PADS = [bytes(i) for i in range(16)]


def has_session(self: WireGuard, peer: Peer, now: float) -> bool:
    """True when ``peer`` has a session that may send now."""
    kp = peer.current
    return (
        kp is not None
        and kp.send_counter < REJECT_AFTER_MESSAGES
        and now - kp.created < REJECT_AFTER_TIME
    )


def encrypt(self: WireGuard, peer: Peer, packet: bytes, now: float) -> bytes | None:
    """Seal one IP packet for ``peer`` as a transport message.

    Returns None when there is no usable session: the packet is staged (up to 128) and a
    handshake starts; flushed messages then come out of :meth:`datagrams_to_send`.
    """
    out = self.encrypt_batch(peer, (packet,), now)
    return out[0] if out else None


def _sending_keypair(self: WireGuard, peer: Peer, packets: Any, now: float) -> Keypair | None:
    """The keypair to seal ``packets`` with; None (the packets staged, a handshake started)
    when there is no session that may send them."""
    kp = peer.current
    if (
        kp is None
        or kp.send_counter + len(packets) >= REJECT_AFTER_MESSAGES
        or now - kp.created >= REJECT_AFTER_TIME
    ):
        peer.staged.extend(packets)
        self._send_initiation(peer, now, retry=False)
        return None
    return kp


def _sealed(
    self: WireGuard, peer: Peer, kp: Keypair, counter: int, nbytes: int, count: int, data: bool,
    now: float,
) -> None:  # fmt: skip
    """``count`` messages (``nbytes``) sealed under ``kp``, its counter now ``counter``: the
    counters, the send timers and keepKeyFreshSending (once per batch)."""
    kp.send_counter = counter
    peer.tx_bytes += nbytes
    peer.tx_packets += count
    # timersAnyAuthenticatedPacketTraversal / Sent / DataSent (each deadline set lowers
    # timer_floor, inline: this runs per batch)
    floor = self.timer_floor
    if peer.persistent_keepalive > 0:
        peer.persistent_at = at = now + peer.persistent_keepalive
        if at < floor:
            self.timer_floor = floor = at
    peer.keepalive_at = None
    if data and peer.new_handshake_at is None:
        peer.new_handshake_at = at = now + NEW_HANDSHAKE_AFTER + self._jitter()
        if at < floor:
            self.timer_floor = at
    # keepKeyFreshSending
    if counter > REKEY_AFTER_MESSAGES or (
        kp.initiator and now - kp.created > self.rekey_after_time
    ):
        self._send_initiation(peer, now, retry=False)


def encrypt_batch(self: WireGuard, peer: Peer, packets: Any, now: float) -> list[bytes]:
    """Seal several IP packets for one peer; the fast path (one timer update per batch)."""
    kp = self._sending_keypair(peer, packets, now)
    if kp is None:
        return []
    seal = kp.send.encrypt
    header = kp.header
    mtu = self.mtu
    pads = _PADS
    counter = kp.send_counter
    out = []
    nbytes = 0
    data_sent = False
    for packet in packets:
        n = len(packet)
        if n:
            data_sent = True
        pad = -n & 15
        if pad and n + pad > mtu:
            pad = mtu - n if n < mtu else (-(n % mtu)) & 15
        ctr = counter.to_bytes(8, "little")
        counter += 1
        if pad:
            packet = packet + pads[pad]
        msg = header + ctr + seal(_NONCE_PREFIX + ctr, packet, None)
        nbytes += len(msg)
        out.append(msg)
    self._sealed(peer, kp, counter, nbytes, len(out), data_sent, now)
    return out


def seal_into(self: WireGuard, peer: Peer, packets: Any, now: float, buf: bytearray) -> list[int]:
    """:meth:`encrypt_batch` into one buffer: the messages one after the other in ``buf``
    (grown when too short; its length is not the messages' end), their sizes returned.

    The same messages, counters and timers as :meth:`encrypt_batch`, without a bytes object
    per message: a carrier that sends runs of messages in one call (UDP GSO) sends slices of
    ``buf``. Returns [] when there is no session (the packets are staged, as there).
    """
    kp = self._sending_keypair(peer, packets, now)
    if kp is None:
        return []
    count = len(packets)
    need = sum(map(len, packets)) + (MESSAGE_DATA_MIN_SIZE + 15) * count
    if len(buf) < need:
        buf.extend(bytes(need - len(buf)))
    seal = kp.send.encrypt_into
    pack_header = _DATA_HEADER.pack_into
    nonce_of = _NONCE.pack
    index = kp.remote_index
    mtu = self.mtu
    pads = _PADS
    counter = kp.send_counter
    sizes = []
    off = 0
    data_sent = False
    with memoryview(buf) as view:
        for packet in packets:
            n = len(packet)
            if n:
                data_sent = True
            pad = -n & 15
            if pad and n + pad > mtu:
                pad = mtu - n if n < mtu else (-(n % mtu)) & 15
            if pad:
                packet = packet + pads[pad]
                n += pad
            pack_header(buf, off, MESSAGE_DATA, index, counter)
            end = off + MESSAGE_DATA_MIN_SIZE + n
            seal(nonce_of(counter), packet, None, view[off + 16 : end])
            sizes.append(end - off)
            off = end
            counter += 1
    self._sealed(peer, kp, counter, off, count, data_sent, now)
    return sizes


def receive_datagram(
    self: WireGuard, data: bytes, addr: Address, now: float
) -> tuple[Peer, bytes] | None:
    """Feed one received UDP payload.

    Returns:
        ``(peer, ip_packet)`` for a transport message carrying an IP packet (padding
        removed; the caller checks that the inner source address belongs to ``peer``).
        None for everything else: handshake messages (answers are queued for
        :meth:`datagrams_to_send`), keepalives, and dropped packets (counted in
        :attr:`drops`).
    """
    if len(data) < 4:
        self.drops["short"] += 1
        return None
    kind = data[0]
    if kind == MESSAGE_DATA and data[1:4] == b"\x00\x00\x00":
        return self._receive_data(data, addr, now)
    if data[1:4] != b"\x00\x00\x00":
        self.drops["bad_type"] += 1
    elif kind == MESSAGE_INITIATION:
        self._receive_initiation(data, addr, now)
    elif kind == MESSAGE_RESPONSE:
        self._receive_response(data, addr, now)
    elif kind == MESSAGE_COOKIE_REPLY:
        self._receive_cookie_reply(data, now)
    else:
        self.drops["bad_type"] += 1
    return None


def _receive_data(
    self: WireGuard, data: bytes, addr: Address, now: float
) -> tuple[Peer, bytes] | None:
    if len(data) < MESSAGE_DATA_MIN_SIZE:
        self.drops["short"] += 1
        return None
    kp = self._keypairs.get(int.from_bytes(data[4:8], "little"))
    if kp is None:
        self.drops["unknown_index"] += 1
        return None
    if now - kp.created >= REJECT_AFTER_TIME:
        self.drops["expired"] += 1
        return None
    ctr = data[8:16]
    try:
        plain = kp.recv.decrypt(_NONCE_PREFIX + ctr, data[16:], None)
    except InvalidTag:
        self.drops["bad_tag"] += 1
        return None
    if not kp.replay.check(int.from_bytes(ctr, "little"), REJECT_AFTER_MESSAGES):
        self.drops["replay"] += 1
        return None
    peer = kp.peer
    self._data_received(peer, kp, addr, now, len(data), 1, 1 if plain else 0)
    if not plain:
        return None  # keepalive
    return self._inner(peer, plain)


def _inner(self: WireGuard, peer: Peer, plain: bytes) -> tuple[Peer, bytes] | None:
    """``(peer, IP packet)`` with WireGuard's padding cut off; None (counted) if malformed."""
    version = plain[0] >> 4
    n = len(plain)
    if version == 4:
        if n < 20:
            self.drops["bad_inner"] += 1
            return None
        size = (plain[2] << 8) | plain[3]
        if size < 20:  # a total length shorter than the header: nothing to hand on
            self.drops["bad_inner"] += 1
            return None
    elif version == 6:
        if n < 40:
            self.drops["bad_inner"] += 1
            return None
        size = 40 + ((plain[4] << 8) | plain[5])
    else:
        self.drops["bad_inner"] += 1
        return None
    if size > n:
        self.drops["bad_inner"] += 1
        return None
    if size < n:
        plain = plain[:size]
    return peer, plain


def _data_received(
    self: WireGuard,
    peer: Peer,
    kp: Keypair,
    addr: Address,
    now: float,
    nbytes: int,
    count: int,
    data: int,
) -> None:
    """``count`` transport messages of ``kp`` (``data`` of them not keepalives, ``nbytes`` in
    all) authenticated from ``addr``: counters, roaming and the receive timers, as
    wireguard-go runs them per message (running them once for a run of messages of one
    keypair gives the same state: ``now`` and ``addr`` are the same for all of them)."""
    peer.rx_bytes += nbytes
    peer.rx_packets += count
    if addr != peer.endpoint:
        peer.endpoint = addr
        self._events.append(EndpointChanged(peer.name, peer.public_key, addr))
    if kp is peer.next:
        self._rotate_next(peer, now)
    cur = peer.current
    if (
        cur is not None
        and cur.initiator
        and not peer.sent_last_minute_handshake
        and now - cur.created > LAST_MINUTE_AFTER
    ):
        peer.sent_last_minute_handshake = True
        self._send_initiation(peer, now, retry=False)
    floor = self.timer_floor  # each deadline set lowers it, inline: this runs per batch
    if peer.persistent_keepalive > 0:
        peer.persistent_at = at = now + peer.persistent_keepalive
        if at < floor:
            self.timer_floor = floor = at
    peer.new_handshake_at = None
    if data:
        if peer.keepalive_at is None:
            peer.keepalive_at = at = now + KEEPALIVE_TIMEOUT
            if at < floor:
                self.timer_floor = at
            if data > 1:
                peer.need_another_keepalive = True
        else:
            peer.need_another_keepalive = True


def receive_batch(
    self: WireGuard,
    datagrams: Iterable[bytes | memoryview],
    addr: Address,
    now: float,
    per_peer: dict[Peer, list[bytes]],
) -> int:
    """Feed UDP payloads received from ``addr``; IP packets go to ``per_peer[peer]``.

    The result is the same as :meth:`receive_datagram` on each datagram in order (the
    tests check it), in one call: a run of transport messages of one current keypair is
    opened in a tight loop and its counters and timers are updated once at the end of the
    run. Anything else (handshakes, a keypair's first message, drops) takes the per-datagram
    path. Returns how many datagrams were fed.

    A datagram may be a ``memoryview`` of the carrier's receive buffer (opened without a copy);
    it is only read during this call.
    """
    keypairs = self._keypairs
    drops = self.drops
    unpack = _DATA_HEADER.unpack_from
    nonce_of = _NONCE.pack
    run_kp: Keypair | None = None
    run_index = -1
    run_bytes = run_count = run_data = 0
    run_out: list[bytes] = []
    append = run_out.append
    count = 0
    for data in datagrams:
        count += 1
        n = len(data)
        if n >= MESSAGE_DATA_MIN_SIZE:
            kind, index, counter = unpack(data)
            if kind == MESSAGE_DATA:  # the type byte and three zero bytes
                if index == run_index:
                    kp: Keypair | None = run_kp
                else:
                    kp = keypairs.get(index)
                    if (
                        kp is not None
                        and now - kp.created < REJECT_AFTER_TIME
                        and kp is not kp.peer.next
                    ):
                        if run_kp is not None:
                            self._end_run(
                                run_kp, addr, now, run_bytes, run_count, run_data, run_out,
                                per_peer,
                            )  # fmt: skip
                        run_kp, run_index = kp, index
                        run_bytes = run_count = run_data = 0
                        run_out = []
                        append = run_out.append
                    else:
                        kp = None
                if kp is not None:
                    try:
                        plain = kp.recv.decrypt(nonce_of(counter), data[16:], None)
                    except InvalidTag:
                        drops["bad_tag"] += 1
                        continue
                    # the replay window (tunnelmesh.proto.replay): the next counter inside the
                    # highest one's block is the common case, checked here; the rest by check()
                    replay = kp.replay
                    last = replay.last
                    if last < counter < REJECT_AFTER_MESSAGES and (counter ^ last) < _BLOCK_BITS:
                        replay.last = counter
                        replay.blocks[(counter >> _BLOCK_BITS_LOG) & _BLOCK_MASK] |= 1 << (
                            counter & _BIT_MASK
                        )
                    elif not replay.check(counter, REJECT_AFTER_MESSAGES):
                        drops["replay"] += 1
                        continue
                    run_bytes += n
                    run_count += 1
                    if plain:
                        run_data += 1
                        # an IPv4 packet cut to its total length (_inner, inline); else _inner
                        size = len(plain)
                        if plain[0] >> 4 == 4 and size >= 20:
                            total = plain[2] << 8 | plain[3]
                            if 20 <= total <= size:
                                append(plain if total == size else plain[:total])
                            else:
                                drops["bad_inner"] += 1
                        else:
                            inner = self._inner(kp.peer, plain)
                            if inner is not None:
                                append(inner[1])
                    continue
        # the per-datagram path, after the run so far (its effects come first)
        if run_kp is not None:
            self._end_run(run_kp, addr, now, run_bytes, run_count, run_data, run_out, per_peer)
            run_kp = None
            run_index = -1
        result = self.receive_datagram(bytes(data), addr, now)
        if result is not None:
            per_peer.setdefault(result[0], []).append(result[1])
    if run_kp is not None:
        self._end_run(run_kp, addr, now, run_bytes, run_count, run_data, run_out, per_peer)
    return count


def _end_run(
    self: WireGuard,
    kp: Keypair,
    addr: Address,
    now: float,
    nbytes: int,
    count: int,
    data: int,
    packets: list[bytes],
    per_peer: dict[Peer, list[bytes]],
) -> None:
    if not count:
        return
    peer = kp.peer
    self._data_received(peer, kp, addr, now, nbytes, count, data)
    if packets:
        lst = per_peer.get(peer)
        if lst is None:
            per_peer[peer] = packets
        else:
            lst.extend(packets)


def _send_keepalive(self: WireGuard, peer: Peer, now: float) -> None:
    if not peer.staged:
        peer.staged.append(b"")
    self._send_staged(peer, now)


def _send_staged(self: WireGuard, peer: Peer, now: float) -> None:
    if not peer.staged:
        return
    if not self.has_session(peer, now):
        self._send_initiation(peer, now, retry=False)
        return
    if peer.endpoint is None:
        self.drops["no_endpoint"] += len(peer.staged)
        peer.staged.clear()
        return
    packets = list(peer.staged)
    peer.staged.clear()
    endpoint = peer.endpoint
    for msg in self.encrypt_batch(peer, packets, now):
        self._out.append((msg, endpoint))
