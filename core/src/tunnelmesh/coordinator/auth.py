"""Sans-IO registration security: challenges, the signed message, the token, failure limits.

Registration is two requests::

    POST /api/v1/register/challenge              -> {"nonce": b64(32 random bytes)}
    POST /api/v1/register  {name, public_key, nonce, signature, ...}
         Authorization: Bearer <mesh auth_token>

The peer signs :func:`registration_message` with its ed25519 key. That message binds the nonce
(one use, short-lived: no replay), the requested name and key, and :func:`token_binding`, an
HMAC of the nonce keyed by the mesh token, so the signature is only worth anything to someone
who also knows the token. The token itself is compared with :func:`hmac.compare_digest`.

Every refused attempt is charged to its source address in a :class:`FailureLimiter`; once a
source has spent its burst it gets HTTP 429 until its allowance refills. Nothing here reads the
clock: callers pass ``now`` (seconds, any monotonic or wall clock, used consistently).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tunnelmesh.coordinator.limits import source_key
from tunnelmesh.errors import CoordinatorError

__all__ = [
    "ChallengeBook",
    "ChallengesExhausted",
    "FailureLimiter",
    "registration_message",
    "token_binding",
    "token_matches",
]

CHALLENGE_TTL = 60.0
"""Seconds a registration nonce stays valid."""

NONCE_SIZE = 32
_REGISTER_CONTEXT = b"tunnelmesh-register-v1\x00"
_BINDING_CONTEXT = b"tunnelmesh-token-binding-v1\x00"


def token_matches(expected: str, given: str) -> bool:
    """Constant-time comparison of the mesh token (only the length can leak)."""
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def token_binding(token: str, nonce: bytes) -> bytes:
    """HMAC-SHA256 of the nonce keyed by the mesh token (32 bytes)."""
    return hmac.new(token.encode("utf-8"), _BINDING_CONTEXT + nonce, hashlib.sha256).digest()


def registration_message(nonce: bytes, name: str, public_key: str, binding: bytes) -> bytes:
    """The exact bytes a peer signs to register.

    Args:
        nonce: the server's challenge.
        name: the name the peer asks for.
        public_key: the peer's OpenSSH public key line (``ssh-ed25519 AAAA...``).
        binding: :func:`token_binding` of the mesh token and the nonce.
    """
    return b"\x00".join(
        (_REGISTER_CONTEXT + nonce, name.encode("utf-8"), public_key.encode("utf-8"), binding)
    )


class ChallengesExhausted(CoordinatorError):
    """No nonce now: the source holds ``per_source`` unredeemed ones (``mine`` is True), or the
    book is full of other sources' (False). Try again once some are used or expired.

    Args:
        message: what happened.
        mine: whether the source's own quota is the reason.
        retry_after: seconds until the source's oldest nonce expires (``mine``), else 0.
    """

    def __init__(self, message: str, *, mine: bool, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.mine = mine
        self.retry_after = retry_after


@dataclass
class ChallengeBook:
    """Outstanding registration nonces: each one is valid once, for ``ttl`` seconds.

    Every nonce is charged to the source that asked for it (a :func:`~tunnelmesh.coordinator.
    limits.source_key`). A source holds at most ``per_source`` unredeemed, unexpired nonces;
    past that, and when the whole book holds ``max_pending``, :meth:`issue` refuses
    (:class:`ChallengesExhausted`). No nonce is ever forgotten to make room, not even the
    source's own: registrations in flight (many peers behind one NAT) are never broken, and a
    flood of challenge requests from one source costs bounded memory and cancels nobody's.
    """

    ttl: float = CHALLENGE_TTL
    max_pending: int = 65536
    per_source: int = 64
    random: Callable[[int], bytes] = os.urandom
    _pending: OrderedDict[bytes, tuple[float, str]] = field(default_factory=OrderedDict, repr=False)
    _by_source: dict[str, deque[bytes]] = field(default_factory=dict, repr=False)

    def issue(self, now: float, source: str = "") -> bytes:
        """A fresh nonce for ``source``, valid until ``now + ttl``.

        Raises:
            ChallengesExhausted: ``source`` holds ``per_source`` nonces, or the book is full.
        """
        self._expire(now)
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.per_source:
            oldest = self._pending[mine[0]][0]
            raise ChallengesExhausted(
                f"{len(mine)} registration challenges of this address are unused; use them or "
                "let them expire",
                mine=True,
                retry_after=max(0.0, oldest - now),
            )
        if len(self._pending) >= self.max_pending:
            raise ChallengesExhausted(
                "too many registrations in progress; try again later", mine=False
            )
        nonce = self.random(NONCE_SIZE)
        self._pending[nonce] = (now + self.ttl, source)
        self._by_source.setdefault(source, deque()).append(nonce)
        return nonce

    def redeem(self, nonce: bytes, now: float) -> bool:
        """Use up ``nonce``; True when it was issued here, unused and unexpired."""
        entry = self._pending.get(nonce)
        if entry is None:
            return False
        self._drop(nonce)
        return now <= entry[0]

    def peek(self, nonce: bytes, now: float) -> bool:
        """True when ``nonce`` could be redeemed now, without using it up."""
        entry = self._pending.get(nonce)
        return entry is not None and now <= entry[0]

    def __len__(self) -> int:
        return len(self._pending)

    def outstanding(self, source: str) -> int:
        """How many unexpired nonces ``source`` holds (as of the last issue)."""
        return len(self._by_source.get(source, ()))

    def _drop(self, nonce: bytes) -> None:
        _, source = self._pending.pop(nonce)
        mine = self._by_source[source]
        mine.remove(nonce)
        if not mine:
            del self._by_source[source]

    def _expire(self, now: float) -> None:
        while self._pending:
            nonce, (expiry, _) = next(iter(self._pending.items()))
            if expiry >= now:
                break
            self._drop(nonce)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class FailureLimiter:
    r"""Per-source allowance of failed attempts (a token bucket per source address).

    Sources are :func:`~tunnelmesh.coordinator.limits.source_key`\ s: an IPv6 host cannot start
    afresh from each address of its /64. A source may fail ``burst`` times in a row; after that one more failure is allowed every
    ``60 / per_minute`` seconds. Successful attempts cost nothing. At most ``max_sources``
    sources are tracked; the least recently charged is forgotten first.
    """

    burst: int = 20
    per_minute: float = 60.0
    max_sources: int = 100_000
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict, repr=False)

    def _refilled(self, source: str, now: float) -> _Bucket:
        bucket = self._buckets.get(source)
        if bucket is None:
            return _Bucket(float(self.burst), now)
        elapsed = max(0.0, now - bucket.stamp)
        tokens = min(float(self.burst), bucket.tokens + elapsed * self.per_minute / 60.0)
        return _Bucket(tokens, now)

    def retry_after(self, source: str, now: float) -> float:
        """0 when ``source`` may try now, else the seconds until it may."""
        bucket = self._refilled(source_key(source), now)
        if bucket.tokens >= 1.0:
            return 0.0
        if self.per_minute <= 0:
            return float("inf")
        return (1.0 - bucket.tokens) * 60.0 / self.per_minute

    def charge(self, source: str, now: float) -> None:
        """Record one failed attempt from ``source``."""
        source = source_key(source)
        bucket = self._refilled(source, now)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        self._buckets[source] = bucket
        self._buckets.move_to_end(source)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
