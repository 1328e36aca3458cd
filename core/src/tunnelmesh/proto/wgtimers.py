"""The WireGuard engine's timers (whitepaper section 6, wireguard-go ``timers.go``).

Each timer is one deadline per :class:`~tunnelmesh.proto.wgpeer.Peer` (what arms and clears
each is the table in :mod:`tunnelmesh.proto.wireguard`); :func:`get_timer` gives the earliest,
:func:`handle_timer` runs the due ones. The data path and the handshake arm them as they go.

Its functions are methods of :class:`~tunnelmesh.proto.wireguard.WireGuard`, bound there.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tunnelmesh.proto.events import HandshakeTimedOut, KeysZeroed
from tunnelmesh.proto.wgmessages import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
)

if TYPE_CHECKING:
    from tunnelmesh.proto.wgpeer import Peer
    from tunnelmesh.proto.wireguard import WireGuard

LAST_MINUTE_AFTER = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
"""Age of an initiator's keypair after which receiving on it starts one last rekey."""
NEW_HANDSHAKE_AFTER = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
"""Data sent and nothing heard for this long (plus jitter): the peer went quiet, initiate."""
ZERO_KEYS_AFTER = REJECT_AFTER_TIME * 3
"""Seconds after the last session was derived when every key of the peer is erased."""


def get_timer(self: WireGuard) -> float | None:
    """The earliest deadline at which :meth:`handle_timer` must be called, or None.

    Visits every peer (see :attr:`~tunnelmesh.proto.WireGuard.timer_floor` for a driver that
    needs this only when something changed).
    """
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


def handle_timer(self: WireGuard, now: float) -> None:
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
                peer.keepalive_at = self._deadline(now + KEEPALIVE_TIMEOUT)
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


def _expired_retransmit(self: WireGuard, peer: Peer, now: float) -> None:
    if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
        peer.keepalive_at = None
        peer.staged.clear()
        if peer.zero_keys_at is None:
            peer.zero_keys_at = self._deadline(now + ZERO_KEYS_AFTER)
        self._events.append(HandshakeTimedOut(peer.name, peer.public_key))
        return
    peer.handshake_attempts += 1
    self._send_initiation(peer, now, retry=True)


def _deadline(self: WireGuard, at: float) -> float:
    """``at``, a deadline being set, lowers :attr:`~tunnelmesh.proto.WireGuard.timer_floor`."""
    if at < self.timer_floor:
        self.timer_floor = at
    return at


def _jitter(self: WireGuard) -> float:
    """Up to a third of a second, from the engine's random bytes, 32 draws per ``rng`` call
    (a ping sends a packet per receive and each one draws: no syscall per packet)."""
    pool = self._jitter_pool
    if not pool:
        pool.extend(_JITTERS.unpack(self.rng(_JITTERS.size)))
    return pool.pop() / 65536 * 0.333


_JITTERS = struct.Struct("<32H")
