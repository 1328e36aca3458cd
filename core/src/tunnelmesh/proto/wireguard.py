"""A sans-IO WireGuard engine: byte for byte the WireGuard protocol, without sockets or clocks.

Theory of operation
-------------------
One :class:`WireGuard` instance is one WireGuard interface: a static X25519 key, a set of
:class:`Peer` objects (found by public key) and a table of local session indices. It never reads
the clock and never touches a socket: every method takes ``now`` (monotonic seconds, e.g.
``loop.time()``) and returns bytes, and the driver moves the bytes. Wall-clock time is needed
once, for the TAI64N timestamp of initiations: it is ``now + wall_offset`` (the driver sets
``wall_offset = time.time() - loop.time()``).

Driver loop (aioquic style)::

    result = engine.receive_datagram(data, addr, now)   # (peer, ip_packet) or None
    datagrams = engine.encrypt(peer, ip_packet, now)    # a transport message, or None (staged)
    for data, addr in engine.datagrams_to_send(): ...   # handshakes, keepalives, flushed stage
    while (event := engine.next_event()) is not None: ...
    deadline = engine.get_timer(); ...; engine.handle_timer(now)

Bad input never raises: a packet that is short, forged, replayed, expired or for an unknown
index is dropped and counted in :attr:`WireGuard.drops` under a reason
(``"short"``, ``"bad_mac1"``, ``"bad_tag"``, ``"replay"``, ...).

Sessions (keypairs) rotate as in wireguard-go: each peer has ``previous``, ``current`` and
``next``. The initiator's new keypair becomes ``current`` at once; the responder's waits in
``next`` until the first data message under it arrives (which proves the initiator has it).

Timers (whitepaper section 6, wireguard-go ``timers.go``); each is one deadline per peer:

==================  ==========================================  ===================================
timer               armed when                                  on expiry
==================  ==========================================  ===================================
retransmit          an initiation is sent (REKEY_TIMEOUT +      resend the initiation; after
                    jitter); cleared when a handshake completes MAX_TIMER_HANDSHAKES attempts give
                                                                up: drop staged packets,
                                                                HandshakeTimedOut
send keepalive      a data packet is received and the timer     send a keepalive (empty message)
                    is idle (KEEPALIVE_TIMEOUT); cleared by any
                    authenticated packet sent
new handshake       a data packet is sent and the timer is      initiate a handshake (the peer
                    idle (KEEPALIVE + REKEY_TIMEOUT + jitter);  went quiet)
                    cleared by any authenticated packet received
zero keys           a session is derived (3 x REJECT_AFTER_TIME) erase every key, KeysZeroed
persistent          any authenticated packet is sent or          send a keepalive
keepalive           received, if the peer has an interval
==================  ==========================================  ===================================

Rekeying: after sending, if ``current`` was made by us as initiator more than REKEY_AFTER_TIME
ago (or after REKEY_AFTER_MESSAGES), initiate; after receiving, if that age passes
REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT, initiate once. A keypair never sends or
receives after REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES. Initiations are sent at most once per
REKEY_TIMEOUT; a responder drops an initiation whose TAI64N timestamp is not newer than the last
one from that peer (replay) or that comes within 20 ms of the previous one (flood).

Under load (more than ``under_load_threshold`` handshake messages a second, and for a second
after) a handshake message needs a valid mac2 (else it gets a cookie reply), and then passes its
source's token bucket (:class:`~tunnelmesh.proto.ratelimit.HandshakeRateLimiter`: 20 a second,
5 at once, per source IP or IPv6 /64) before any Curve25519 work, as in wireguard-go; the rest
is dropped as ``"ratelimited"``.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnelmesh.proto import noise
from tunnelmesh.proto.cookie import CookieChecker, CookieGenerator
from tunnelmesh.proto.events import (
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeTimedOut,
    KeysZeroed,
)
from tunnelmesh.proto.noise import Handshake, HandshakeState, StaticIdentity
from tunnelmesh.proto.ratelimit import HandshakeRateLimiter
from tunnelmesh.proto.replay import ReplayWindow
from tunnelmesh.proto.wgcrypto import CryptoError, dh, tai64n
from tunnelmesh.proto.wgmessages import (
    HANDSHAKE_INITIATION_RATE,
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_DATA,
    MESSAGE_DATA_MIN_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    UNDER_LOAD_AFTER_TIME,
)

__all__ = ["Keypair", "Peer", "WireGuard"]

Address = Any
"""An opaque endpoint, usually ``(host, port)`` as asyncio's datagram protocols give it."""

_NONCE_PREFIX = b"\x00\x00\x00\x00"
_DATA_TYPE = bytes((MESSAGE_DATA, 0, 0, 0))
_PADS = [bytes(i) for i in range(16)]
_LAST_MINUTE_AFTER = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
_NEW_HANDSHAKE_AFTER = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
_ZERO_KEYS_AFTER = REJECT_AFTER_TIME * 3


class Keypair:
    """The keys of one session, in one direction each, with their counters."""

    __slots__ = (
        "created",
        "header",
        "initiator",
        "local_index",
        "peer",
        "recv",
        "remote_index",
        "replay",
        "send",
        "send_counter",
    )

    def __init__(
        self,
        peer: Peer,
        send_key: bytes,
        recv_key: bytes,
        initiator: bool,
        local_index: int,
        remote_index: int,
        now: float,
    ) -> None:
        self.peer = peer
        self.send = ChaCha20Poly1305(send_key)
        self.recv = ChaCha20Poly1305(recv_key)
        self.initiator = initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = now
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.header = _DATA_TYPE + remote_index.to_bytes(4, "little")


class Peer:
    """One remote WireGuard peer: its key, endpoint, sessions and timers.

    Attributes:
        name: a label for events and logs (defaults to the hex of the public key).
        public_key: the peer's static X25519 public key.
        endpoint: where to send (None until configured or learned from a packet).
        persistent_keepalive: seconds between keepalives sent regardless of traffic (0 = off).
        rx_bytes / tx_bytes: transport message bytes received (authenticated) and sent.
        rx_packets / tx_packets: transport data messages received (authenticated) and sent.
        handshakes: handshakes completed with this peer.
        last_handshake: ``now`` of the last completed handshake, or None.
    """

    __slots__ = (
        "cookie",
        "current",
        "endpoint",
        "handshake",
        "handshake_attempts",
        "handshakes",
        "keepalive_at",
        "last_handshake",
        "last_sent_handshake",
        "name",
        "need_another_keepalive",
        "new_handshake_at",
        "next",
        "persistent_at",
        "persistent_keepalive",
        "previous",
        "public_key",
        "retransmit_at",
        "rx_bytes",
        "rx_packets",
        "sent_last_minute_handshake",
        "staged",
        "tx_bytes",
        "tx_packets",
        "zero_keys_at",
    )

    def __init__(
        self,
        name: str,
        public_key: bytes,
        handshake: Handshake,
        endpoint: Address | None,
        persistent_keepalive: float,
    ) -> None:
        self.name = name
        self.public_key = public_key
        self.handshake = handshake
        self.cookie = CookieGenerator(public_key)
        self.endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.retransmit_at: float | None = None
        self.keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.zero_keys_at: float | None = None
        self.persistent_at: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.last_sent_handshake: float | None = None
        self.last_handshake: float | None = None
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.tx_packets = 0
        self.handshakes = 0

    def __repr__(self) -> str:
        return f"<Peer {self.name} endpoint={self.endpoint!r}>"

    def timers(self) -> list[float]:
        """Every armed deadline of this peer."""
        return [
            t
            for t in (
                self.retransmit_at,
                self.keepalive_at,
                self.new_handshake_at,
                self.zero_keys_at,
                self.persistent_at,
            )
            if t is not None
        ]


class WireGuard:
    """One WireGuard interface as a pure state machine. See the module docstring.

    Args:
        private_key: our static X25519 private key (32 bytes).
        rng: source of random bytes (indices, ephemeral keys, cookie secrets, jitter).
        wall_offset: add to ``now`` to get Unix time (for TAI64N timestamps).
        mtu: the tunnel MTU, which limits padding as wireguard-go does.
        under_load_threshold: handshake messages per second above which mac2 is demanded.
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
        mtu: int = 1420,
        under_load_threshold: int = 128,
    ) -> None:
        self.identity = StaticIdentity(private_key)
        self.public_key = self.identity.public
        self.rng = rng
        self.wall_offset = wall_offset
        self.mtu = mtu
        self.under_load_threshold = under_load_threshold
        self.force_under_load = False
        self.rekey_after_time = REKEY_AFTER_TIME
        """Seconds after which an initiator rekeys (tests shorten it to watch a rekey)."""
        self.peers: dict[bytes, Peer] = {}
        self.drops: defaultdict[str, int] = defaultdict(int)
        self._by_name: dict[str, Peer] = {}
        self._static_static: dict[bytes, bytes] = {}
        self._keypairs: dict[int, Keypair] = {}
        self._handshakes: dict[int, Peer] = {}
        self._checker = CookieChecker(self.public_key, rng)
        self.handshake_limiter = HandshakeRateLimiter()
        """Per-source pace of handshake messages, applied only under load."""
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._load_window = 0.0
        self._load_count = 0
        self._under_load_until = -1.0

    # --- configuration ------------------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        *,
        name: str | None = None,
        endpoint: Address | None = None,
        preshared_key: bytes = bytes(32),
        persistent_keepalive: float = 0.0,
    ) -> Peer:
        """Add a peer, or update the endpoint and keepalive of an existing one."""
        peer = self.peers.get(public_key)
        if peer is not None:
            if endpoint is not None:
                peer.endpoint = endpoint
            peer.persistent_keepalive = persistent_keepalive
            return peer
        try:
            ss = dh(self.identity.private, public_key)
        except CryptoError:
            ss = bytes(32)
        hs = Handshake(
            remote_static=public_key, precomputed_static_static=ss, preshared_key=preshared_key
        )
        peer = Peer(name or public_key.hex()[:16], public_key, hs, endpoint, persistent_keepalive)
        self.peers[public_key] = peer
        self._by_name[peer.name] = peer
        self._static_static[public_key] = ss
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        """Forget a peer and every session with it."""
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self._by_name.pop(peer.name, None)
        self._static_static.pop(public_key, None)
        self._zero_keys(peer)

    def peer_by_name(self, name: str) -> Peer | None:
        """The peer called ``name``, or None."""
        return self._by_name.get(name)

    # --- driver API -----------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Take the queued outgoing datagrams (handshakes, keepalives, flushed packets)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        """Take the next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest deadline at which :meth:`handle_timer` must be called, or None."""
        earliest: float | None = None
        for peer in self.peers.values():
            for t in (
                peer.retransmit_at,
                peer.keepalive_at,
                peer.new_handshake_at,
                peer.zero_keys_at,
                peer.persistent_at,
            ):
                if t is not None and (earliest is None or t < earliest):
                    earliest = t
        return earliest

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        for peer in list(self.peers.values()):
            if peer.retransmit_at is not None and peer.retransmit_at <= now:
                peer.retransmit_at = None
                self._expired_retransmit(peer, now)
            if peer.keepalive_at is not None and peer.keepalive_at <= now:
                peer.keepalive_at = None
                self._send_keepalive(peer, now)
                if peer.need_another_keepalive:
                    peer.need_another_keepalive = False
                    peer.keepalive_at = now + KEEPALIVE_TIMEOUT
            if peer.new_handshake_at is not None and peer.new_handshake_at <= now:
                peer.new_handshake_at = None
                self._send_initiation(peer, now, retry=False)
            if peer.zero_keys_at is not None and peer.zero_keys_at <= now:
                peer.zero_keys_at = None
                self._zero_keys(peer)
                self._events.append(KeysZeroed(peer.name, peer.public_key))
            if peer.persistent_at is not None and peer.persistent_at <= now:
                peer.persistent_at = None
                if peer.persistent_keepalive > 0:
                    self._send_keepalive(peer, now)

    def initiate(self, peer: Peer, now: float) -> None:
        """Start a handshake with ``peer`` now (rate-limited to one per REKEY_TIMEOUT)."""
        self._send_initiation(peer, now, retry=False)

    def send_keepalive(self, peer: Peer, now: float) -> None:
        """Queue a keepalive (or a handshake when there is no session)."""
        self._send_keepalive(peer, now)

    def has_session(self, peer: Peer, now: float) -> bool:
        """True when ``peer`` has a session that may send now."""
        kp = peer.current
        return (
            kp is not None
            and kp.send_counter < REJECT_AFTER_MESSAGES
            and now - kp.created < REJECT_AFTER_TIME
        )

    # --- data path ------------------------------------------------------------------------------

    def encrypt(self, peer: Peer, packet: bytes, now: float) -> bytes | None:
        """Seal one IP packet for ``peer`` as a transport message.

        Returns None when there is no usable session: the packet is staged (up to 128) and a
        handshake starts; flushed messages then come out of :meth:`datagrams_to_send`.
        """
        out = self.encrypt_batch(peer, (packet,), now)
        return out[0] if out else None

    def encrypt_batch(self, peer: Peer, packets: Any, now: float) -> list[bytes]:
        """Seal several IP packets for one peer; the fast path (one timer update per batch)."""
        kp = peer.current
        if (
            kp is None
            or kp.send_counter + len(packets) >= REJECT_AFTER_MESSAGES
            or now - kp.created >= REJECT_AFTER_TIME
        ):
            peer.staged.extend(packets)
            self._send_initiation(peer, now, retry=False)
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
        kp.send_counter = counter
        peer.tx_bytes += nbytes
        peer.tx_packets += len(out)
        # timersAnyAuthenticatedPacketTraversal / Sent / DataSent
        if peer.persistent_keepalive > 0:
            peer.persistent_at = now + peer.persistent_keepalive
        peer.keepalive_at = None
        if data_sent and peer.new_handshake_at is None:
            peer.new_handshake_at = now + _NEW_HANDSHAKE_AFTER + self._jitter()
        # keepKeyFreshSending
        if counter > REKEY_AFTER_MESSAGES or (
            kp.initiator and now - kp.created > self.rekey_after_time
        ):
            self._send_initiation(peer, now, retry=False)
        return out

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> tuple[Peer, bytes] | None:
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

    def _receive_data(self, data: bytes, addr: Address, now: float) -> tuple[Peer, bytes] | None:
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

    def _inner(self, peer: Peer, plain: bytes) -> tuple[Peer, bytes] | None:
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
        self, peer: Peer, kp: Keypair, addr: Address, now: float, nbytes: int, count: int, data: int
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
            and now - cur.created > _LAST_MINUTE_AFTER
        ):
            peer.sent_last_minute_handshake = True
            self._send_initiation(peer, now, retry=False)
        if peer.persistent_keepalive > 0:
            peer.persistent_at = now + peer.persistent_keepalive
        peer.new_handshake_at = None
        if data:
            if peer.keepalive_at is None:
                peer.keepalive_at = now + KEEPALIVE_TIMEOUT
                if data > 1:
                    peer.need_another_keepalive = True
            else:
                peer.need_another_keepalive = True

    def receive_batch(
        self,
        datagrams: Iterable[bytes],
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
        """
        keypairs = self._keypairs
        drops = self.drops
        run_kp: Keypair | None = None
        run_index = b""
        run_bytes = run_count = run_data = 0
        run_out: list[bytes] = []
        count = 0
        for data in datagrams:
            count += 1
            n = len(data)
            if n >= MESSAGE_DATA_MIN_SIZE and data[0] == MESSAGE_DATA and data[1:4] == b"\0\0\0":
                index = data[4:8]
                if run_kp is not None and index == run_index:
                    kp: Keypair | None = run_kp
                else:
                    kp = keypairs.get(int.from_bytes(index, "little"))
                    if (
                        kp is not None
                        and now - kp.created < REJECT_AFTER_TIME
                        and kp is not kp.peer.next
                    ):
                        if run_kp is not None:
                            self._end_run(
                                run_kp, addr, now, run_bytes, run_count, run_data, run_out, per_peer
                            )
                        run_kp, run_index = kp, index
                        run_bytes = run_count = run_data = 0
                        run_out = []
                    else:
                        kp = None
                if kp is not None:
                    ctr = data[8:16]
                    try:
                        plain = kp.recv.decrypt(_NONCE_PREFIX + ctr, data[16:], None)
                    except InvalidTag:
                        drops["bad_tag"] += 1
                        continue
                    if not kp.replay.check(int.from_bytes(ctr, "little"), REJECT_AFTER_MESSAGES):
                        drops["replay"] += 1
                        continue
                    run_bytes += n
                    run_count += 1
                    if plain:
                        run_data += 1
                        inner = self._inner(kp.peer, plain)
                        if inner is not None:
                            run_out.append(inner[1])
                    continue
            # the per-datagram path, after the run so far (its effects come first)
            if run_kp is not None:
                self._end_run(run_kp, addr, now, run_bytes, run_count, run_data, run_out, per_peer)
                run_kp = None
            result = self.receive_datagram(data, addr, now)
            if result is not None:
                per_peer.setdefault(result[0], []).append(result[1])
        if run_kp is not None:
            self._end_run(run_kp, addr, now, run_bytes, run_count, run_data, run_out, per_peer)
        return count

    def _end_run(
        self,
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

    # --- handshake messages ----------------------------------------------------------------------

    def _under_load(self, now: float) -> bool:
        if now - self._load_window >= 1.0:
            self._load_window = now
            self._load_count = 0
        self._load_count += 1
        if self._load_count > self.under_load_threshold:
            self._under_load_until = now + UNDER_LOAD_AFTER_TIME
        return self.force_under_load or now < self._under_load_until

    def _check_macs(self, data: bytes, sender_index: int, addr: Address, now: float) -> bool:
        """mac1 always; under load mac2 too (answering a cookie reply when it is missing), then
        the source's handshake rate (:mod:`tunnelmesh.proto.ratelimit`), as wireguard-go does."""
        if not self._checker.check_mac1(data):
            self.drops["bad_mac1"] += 1
            return False
        if self._under_load(now):
            if not self._checker.check_mac2(data, addr, now):
                self.drops["cookie_sent"] += 1
                self._out.append((self._checker.create_reply(data, sender_index, addr, now), addr))
                return False
            if not self.handshake_limiter.allow(addr, now):
                self.drops["ratelimited"] += 1
                return False
        return True

    def _receive_initiation(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) != MESSAGE_INITIATION_SIZE:
            self.drops["short"] += 1
            return
        if not self._check_macs(data, int.from_bytes(data[4:8], "little"), addr, now):
            return
        consumed = noise.consume_initiation(self.identity, data, self._static_static)
        if consumed is None:
            self.drops["bad_handshake"] += 1
            return
        peer = self.peers[consumed.remote_static]
        hs = peer.handshake
        if consumed.timestamp <= hs.last_timestamp:
            self.drops["replayed_initiation"] += 1
            return
        last = hs.last_initiation_consumption
        if last is not None and now - last <= HANDSHAKE_INITIATION_RATE:
            self.drops["initiation_flood"] += 1
            return
        self._forget_handshake_index(peer)
        hs.hash = consumed.hash
        hs.chain_key = consumed.chain_key
        hs.remote_ephemeral = consumed.remote_ephemeral
        hs.remote_index = consumed.sender_index
        hs.last_timestamp = consumed.timestamp
        hs.last_initiation_consumption = now
        hs.state = HandshakeState.INITIATION_CONSUMED
        self._authenticated_from(peer, addr, now)
        index = self._new_index()
        response = noise.create_response(hs, index, self.rng(32))
        if response is None:
            self.drops["bad_handshake"] += 1
            hs.zero()
            return
        self._handshakes[index] = peer
        keys = noise.derive_keys(hs)
        assert keys is not None
        self._begin_session(peer, keys, now)
        peer.keepalive_at = None
        self._out.append((peer.cookie.add_macs(response, now), peer.endpoint))
        peer.tx_bytes += len(response)

    def _receive_response(self, data: bytes, addr: Address, now: float) -> None:
        if len(data) != MESSAGE_RESPONSE_SIZE:
            self.drops["short"] += 1
            return
        if not self._check_macs(data, int.from_bytes(data[4:8], "little"), addr, now):
            return
        peer = self._handshakes.get(int.from_bytes(data[8:12], "little"))
        if peer is None:
            self.drops["unknown_index"] += 1
            return
        hs = peer.handshake
        if not noise.consume_response(self.identity, hs, data):
            self.drops["bad_handshake"] += 1
            return
        self._authenticated_from(peer, addr, now)
        keys = noise.derive_keys(hs)
        assert keys is not None
        self._begin_session(peer, keys, now)
        self._handshake_complete(peer, now)
        self._events.append(HandshakeCompleted(peer.name, peer.public_key, True))
        self._send_keepalive(peer, now)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        if len(data) != MESSAGE_COOKIE_REPLY_SIZE:
            self.drops["short"] += 1
            return
        index = int.from_bytes(data[4:8], "little")
        peer = self._handshakes.get(index)
        if peer is None:
            kp = self._keypairs.get(index)
            peer = kp.peer if kp is not None else None
        if peer is None:
            self.drops["unknown_index"] += 1
            return
        if not peer.cookie.consume_reply(data, now):
            self.drops["bad_cookie"] += 1

    # --- sessions ----------------------------------------------------------------------------------

    def _authenticated_from(self, peer: Peer, addr: Address, now: float) -> None:
        """A handshake message authenticated ``peer`` at ``addr``: roam, run the timers."""
        if addr != peer.endpoint:
            peer.endpoint = addr
            self._events.append(EndpointChanged(peer.name, peer.public_key, addr))
        if peer.persistent_keepalive > 0:
            peer.persistent_at = now + peer.persistent_keepalive
        peer.new_handshake_at = None

    def _begin_session(self, peer: Peer, keys: tuple[bytes, bytes, bool], now: float) -> None:
        send, recv, initiator = keys
        hs = peer.handshake
        index = hs.local_index
        self._handshakes.pop(index, None)
        kp = Keypair(peer, send, recv, initiator, index, hs.remote_index, now)
        hs.local_index = 0
        self._keypairs[index] = kp
        if initiator:
            if peer.next is not None:
                self._drop_keypair(peer.previous)
                peer.previous = peer.next
                peer.next = None
                self._drop_keypair(peer.current)
            else:
                self._drop_keypair(peer.previous)
                peer.previous = peer.current
            peer.current = kp
        else:
            self._drop_keypair(peer.next)
            peer.next = kp
            self._drop_keypair(peer.previous)
            peer.previous = None
        peer.zero_keys_at = now + _ZERO_KEYS_AFTER

    def _rotate_next(self, peer: Peer, now: float) -> None:
        self._drop_keypair(peer.previous)
        peer.previous = peer.current
        peer.current = peer.next
        peer.next = None
        self._handshake_complete(peer, now)
        self._events.append(HandshakeCompleted(peer.name, peer.public_key, False))
        self._send_staged(peer, now)

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        peer.retransmit_at = None
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.last_handshake = now
        peer.handshakes += 1

    def _drop_keypair(self, kp: Keypair | None) -> None:
        if kp is not None:
            self._keypairs.pop(kp.local_index, None)

    def _forget_handshake_index(self, peer: Peer) -> None:
        index = peer.handshake.local_index
        if index and self._handshakes.get(index) is peer:
            del self._handshakes[index]
        peer.handshake.local_index = 0

    def _zero_keys(self, peer: Peer) -> None:
        for kp in (peer.previous, peer.current, peer.next):
            self._drop_keypair(kp)
        peer.previous = peer.current = peer.next = None
        self._forget_handshake_index(peer)
        peer.handshake.zero()

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self.rng(4), "little")
            if index and index not in self._keypairs and index not in self._handshakes:
                return index

    def _jitter(self) -> float:
        return int.from_bytes(self.rng(2), "little") / 65536 * 0.333

    # --- sending control messages ---------------------------------------------------------------

    def _send_initiation(self, peer: Peer, now: float, retry: bool) -> None:
        if not retry:
            peer.handshake_attempts = 0
        last = peer.last_sent_handshake
        if last is not None and now - last < REKEY_TIMEOUT:
            return
        if peer.endpoint is None:
            self.drops["no_endpoint"] += 1
            return
        peer.last_sent_handshake = now
        self._forget_handshake_index(peer)
        index = self._new_index()
        msg = noise.create_initiation(
            self.identity, peer.handshake, index, tai64n(now + self.wall_offset), self.rng(32)
        )
        if msg is None:
            self.drops["bad_handshake"] += 1
            return
        self._handshakes[index] = peer
        self._out.append((peer.cookie.add_macs(msg, now), peer.endpoint))
        peer.tx_bytes += len(msg)
        if peer.persistent_keepalive > 0:
            peer.persistent_at = now + peer.persistent_keepalive
        peer.keepalive_at = None
        peer.retransmit_at = now + REKEY_TIMEOUT + self._jitter()

    def _expired_retransmit(self, peer: Peer, now: float) -> None:
        if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
            peer.keepalive_at = None
            peer.staged.clear()
            if peer.zero_keys_at is None:
                peer.zero_keys_at = now + _ZERO_KEYS_AFTER
            self._events.append(HandshakeTimedOut(peer.name, peer.public_key))
            return
        peer.handshake_attempts += 1
        self._send_initiation(peer, now, retry=True)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)

    def _send_staged(self, peer: Peer, now: float) -> None:
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
