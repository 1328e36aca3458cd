"""Sans-IO protocol cores: they take bytes and ``now`` and return bytes and events.

Nothing in this package imports asyncio or socket or reads the clock (STYLE.md section 4).

* :mod:`tunnelmesh.proto.wireguard` -- the WireGuard engine (:class:`WireGuard`), byte-exact
  with wireguard-go and the Linux kernel; its parts by what they do:
  :mod:`~tunnelmesh.proto.wgpeer` (peer and keypair state), :mod:`~tunnelmesh.proto.wghandshake`
  (handshake messages and sessions), :mod:`~tunnelmesh.proto.wgdata` (the data path),
  :mod:`~tunnelmesh.proto.wgtimers` (timers);
* :mod:`tunnelmesh.proto.noise` -- the Noise_IKpsk2 handshake messages;
* :mod:`tunnelmesh.proto.cookie` -- mac1/mac2 and cookie replies;
* :mod:`tunnelmesh.proto.ratelimit` -- the per-source handshake rate limit under load;
* :mod:`tunnelmesh.proto.replay` -- the RFC 6479 anti-replay window;
* :mod:`tunnelmesh.proto.wgcrypto` -- HASH, MAC, HMAC, KDF, AEAD, XAEAD, DH, TAI64N, and the
  ed25519 to X25519 key conversion;
* :mod:`tunnelmesh.proto.events` -- the events engines emit.
"""

from __future__ import annotations

from tunnelmesh.proto.events import (
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeTimedOut,
    KeysZeroed,
)
from tunnelmesh.proto.replay import ReplayWindow
from tunnelmesh.proto.wireguard import Keypair, Peer, WireGuard

__all__ = [
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "HandshakeTimedOut",
    "Keypair",
    "KeysZeroed",
    "Peer",
    "ReplayWindow",
    "WireGuard",
]
