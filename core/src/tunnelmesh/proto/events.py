"""Events the protocol engines emit (frozen value objects, noun names).

Per-packet outcomes are never events (they would cost an allocation per packet): dropped
packets are counted in the engine's ``drops`` mapping instead.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EndpointChanged", "Event", "HandshakeCompleted", "HandshakeTimedOut", "KeysZeroed"]


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new session with ``peer`` is ready to carry data.

    Attributes:
        peer: the peer's name.
        public_key: the peer's static X25519 public key.
        initiator: True when we sent the initiation.
    """

    peer: str
    public_key: bytes
    initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeTimedOut:
    """No handshake with ``peer`` completed within REKEY_ATTEMPT_TIME (90 s); staged packets
    were dropped."""

    peer: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    """An authenticated packet from ``peer`` arrived from a new address (roaming)."""

    peer: str
    public_key: bytes
    endpoint: object


@dataclass(frozen=True, slots=True)
class KeysZeroed:
    """All session keys of ``peer`` were erased (3 x REJECT_AFTER_TIME without a handshake)."""

    peer: str
    public_key: bytes


Event = HandshakeCompleted | HandshakeTimedOut | EndpointChanged | KeysZeroed
