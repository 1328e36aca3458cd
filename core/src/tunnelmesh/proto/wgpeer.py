"""What the WireGuard engine keeps per peer and per session (wireguard-go ``peer.go`` and
``keypair.go``).

A :class:`Peer` holds a remote peer's static key and endpoint, its handshake state, its three
keypair slots (``previous``, ``current``, ``next``), the packets staged while no session is up,
one deadline per timer (:mod:`tunnelmesh.proto.wgtimers`) and its counters. A :class:`Keypair`
is one session's two AEAD keys and counters. Both are plain state: the engine
(:class:`~tunnelmesh.proto.wireguard.WireGuard`) changes them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnelmesh.proto.cookie import CookieGenerator
from tunnelmesh.proto.noise import Handshake
from tunnelmesh.proto.replay import ReplayWindow
from tunnelmesh.proto.wgmessages import MAX_STAGED_PACKETS, MESSAGE_DATA

__all__ = ["Address", "Keypair", "Peer"]

Address = Any
"""An opaque endpoint, usually ``(host, port)`` as asyncio's datagram protocols give it."""

_DATA_TYPE = bytes((MESSAGE_DATA, 0, 0, 0))


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
