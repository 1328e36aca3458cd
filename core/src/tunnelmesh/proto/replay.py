"""The anti-replay window of WireGuard transport messages (RFC 6479).

A ring of 128 blocks of 64 bits remembers which counters were seen; the window is
``(128 - 1) * 64 = 8128`` counters behind the highest one, as in wireguard-go and the Linux
kernel. A counter is accepted once; counters older than the window, and counters at or above
``limit`` (``REJECT_AFTER_MESSAGES``), are refused.

The check runs *after* the packet authenticated: an unauthenticated counter must never move the
window.

:func:`tunnelmesh.proto.wgdata.receive_batch` does the common case inline (a counter above the
highest one, in that one's block: set its bit, move ``last``) and calls :meth:`check` for the
rest; ``last`` and ``blocks`` are public for that.
"""

from __future__ import annotations

__all__ = ["WINDOW_SIZE", "ReplayWindow"]

_BLOCK_BITS_LOG = 6
_BLOCK_BITS = 1 << _BLOCK_BITS_LOG
_RING_BLOCKS = 1 << 7
_BLOCK_MASK = _RING_BLOCKS - 1
_BIT_MASK = _BLOCK_BITS - 1
WINDOW_SIZE = (_RING_BLOCKS - 1) * _BLOCK_BITS
"""How far behind the highest counter seen a counter is still accepted (8128)."""


class ReplayWindow:
    """A sliding bitmap of seen counters. ``check(counter, limit)`` is the whole API."""

    __slots__ = ("blocks", "last")

    def __init__(self) -> None:
        self.last = 0
        """The highest counter seen."""
        self.blocks = [0] * _RING_BLOCKS
        """The ring of 64-bit blocks; bit ``c % 64`` of block ``c // 64 % 128`` is counter c."""

    def reset(self) -> None:
        """Forget every counter seen."""
        self.last = 0
        self.blocks = [0] * _RING_BLOCKS

    def check(self, counter: int, limit: int) -> bool:
        """Record ``counter``; True if it was new and inside the window, else False."""
        if counter >= limit:
            return False
        blocks = self.blocks
        index = counter >> _BLOCK_BITS_LOG
        last = self.last
        if counter > last:
            current = last >> _BLOCK_BITS_LOG
            diff = index - current
            if diff > _RING_BLOCKS:
                diff = _RING_BLOCKS
            for i in range(current + 1, current + diff + 1):
                blocks[i & _BLOCK_MASK] = 0
            self.last = counter
        elif last - counter > WINDOW_SIZE:
            return False
        index &= _BLOCK_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = blocks[index]
        if old & bit:
            return False
        blocks[index] = old | bit
        return True
