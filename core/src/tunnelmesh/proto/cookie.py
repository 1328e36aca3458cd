"""mac1, mac2 and cookie replies: WireGuard's defence against handshake floods (section 5.4.7).

Every handshake message carries ``mac1 = MAC(HASH("mac1----" || S_pub_receiver), msg[:-32])``:
anyone who knows the receiver's public key can compute it, and a receiver drops messages whose
mac1 is wrong before doing any Curve25519 work.

Under load a receiver also wants ``mac2 = MAC(cookie, msg[:-16])``, where
``cookie = MAC(R_secret, source address)`` and ``R_secret`` changes every two minutes. A message
without a valid mac2 gets a *cookie reply* instead of a response: the cookie, encrypted with
XChaCha20-Poly1305 under ``HASH("cookie--" || S_pub_receiver)`` and the message's mac1 as
associated data. The sender stores it and puts mac2 on its next attempt, proving that it can
receive at its source address.

:class:`CookieChecker` is the receiving side (one per node), :class:`CookieGenerator` the sending
side (one per peer). Neither reads the clock: both take ``now``.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

from tunnelmesh.proto.wgcrypto import (
    LABEL_COOKIE,
    LABEL_MAC1,
    CryptoError,
    hash_,
    mac,
    xaead_open,
    xaead_seal,
)
from tunnelmesh.proto.wgmessages import (
    COOKIE_REFRESH_TIME,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
)

__all__ = ["CookieChecker", "CookieGenerator", "address_bytes"]

_compare = hmac.compare_digest


def address_bytes(addr: object) -> bytes:
    """The bytes a cookie is bound to: IP address then port (big-endian) of ``(host, port)``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        try:
            return ipaddress.ip_address(addr[0]).packed + int(addr[1]).to_bytes(2, "big")
        except ValueError:
            pass
    return repr(addr).encode()


class CookieChecker:
    """Checks mac1/mac2 of messages sent to us and builds cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_rng", "_secret", "_secret_set")

    def __init__(self, public_key: bytes, rng: Callable[[int], bytes]) -> None:
        self._mac1_key = hash_(LABEL_MAC1 + public_key)
        self._cookie_key = hash_(LABEL_COOKIE + public_key)
        self._rng = rng
        self._secret = b""
        self._secret_set: float | None = None

    def check_mac1(self, msg: bytes) -> bool:
        """True when ``msg`` carries a valid mac1 for our public key."""
        n = len(msg)
        return _compare(mac(self._mac1_key, msg[: n - 32]), msg[n - 32 : n - 16])

    def check_mac2(self, msg: bytes, addr: object, now: float) -> bool:
        """True when ``msg`` carries a valid mac2 for the cookie of ``addr`` (current secret)."""
        if self._secret_set is None or now - self._secret_set > COOKIE_REFRESH_TIME:
            return False
        cookie = mac(self._secret, address_bytes(addr))
        n = len(msg)
        return _compare(mac(cookie, msg[: n - 16]), msg[n - 16 :])

    def create_reply(self, msg: bytes, receiver_index: int, addr: object, now: float) -> bytes:
        """The cookie reply to ``msg`` (whose sender index is ``receiver_index``)."""
        if self._secret_set is None or now - self._secret_set > COOKIE_REFRESH_TIME:
            self._secret = self._rng(32)
            self._secret_set = now
        cookie = mac(self._secret, address_bytes(addr))
        nonce = self._rng(24)
        n = len(msg)
        encrypted = xaead_seal(self._cookie_key, nonce, cookie, msg[n - 32 : n - 16])
        reply = (
            bytes((MESSAGE_COOKIE_REPLY, 0, 0, 0))
            + receiver_index.to_bytes(4, "little")
            + nonce
            + encrypted
        )
        assert len(reply) == MESSAGE_COOKIE_REPLY_SIZE
        return reply


class CookieGenerator:
    """Puts mac1 (and mac2 while we hold a fresh cookie) on messages sent to one peer."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_set", "_last_mac1", "_mac1_key")

    def __init__(self, peer_public_key: bytes) -> None:
        self._mac1_key = hash_(LABEL_MAC1 + peer_public_key)
        self._cookie_key = hash_(LABEL_COOKIE + peer_public_key)
        self._cookie = b""
        self._cookie_set: float | None = None
        self._last_mac1: bytes | None = None

    @property
    def has_cookie(self) -> bool:
        """True once a cookie reply was accepted (it may have expired since)."""
        return self._cookie_set is not None

    def add_macs(self, msg: bytes, now: float) -> bytes:
        """Return ``msg`` with mac1 and, with a cookie younger than 120 s, mac2 filled in."""
        body = msg[:-32]
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        if self._cookie_set is not None and now - self._cookie_set <= COOKIE_REFRESH_TIME:
            mac2 = mac(self._cookie, body + mac1)
        else:
            mac2 = bytes(16)
        return body + mac1 + mac2

    def consume_reply(self, reply: bytes, now: float) -> bool:
        """Accept a cookie reply to the last message we sent; False if it does not decrypt."""
        if self._last_mac1 is None or len(reply) != MESSAGE_COOKIE_REPLY_SIZE:
            return False
        try:
            cookie = xaead_open(self._cookie_key, reply[8:32], reply[32:64], self._last_mac1)
        except CryptoError:
            return False
        self._cookie = cookie
        self._cookie_set = now
        self._last_mac1 = None
        return True
