"""Node identity: one ed25519 key per node, stored in OpenSSH format.

The key lives in ``~/.tunnelmesh/id_ed25519`` (private, mode 0600) and ``id_ed25519.pub``; both
``tunnelmesh init`` and ``tunnelmesh join`` create it when it is missing. The same key:

* proves a node's identity to the coordinator (registration signs a server challenge, see
  :mod:`tunnelmesh.coordinator.auth`);
* names the node: ``peer_id`` is the hex of the first 8 bytes of SHA-256 over the raw 32-byte
  public key;
* gives the data plane a Curve25519 (X25519) key pair by the standard birational map, so a node
  needs no second secret for WireGuard-style handshakes.

``TUNNELMESH_HOME`` moves ``~/.tunnelmesh`` (tests and several nodes on one machine use it).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

import nacl.bindings
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tunnelmesh.errors import ConfigError
from tunnelmesh.logs import add_secret

__all__ = [
    "Identity",
    "default_key_path",
    "fingerprint_of",
    "parse_public_key",
    "peer_id_of",
    "tunnelmesh_home",
    "verify_signature",
    "x25519_public_of",
]

DEFAULT_KEY_NAME = "id_ed25519"

log = logging.getLogger(__name__)


def tunnelmesh_home() -> Path:
    """The per-user state directory: ``$TUNNELMESH_HOME`` or ``~/.tunnelmesh``."""
    env = os.environ.get("TUNNELMESH_HOME")
    return Path(env).expanduser() if env else Path("~/.tunnelmesh").expanduser()


def default_key_path() -> Path:
    """Where the node key lives when nothing else is configured."""
    return tunnelmesh_home() / DEFAULT_KEY_NAME


DEFAULT_PRIVATE_KEY = "~/.tunnelmesh/id_ed25519"
"""The ``private_key`` a config has when it sets none."""


def configured_key_path(private_key: str) -> Path:
    """The key file a config's ``private_key`` names: left at its default, the key follows
    ``TUNNELMESH_HOME`` (:func:`default_key_path`), as everything else in ``~/.tunnelmesh``."""
    if private_key == DEFAULT_PRIVATE_KEY:
        return default_key_path()
    return Path(private_key).expanduser()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def peer_id_of(public_key: Ed25519PublicKey | bytes) -> str:
    """The 16-hex-digit peer ID of a public key (SHA-256 of the raw key, first 8 bytes)."""
    raw = public_key if isinstance(public_key, bytes) else _raw_public(public_key)
    return hashlib.sha256(raw).digest()[:8].hex()


def fingerprint_of(public_openssh: str) -> str:
    """``SHA256:...`` of an OpenSSH public key line, exactly as ``ssh-keygen -lf`` prints it.

    Raises:
        ValueError: not an OpenSSH public key line.
    """
    try:
        blob = base64.b64decode(public_openssh.split()[1], validate=True)
    except (IndexError, ValueError):
        raise ValueError("not an OpenSSH public key line ('ssh-ed25519 AAAA...')") from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def x25519_public_of(public_key: Ed25519PublicKey | bytes) -> bytes:
    """The X25519 public key that corresponds to an ed25519 public key (32 bytes)."""
    raw = public_key if isinstance(public_key, bytes) else _raw_public(public_key)
    return bytes(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(raw))


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``ssh-ed25519 AAAA... [comment]``.

    Raises:
        ValueError: not an OpenSSH ed25519 public key.
    """
    if not isinstance(text, str) or not text.startswith("ssh-ed25519 "):
        raise ValueError("public_key must be an OpenSSH ed25519 key ('ssh-ed25519 AAAA...')")
    try:
        key = serialization.load_ssh_public_key(text.strip().encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise ValueError(f"public_key is not a valid OpenSSH key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):  # pragma: no cover - prefix checked above
        raise ValueError("public_key must be an ed25519 key")
    return key


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``data``; never raises."""
    try:
        public_key.verify(signature, data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _openssh_public(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


class Identity:
    """A node's ed25519 key pair."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        add_secret(self._seed(), self.x25519_private())  # never logged (tunnelmesh.logs)

    def _seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Load an OpenSSH ed25519 private key.

        Raises:
            ConfigError: missing, unreadable, encrypted or not ed25519.
        """
        p = Path(path).expanduser()
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError("key file not found", path=str(p)) from None
        except OSError as exc:
            raise ConfigError(f"cannot read key: {exc.strerror}", path=str(p)) from None
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except TypeError:
            raise ConfigError(
                "key is encrypted with a passphrase; tunnelmesh needs an unencrypted key",
                path=str(p),
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"not an OpenSSH private key: {exc}", path=str(p)) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(
                "key is not ed25519 (create one with ssh-keygen -t ed25519)", path=str(p)
            )
        return cls(key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> tuple[Identity, bool]:
        """Load the key at ``path``, creating it (and ``.pub``) when missing.

        Returns:
            The identity and whether it was created now.
        """
        p = Path(path).expanduser()
        if p.exists():
            return cls.load(p), False
        ident = cls.generate()
        ident.save(p)
        return ident, True

    def save(self, path: str | os.PathLike[str], comment: str = "tunnelmesh") -> None:
        """Write the private key (0600, never overwriting) and ``<path>.pub``.

        Raises:
            ConfigError: the file exists or cannot be written.
        """
        from tunnelmesh.private_files import private_umask

        p = Path(path).expanduser()
        with private_umask():
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError("key file exists; refusing to overwrite it", path=str(p)) from None
        except OSError as exc:
            raise ConfigError(f"cannot write key: {exc.strerror}", path=str(p)) from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        pub = p.with_name(p.name + ".pub")
        pub.write_text(f"{self.public_openssh} {comment}\n", encoding="ascii")

    @property
    def public_openssh(self) -> str:
        """``ssh-ed25519 AAAA...`` (no comment): the form the coordinator stores."""
        return _openssh_public(self.public_key)

    @property
    def public_raw(self) -> bytes:
        """The raw 32-byte public key."""
        return _raw_public(self.public_key)

    @property
    def peer_id(self) -> str:
        """See :func:`peer_id_of`."""
        return peer_id_of(self.public_raw)

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
        return fingerprint_of(self.public_openssh)

    def sign(self, data: bytes) -> bytes:
        """An ed25519 signature of ``data`` (64 bytes)."""
        return self.private_key.sign(data)

    def x25519_private(self) -> bytes:
        """The X25519 private key that corresponds to this ed25519 key (32 bytes)."""
        seed = self._seed()
        return bytes(nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(seed + self.public_raw))

    def x25519_public(self) -> bytes:
        """The X25519 public key (32 bytes); equals :func:`x25519_public_of` of the public key."""
        return x25519_public_of(self.public_raw)
