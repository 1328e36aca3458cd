"""Node identities: OpenSSH ed25519 keys, peer IDs, X25519 derivation."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import nacl.bindings
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tunnelmesh.errors import ConfigError
from tunnelmesh.identity import (
    Identity,
    default_key_path,
    parse_public_key,
    peer_id_of,
    verify_signature,
)


def test_create_then_load_same_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "id_ed25519"
    first, created = Identity.load_or_create(path)
    assert created
    again, created2 = Identity.load_or_create(path)
    assert not created2
    assert again.public_openssh == first.public_openssh
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = path.with_name("id_ed25519.pub").read_text().split()
    assert pub[:2] == first.public_openssh.split()


def test_file_is_openssh_format(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    Identity.generate().save(path)
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")
def test_ssh_keygen_reads_our_key_and_agrees_on_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    ident = Identity.generate()
    ident.save(path)
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert ident.fingerprint in out


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    Identity.generate().save(path)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        Identity.generate().save(path)


# An ed25519 key encrypted with passphrase "secretpw" (ssh-keygen -t ed25519 -N secretpw).
ENCRYPTED_KEY = """\
-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABCna0HOGD
/BQsBRsB3I7PadAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIMJ4ZRTn+QnefwiX
tf4TL2ynQIuc5R8Ay8NVMMZeVDRJAAAAkKHz4+KTnVMeo8+1/px35dG/maVL+DVrlV1wXF
iHZzANXXOYQk1dlw7p8ATv1CCxrpNoSooF462rQRtQVWsUpsEQSepsXlMYbWTsne/Y0hlC
RQeVJFrld4CBroaNMdNeTmmjQ31IFFGakmjpT156NDlH7lwMiXGc79bp8lPtAiRwWOIvap
zoTc03gZsQjJ0TsQ==
-----END OPENSSH PRIVATE KEY-----
"""


def test_encrypted_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    path.write_text(ENCRYPTED_KEY)
    with pytest.raises(ConfigError, match="passphrase"):
        Identity.load(path)


def test_non_ed25519_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "id_ecdsa"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not ed25519"):
        Identity.load(path)


def test_missing_and_garbage_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Identity.load(tmp_path / "nope")
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(ConfigError, match="not an OpenSSH private key"):
        Identity.load(tmp_path / "junk")


def test_peer_id_is_sha256_of_raw_key() -> None:
    import hashlib

    ident = Identity.generate()
    assert ident.peer_id == hashlib.sha256(ident.public_raw).hexdigest()[:16]
    assert peer_id_of(ident.public_key) == ident.peer_id


def test_sign_and_verify() -> None:
    ident = Identity.generate()
    pub = parse_public_key(ident.public_openssh + " comment")
    sig = ident.sign(b"message")
    assert verify_signature(pub, sig, b"message")
    assert not verify_signature(pub, sig, b"other")
    assert not verify_signature(pub, b"short", b"message")
    other = parse_public_key(Identity.generate().public_openssh)
    assert not verify_signature(other, sig, b"message")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
        "ssh-ed25519 not-base64!!",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAA",
    ],
)
def test_parse_public_key_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_public_key(text)


def test_x25519_pair_matches() -> None:
    ident = Identity.generate()
    assert nacl.bindings.crypto_scalarmult_base(ident.x25519_private()) == ident.x25519_public()


def test_home_env_moves_default_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path))
    assert default_key_path() == tmp_path / "id_ed25519"
