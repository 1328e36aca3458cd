"""The WireGuard engine's handshake: handshake messages in and out, and the sessions (keypairs)
they make (wireguard-go ``noise-protocol.go`` and the handshake half of ``receive.go`` and
``send.go``; the Noise messages themselves are :mod:`tunnelmesh.proto.noise`).

A received initiation, response or cookie reply is checked for its size and mac1; under load
(more than ``under_load_threshold`` handshake messages a second, and for a second after) it
also needs a valid mac2 (else it gets a cookie reply) and then passes its source's token bucket
(:class:`~tunnelmesh.proto.ratelimit.HandshakeRateLimiter`) before any Curve25519 work, as in
wireguard-go. A completed handshake begins a session in the peer's keypair slots (see
:mod:`tunnelmesh.proto.wireguard` for the rotation).

Its functions are methods of :class:`~tunnelmesh.proto.wireguard.WireGuard`, bound there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh.proto import noise
from tunnelmesh.proto.events import EndpointChanged, HandshakeCompleted
from tunnelmesh.proto.noise import HandshakeState
from tunnelmesh.proto.wgcrypto import tai64n
from tunnelmesh.proto.wgmessages import (
    HANDSHAKE_INITIATION_RATE,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    REKEY_TIMEOUT,
    UNDER_LOAD_AFTER_TIME,
)
from tunnelmesh.proto.wgpeer import Address, Keypair, Peer
from tunnelmesh.proto.wgtimers import ZERO_KEYS_AFTER

if TYPE_CHECKING:
    from tunnelmesh.proto.wireguard import WireGuard


def _under_load(self: WireGuard, now: float) -> bool:
    if now - self._load_window >= 1.0:
        self._load_window = now
        self._load_count = 0
    self._load_count += 1
    if self._load_count > self.under_load_threshold:
        self._under_load_until = now + UNDER_LOAD_AFTER_TIME
    return self.force_under_load or now < self._under_load_until


def _check_macs(self: WireGuard, data: bytes, sender_index: int, addr: Address, now: float) -> bool:
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


def _receive_initiation(self: WireGuard, data: bytes, addr: Address, now: float) -> None:
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


def _receive_response(self: WireGuard, data: bytes, addr: Address, now: float) -> None:
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


def _receive_cookie_reply(self: WireGuard, data: bytes, now: float) -> None:
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


def _send_initiation(self: WireGuard, peer: Peer, now: float, retry: bool) -> None:
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
        peer.persistent_at = self._deadline(now + peer.persistent_keepalive)
    peer.keepalive_at = None
    peer.retransmit_at = self._deadline(now + REKEY_TIMEOUT + self._jitter())


def _authenticated_from(self: WireGuard, peer: Peer, addr: Address, now: float) -> None:
    """A handshake message authenticated ``peer`` at ``addr``: roam, run the timers."""
    if addr != peer.endpoint:
        peer.endpoint = addr
        self._events.append(EndpointChanged(peer.name, peer.public_key, addr))
    if peer.persistent_keepalive > 0:
        peer.persistent_at = self._deadline(now + peer.persistent_keepalive)
    peer.new_handshake_at = None


def _begin_session(
    self: WireGuard, peer: Peer, keys: tuple[bytes, bytes, bool], now: float
) -> None:
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
    peer.zero_keys_at = self._deadline(now + ZERO_KEYS_AFTER)


def _rotate_next(self: WireGuard, peer: Peer, now: float) -> None:
    self._drop_keypair(peer.previous)
    peer.previous = peer.current
    peer.current = peer.next
    peer.next = None
    self._handshake_complete(peer, now)
    self._events.append(HandshakeCompleted(peer.name, peer.public_key, False))
    self._send_staged(peer, now)


def _handshake_complete(self: WireGuard, peer: Peer, now: float) -> None:
    peer.retransmit_at = None
    peer.handshake_attempts = 0
    peer.sent_last_minute_handshake = False
    peer.last_handshake = now
    peer.handshakes += 1


def _drop_keypair(self: WireGuard, kp: Keypair | None) -> None:
    if kp is not None:
        self._keypairs.pop(kp.local_index, None)


def _forget_handshake_index(self: WireGuard, peer: Peer) -> None:
    index = peer.handshake.local_index
    if index and self._handshakes.get(index) is peer:
        del self._handshakes[index]
    peer.handshake.local_index = 0


def _zero_keys(self: WireGuard, peer: Peer) -> None:
    for kp in (peer.previous, peer.current, peer.next):
        self._drop_keypair(kp)
    peer.previous = peer.current = peer.next = None
    self._forget_handshake_index(peer)
    peer.handshake.zero()


def _new_index(self: WireGuard) -> int:
    while True:
        index = int.from_bytes(self.rng(4), "little")
        if index and index not in self._keypairs and index not in self._handshakes:
            return index
