"""Secrets the coordinator keeps in its state store, sealed with a key the operator supplies.

The mesh CA's private key and the rotated join token live in the state store, so every
coordinator of one database can use them and none keeps a secret of its own. In a database
other machines reach (PostgreSQL, its backups, its operator) they are stored sealed:
ChaCha20-Poly1305 with the key of ``state.encryption_key_file``, the meta key as associated
data (a sealed blob cannot be moved to another slot). ``seal``/``unseal`` are pure functions;
:class:`Sealer` applies the policy:

* with a key: blobs are sealed when written; a plaintext blob found (an older install, or SQLite
  before the key was configured) is read and the caller re-writes it sealed;
* without a key: blobs are written in plaintext (SQLite in a 0700 data dir, as before); a sealed
  blob found is refused with a message naming the key to configure.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnelmesh.errors import ConfigError
from tunnelmesh.private_files import read_secret_file

__all__ = ["MAGIC", "Sealer", "load_key", "seal", "unseal"]

MAGIC = b"tunnelmesh-sealed-v1\0"
"""The prefix of a sealed blob (never the start of a PEM or a token)."""


def load_key(path: str) -> bytes:
    """The 32-byte key in ``path``: 64 hex digits or base64 (``openssl rand -hex 32``).

    Raises:
        ConfigError: unreadable, readable by others, or not 32 bytes.
    """
    text = read_secret_file(path, "the state encryption key file")
    key: bytes | None = None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != 32:
        raise ConfigError(
            "the state encryption key must be 32 bytes as 64 hex digits or base64 "
            "(create one with: openssl rand -hex 32)",
            path=path,
        )
    return key


def seal(key: bytes, plaintext: bytes, slot: str) -> bytes:
    """``plaintext`` encrypted and authenticated for the meta key ``slot``."""
    nonce = os.urandom(12)
    return MAGIC + nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, slot.encode())


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


def unseal(key: bytes, blob: bytes, slot: str) -> bytes:
    """The plaintext of a sealed blob.

    Raises:
        ConfigError: the key does not open it (another key, or the blob was changed).
    """
    body = blob[len(MAGIC) :]
    try:
        return ChaCha20Poly1305(key).decrypt(body[:12], body[12:], slot.encode())
    except InvalidTag:
        raise ConfigError(
            f"the state store's {slot!r} does not open with state.encryption_key_file: every "
            "coordinator of one database needs the same key file"
        ) from None


class Sealer:
    """Seal and open the secret meta blobs with the configured key (or none)."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key

    def seal(self, value: bytes, slot: str) -> bytes:
        return value if self.key is None else seal(self.key, value, slot)

    def open(self, blob: bytes, slot: str) -> tuple[bytes, bool]:
        """The plaintext, and whether the stored form should be rewritten (sealed now).

        Raises:
            ConfigError: the blob is sealed and no key (or another key) is configured.
        """
        if is_sealed(blob):
            if self.key is None:
                raise ConfigError(
                    f"the state store's {slot!r} is encrypted: set state.encryption_key_file "
                    "to the key file the other coordinators use",
                    key="state.encryption_key_file",
                )
            return unseal(self.key, blob, slot), False
        return blob, self.key is not None
