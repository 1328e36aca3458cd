"""Sans-IO limits that keep the coordinator bounded under abuse: rate limits and table bounds.

Every table the coordinator keys by something a client chooses (a source address, a peer, a
name) has a bound, so a flood costs the flooder, not the coordinator's memory:

==========================  ===============================  ======================================
table                       key                              bound
==========================  ===============================  ======================================
registration challenges     nonce, charged to its source     ``per_source`` each, ``max_pending``
                                                             in all (auth.ChallengeBook)
failure allowances          source                           ``max_sources`` (auth.FailureLimiter)
push queues                 peer ID                          4,096 messages or 8 MiB (push)
heartbeat pace              peer ID                          :class:`RateLimiter` ``max_keys``
registration pace           peer ID                          :class:`RateLimiter` ``max_keys``
reserved names              name, per key                    4 per key (core.MAX_NAMES_PER_KEY)
rendezvous pace             peer ID                          :class:`RateLimiter` ``max_keys``
pending pushes              peer ID                          registered peers
relay "unreached" notices   destination, per connection      64 per relay connection
==========================  ===============================  ======================================

Sources are keyed by :func:`source_key`: an IPv4 address, or the /64 an IPv6 address is in
(one host usually holds a whole /64, as wireguard-go's rate limiter assumes). Nothing here reads
the clock: callers pass ``now``.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

__all__ = ["RateLimiter", "source_key"]


def source_key(addr: str) -> str:
    """What a source address is charged as: the IPv4 address, or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class RateLimiter:
    """A token bucket per key: ``burst`` at once, then ``rate`` per second.

    At most ``max_keys`` keys are tracked; the least recently used is forgotten first (it comes
    back with a full bucket, which costs an attacker more keys than it saves).

    Args:
        rate: tokens added per second.
        burst: the bucket size.
        max_keys: how many keys are remembered.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """Spend one token of ``key``.

        Returns:
            0.0 when the token was spent; otherwise the seconds until one is available (and
            nothing was spent).
        """
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
        if tokens >= 1.0:
            wait = 0.0
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate if self.rate > 0 else float("inf")
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)
