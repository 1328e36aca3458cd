"""The cryptographic primitives of the WireGuard protocol, as the whitepaper names them.

Everything here is a pure function of its arguments (no clock, no randomness except where a
caller passes it in). Names follow section 5.4 of the WireGuard whitepaper:

``HASH``      BLAKE2s-256 (:func:`hash_`)
``MAC``       keyed BLAKE2s with a 16-byte output (:func:`mac`)
``HMAC``      HMAC over BLAKE2s-256 (:func:`hmac_`)
``KDFn``      HKDF built from that HMAC (:func:`kdf1`, :func:`kdf2`, :func:`kdf3`)
``AEAD``      ChaCha20-Poly1305 with a 64-bit little-endian counter nonce (:func:`aead_seal`)
``XAEAD``     XChaCha20-Poly1305, 24-byte nonce (cookie replies only, :func:`xaead_seal`)
``DH``        X25519 (:func:`dh`); an all-zero result is rejected (:class:`CryptoError`)
``TAI64N``    12-byte external timestamp (:func:`tai64n`)

The static X25519 key of a node is derived from its ed25519 identity by the standard birational
map (:func:`x25519_private_from_ed25519_seed`, :func:`x25519_public_from_ed25519`), so one key
serves SSH, registration and tunnels.
"""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnelmesh.errors import RemoteProtocolError

__all__ = [
    "CONSTRUCTION",
    "IDENTIFIER",
    "INITIAL_CHAIN_KEY",
    "INITIAL_HASH",
    "LABEL_COOKIE",
    "LABEL_MAC1",
    "CryptoError",
    "aead_open",
    "aead_seal",
    "dh",
    "hash_",
    "hmac_",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "public_key_of",
    "tai64n",
    "x25519_private_from_ed25519_seed",
    "x25519_public_from_ed25519",
    "xaead_open",
    "xaead_seal",
]

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

_blake2s = hashlib.blake2s
_hmac_digest = hmac.digest
_ZERO32 = bytes(32)
_TAI64_BASE = 0x400000000000000A
_WHITENER_MASK = 0x1000000 - 1


class CryptoError(RemoteProtocolError):
    """A DH result was zero or an AEAD tag did not verify (never escapes the engine)."""


def hash_(data: bytes) -> bytes:
    """``HASH(data)``: BLAKE2s-256."""
    return _blake2s(data).digest()


def mac(key: bytes, data: bytes | memoryview) -> bytes:
    """``MAC(key, data)``: keyed BLAKE2s-128."""
    return _blake2s(data, digest_size=16, key=key).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """``HMAC(key, data)`` over BLAKE2s-256 (block size 64)."""
    return _hmac_digest(key, data, "blake2s")


def kdf1(key: bytes, data: bytes) -> bytes:
    """``KDF1(key, data)``: the first HKDF output."""
    prk = _hmac_digest(key, data, "blake2s")
    return _hmac_digest(prk, b"\x01", "blake2s")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """``KDF2(key, data)``: the first two HKDF outputs."""
    prk = _hmac_digest(key, data, "blake2s")
    t1 = _hmac_digest(prk, b"\x01", "blake2s")
    return t1, _hmac_digest(prk, t1 + b"\x02", "blake2s")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """``KDF3(key, data)``: the first three HKDF outputs."""
    prk = _hmac_digest(key, data, "blake2s")
    t1 = _hmac_digest(prk, b"\x01", "blake2s")
    t2 = _hmac_digest(prk, t1 + b"\x02", "blake2s")
    return t1, t2, _hmac_digest(prk, t2 + b"\x03", "blake2s")


INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAIN_KEY + IDENTIFIER)


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """``AEAD(key, counter, plaintext, ad)``: ciphertext followed by the 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`aead_seal`.

    Raises:
        CryptoError: the tag does not verify.
    """
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise CryptoError("AEAD tag mismatch") from None


def xaead_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """``XAEAD(key, nonce, plaintext, ad)``: XChaCha20-Poly1305 (24-byte nonce)."""
    return bytes(
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)
    )


def xaead_open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`xaead_seal`.

    Raises:
        CryptoError: the tag does not verify.
    """
    try:
        return bytes(
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
        )
    except nacl.exceptions.CryptoError:
        raise CryptoError("XAEAD tag mismatch") from None


def public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    from cryptography.hazmat.primitives import serialization

    return (
        X25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def dh(private_key: bytes | X25519PrivateKey, public_key: bytes) -> bytes:
    """``DH(private, public)``: X25519.

    Raises:
        CryptoError: the result is all zeros (a low-order public key).
    """
    if isinstance(private_key, bytes):
        private_key = X25519PrivateKey.from_private_bytes(private_key)
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        raise CryptoError("X25519 produced the all-zero value") from None
    if shared == _ZERO32:
        raise CryptoError("X25519 produced the all-zero value")
    return shared


def tai64n(wall_time: float) -> bytes:
    """``TAI64N()`` of a Unix time, whitened to about 16 ms as wireguard-go does."""
    seconds = int(wall_time)
    nanos = int((wall_time - seconds) * 1e9) & ~_WHITENER_MASK
    return (_TAI64_BASE + seconds).to_bytes(8, "big") + nanos.to_bytes(4, "big")


def x25519_private_from_ed25519_seed(seed: bytes) -> bytes:
    """The X25519 private key of an ed25519 key given by its 32-byte seed.

    It is ``SHA-512(seed)[0:32]``, clamped: the scalar ed25519 itself signs with.
    """
    _public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
    return bytes(nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(secret))


def x25519_public_from_ed25519(public_key: bytes) -> bytes:
    """The X25519 public key of a 32-byte ed25519 public key (the birational map)."""
    return bytes(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key))
