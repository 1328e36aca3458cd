"""The Noise_IKpsk2 handshake of WireGuard, message by message (whitepaper section 5.4.2-5.4.4).

Four pure functions build and consume the two handshake messages; they take every secret and
random value as an argument and return new state, so they are tested against fixed inputs and
against wireguard-go. :mod:`tunnelmesh.proto.wireguard` wires them to peers, indices and timers.

The MAC fields of a message are left zero here; :mod:`tunnelmesh.proto.cookie` fills and checks
them, because they depend on cookie state rather than on the handshake.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tunnelmesh.proto.wgcrypto import (
    INITIAL_CHAIN_KEY,
    INITIAL_HASH,
    CryptoError,
    aead_open,
    aead_seal,
    dh,
    hash_,
    kdf1,
    kdf2,
    kdf3,
)
from tunnelmesh.proto.wgmessages import (
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
)

__all__ = [
    "ConsumedInitiation",
    "Handshake",
    "HandshakeState",
    "StaticIdentity",
    "consume_initiation",
    "consume_response",
    "create_initiation",
    "create_response",
    "derive_keys",
]

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
ZERO32 = bytes(32)


class HandshakeState(enum.Enum):
    """Where a peer's handshake is (wireguard-go ``handshakeState``)."""

    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


class StaticIdentity:
    """A node's static X25519 key pair, with the precomputed MAC1 and cookie keys."""

    __slots__ = ("private", "private_bytes", "public")

    def __init__(self, private_key: bytes) -> None:
        self.private_bytes = private_key
        self.private = X25519PrivateKey.from_private_bytes(private_key)
        self.public = self.private.public_key().public_bytes(_RAW, _RAW_PUB)


@dataclass(slots=True)
class Handshake:
    """The handshake state a peer keeps between messages.

    ``remote_static`` and ``preshared_key`` are fixed at peer creation;
    ``precomputed_static_static`` is ``DH(S_priv, S_pub_remote)``.
    ``last_timestamp`` survives across handshakes: an initiation whose TAI64N timestamp is not
    strictly greater is a replay and is dropped.
    """

    remote_static: bytes
    precomputed_static_static: bytes
    preshared_key: bytes = ZERO32
    state: HandshakeState = HandshakeState.ZEROED
    hash: bytes = ZERO32
    chain_key: bytes = ZERO32
    local_ephemeral: X25519PrivateKey | None = None
    local_index: int = 0
    remote_index: int = 0
    remote_ephemeral: bytes = ZERO32
    last_timestamp: bytes = bytes(12)
    last_initiation_consumption: float | None = None

    def zero(self) -> None:
        """Forget the ephemeral secrets and go back to ``ZEROED`` (timestamps are kept)."""
        self.state = HandshakeState.ZEROED
        self.hash = ZERO32
        self.chain_key = ZERO32
        self.local_ephemeral = None
        self.local_index = 0
        self.remote_index = 0
        self.remote_ephemeral = ZERO32


def create_initiation(
    identity: StaticIdentity,
    hs: Handshake,
    local_index: int,
    timestamp: bytes,
    ephemeral_private: bytes,
) -> bytes | None:
    """Build a handshake initiation (mac1/mac2 zero) and move ``hs`` to INITIATION_CREATED.

    Returns None when a DH result is zero (a malicious or broken peer key).
    """
    try:
        h = hash_(INITIAL_HASH + hs.remote_static)
        eph = X25519PrivateKey.from_private_bytes(ephemeral_private)
        e_pub = eph.public_key().public_bytes(_RAW, _RAW_PUB)
        ck = kdf1(INITIAL_CHAIN_KEY, e_pub)
        h = hash_(h + e_pub)
        ck, key = kdf2(ck, dh(eph, hs.remote_static))
        enc_static = aead_seal(key, 0, identity.public, h)
        h = hash_(h + enc_static)
        if hs.precomputed_static_static == ZERO32:
            return None
        ck, key = kdf2(ck, hs.precomputed_static_static)
        enc_time = aead_seal(key, 0, timestamp, h)
        h = hash_(h + enc_time)
    except CryptoError:
        return None
    hs.state = HandshakeState.INITIATION_CREATED
    hs.hash = h
    hs.chain_key = ck
    hs.local_ephemeral = eph
    hs.local_index = local_index
    msg = (
        bytes((MESSAGE_INITIATION, 0, 0, 0))
        + local_index.to_bytes(4, "little")
        + e_pub
        + enc_static
        + enc_time
        + bytes(32)
    )
    assert len(msg) == MESSAGE_INITIATION_SIZE
    return msg


@dataclass(frozen=True, slots=True)
class ConsumedInitiation:
    """What a valid initiation carried, before the responder looks the initiator up."""

    remote_static: bytes
    remote_ephemeral: bytes
    sender_index: int
    timestamp: bytes
    hash: bytes
    chain_key: bytes


def consume_initiation(
    identity: StaticIdentity, msg: bytes, static_static: dict[bytes, bytes]
) -> ConsumedInitiation | None:
    """Decrypt an initiation addressed to ``identity``.

    Args:
        identity: our static key.
        msg: the 148-byte message (mac1 already checked by the caller).
        static_static: ``DH(S_priv, S_pub)`` per known peer public key; an initiator that is
            not in it is refused.

    Returns:
        The decrypted fields, or None when the message does not decrypt or the peer is unknown.
    """
    if len(msg) != MESSAGE_INITIATION_SIZE or msg[0] != MESSAGE_INITIATION:
        return None
    e_pub = msg[8:40]
    try:
        h = hash_(INITIAL_HASH + identity.public)
        ck = kdf1(INITIAL_CHAIN_KEY, e_pub)
        h = hash_(h + e_pub)
        ck, key = kdf2(ck, dh(identity.private, e_pub))
        enc_static = msg[40:88]
        remote_static = aead_open(key, 0, enc_static, h)
        h = hash_(h + enc_static)
        ss = static_static.get(remote_static)
        if ss is None or ss == ZERO32:
            return None
        ck, key = kdf2(ck, ss)
        enc_time = msg[88:116]
        timestamp = aead_open(key, 0, enc_time, h)
        h = hash_(h + enc_time)
    except CryptoError:
        return None
    return ConsumedInitiation(
        remote_static=remote_static,
        remote_ephemeral=e_pub,
        sender_index=int.from_bytes(msg[4:8], "little"),
        timestamp=timestamp,
        hash=h,
        chain_key=ck,
    )


def create_response(hs: Handshake, local_index: int, ephemeral_private: bytes) -> bytes | None:
    """Build the response to a consumed initiation (mac1/mac2 zero); RESPONSE_CREATED.

    Returns None when ``hs`` is not in INITIATION_CONSUMED or a DH result is zero.
    """
    if hs.state is not HandshakeState.INITIATION_CONSUMED:
        return None
    try:
        eph = X25519PrivateKey.from_private_bytes(ephemeral_private)
        e_pub = eph.public_key().public_bytes(_RAW, _RAW_PUB)
        ck = kdf1(hs.chain_key, e_pub)
        h = hash_(hs.hash + e_pub)
        ck = kdf1(ck, dh(eph, hs.remote_ephemeral))
        ck = kdf1(ck, dh(eph, hs.remote_static))
        ck, tau, key = kdf3(ck, hs.preshared_key)
        h = hash_(h + tau)
        enc_empty = aead_seal(key, 0, b"", h)
        h = hash_(h + enc_empty)
    except CryptoError:
        return None
    hs.state = HandshakeState.RESPONSE_CREATED
    hs.hash = h
    hs.chain_key = ck
    hs.local_ephemeral = eph
    hs.local_index = local_index
    msg = (
        bytes((MESSAGE_RESPONSE, 0, 0, 0))
        + local_index.to_bytes(4, "little")
        + hs.remote_index.to_bytes(4, "little")
        + e_pub
        + enc_empty
        + bytes(32)
    )
    assert len(msg) == MESSAGE_RESPONSE_SIZE
    return msg


def consume_response(identity: StaticIdentity, hs: Handshake, msg: bytes) -> bool:
    """Consume the response to our initiation; on success ``hs`` is RESPONSE_CONSUMED.

    The caller found ``hs`` by the message's receiver index and checked mac1. On failure ``hs``
    is left unchanged (a forged response must not break a pending handshake).
    """
    if (
        len(msg) != MESSAGE_RESPONSE_SIZE
        or msg[0] != MESSAGE_RESPONSE
        or hs.state is not HandshakeState.INITIATION_CREATED
        or hs.local_ephemeral is None
    ):
        return False
    e_pub = msg[12:44]
    try:
        ck = kdf1(hs.chain_key, e_pub)
        h = hash_(hs.hash + e_pub)
        ck = kdf1(ck, dh(hs.local_ephemeral, e_pub))
        ck = kdf1(ck, dh(identity.private, e_pub))
        ck, tau, key = kdf3(ck, hs.preshared_key)
        h = hash_(h + tau)
        enc_empty = msg[44:60]
        aead_open(key, 0, enc_empty, h)
        h = hash_(h + enc_empty)
    except CryptoError:
        return False
    hs.state = HandshakeState.RESPONSE_CONSUMED
    hs.hash = h
    hs.chain_key = ck
    hs.remote_index = int.from_bytes(msg[4:8], "little")
    hs.remote_ephemeral = e_pub
    return True


def derive_keys(hs: Handshake) -> tuple[bytes, bytes, bool] | None:
    """Split the chaining key into (send key, receive key, we initiated) and zero ``hs``.

    Returns None unless ``hs`` is RESPONSE_CONSUMED (initiator) or RESPONSE_CREATED (responder).
    """
    if hs.state is HandshakeState.RESPONSE_CONSUMED:
        t1, t2 = kdf2(hs.chain_key, b"")
        send, recv, initiator = t1, t2, True
    elif hs.state is HandshakeState.RESPONSE_CREATED:
        t1, t2 = kdf2(hs.chain_key, b"")
        send, recv, initiator = t2, t1, False
    else:
        return None
    local, remote = hs.local_index, hs.remote_index
    hs.zero()
    hs.local_index, hs.remote_index = local, remote
    return send, recv, initiator
