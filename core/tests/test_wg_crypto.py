"""WireGuard primitives against published test vectors.

Sources: RFC 7693 appendix B (BLAKE2s-256 of "abc"); the BLAKE2 reference KAT file
``blake2s-kat.txt`` (keyed, empty input, key 00..1f); RFC 7748 section 6.1 (X25519);
draft-irtf-cfrg-xchacha-03 appendix A.3.1 (XChaCha20-Poly1305); RFC 8032 section 7.1 test 1
(an ed25519 key, for the X25519 conversion); the TAI64 label of the Unix epoch (2^62 + 10, as
wireguard-go's ``tai64n`` package and the libtai documentation define it).
"""

from __future__ import annotations

import hashlib

import pytest
from tunnelmesh.proto import wgcrypto as c


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_hash_is_blake2s_rfc7693() -> None:
    assert c.hash_(b"abc") == h("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")


def test_keyed_blake2s_kat_and_mac_truncation() -> None:
    full = hashlib.blake2s(b"", key=bytes(range(32))).digest()
    assert full == h("48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49")
    # MAC is BLAKE2s with a 16-byte *output length* (a different hash, not a truncation).
    assert (
        c.mac(bytes(range(32)), b"")
        == hashlib.blake2s(b"", key=bytes(range(32)), digest_size=16).digest()
    )
    assert c.mac(bytes(range(32)), b"") != full[:16]


def _reference_hmac(key: bytes, msg: bytes) -> bytes:
    block = key.ljust(64, b"\x00")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in block) + msg).digest()
    return hashlib.blake2s(bytes(b ^ 0x5C for b in block) + inner).digest()


def test_hmac_and_kdf_follow_the_hkdf_construction() -> None:
    key, data = bytes(range(32)), b"input key material"
    assert c.hmac_(key, data) == _reference_hmac(key, data)
    prk = _reference_hmac(key, data)
    t1 = _reference_hmac(prk, b"\x01")
    t2 = _reference_hmac(prk, t1 + b"\x02")
    t3 = _reference_hmac(prk, t2 + b"\x03")
    assert c.kdf1(key, data) == t1
    assert c.kdf2(key, data) == (t1, t2)
    assert c.kdf3(key, data) == (t1, t2, t3)


def test_initial_chain_key_and_hash() -> None:
    ck = hashlib.blake2s(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s").digest()
    assert ck == c.INITIAL_CHAIN_KEY
    assert hashlib.blake2s(ck + b"WireGuard v1 zx2c4 Jason@zx2c4.com").digest() == c.INITIAL_HASH


def test_x25519_rfc7748() -> None:
    a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    a_pub = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    b_pub = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert c.public_key_of(a) == a_pub
    assert c.public_key_of(b) == b_pub
    assert c.dh(a, b_pub) == shared == c.dh(b, a_pub)


def test_dh_rejects_low_order_points() -> None:
    with pytest.raises(c.CryptoError):
        c.dh(bytes(range(32)), bytes(32))


def test_aead_nonce_is_four_zero_bytes_then_little_endian_counter() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    key = bytes(range(32))
    sealed = c.aead_seal(key, 0x0102030405060708, b"payload", b"ad")
    nonce = b"\x00\x00\x00\x00" + bytes.fromhex("0807060504030201")
    assert sealed == ChaCha20Poly1305(key).encrypt(nonce, b"payload", b"ad")
    assert c.aead_open(key, 0x0102030405060708, sealed, b"ad") == b"payload"
    with pytest.raises(c.CryptoError):
        c.aead_open(key, 0x0102030405060708, sealed, b"other ad")


def test_xaead_draft_xchacha_a31() -> None:
    key = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
    nonce = h("404142434445464748494a4b4c4d4e4f5051525354555657")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    expected = h(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"
    )
    assert c.xaead_seal(key, nonce, plaintext, aad) == expected
    assert c.xaead_open(key, nonce, expected, aad) == plaintext
    with pytest.raises(c.CryptoError):
        c.xaead_open(key, nonce, expected[:-1] + b"\x00", aad)


def test_tai64n_epoch_label_whitening_and_order() -> None:
    assert c.tai64n(0.0) == h("400000000000000a00000000")
    stamp = c.tai64n(1.5)
    assert stamp[:8] == (0x400000000000000A + 1).to_bytes(8, "big")
    # nanoseconds are rounded down to a multiple of 2^24 ns (~16.8 ms), as wireguard-go does
    assert int.from_bytes(stamp[8:], "big") % (1 << 24) == 0
    assert c.tai64n(1.0) < c.tai64n(1.1) < c.tai64n(2.0)
    assert c.tai64n(1.0) == c.tai64n(1.001)


def test_ed25519_identity_gives_a_matching_x25519_pair() -> None:
    seed = h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    ed_public = h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    x_private = c.x25519_private_from_ed25519_seed(seed)
    # the scalar ed25519 signs with: SHA-512(seed)[:32], clamped
    scalar = bytearray(hashlib.sha512(seed).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    assert x_private == bytes(scalar)
    assert c.public_key_of(x_private) == c.x25519_public_from_ed25519(ed_public)
