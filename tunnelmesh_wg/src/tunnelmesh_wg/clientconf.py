"""A WireGuard client's key pair, its wg-quick config and that config as a QR code.

Everything here runs where ``tunnelmesh wg add`` runs: the private key is made here, written
into the config that is printed once (and into the QR code), and sent nowhere else.
"""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import segno
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tunnelmesh.errors import ConfigError

__all__ = [
    "KEEPALIVE",
    "ClientConfig",
    "generate_keypair",
    "generate_preshared_key",
    "parse_duration",
    "terminal_qr",
    "write_qr",
]

KEEPALIVE = 25
"""PersistentKeepalive: a phone behind NAT keeps its mapping open and stays reachable."""

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def generate_keypair() -> tuple[str, str]:
    """A new X25519 key pair as WireGuard writes keys: (private, public), base64."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes_raw()
    public = key.public_key().public_bytes_raw()
    return base64.b64encode(private).decode("ascii"), base64.b64encode(public).decode("ascii")


def generate_preshared_key() -> str:
    """32 random bytes, base64 (what ``wg genpsk`` prints)."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``3600`` (seconds) -> seconds.

    Raises:
        ConfigError: not a positive number with one of the units s, m, h, d, w.
    """
    m = _DURATION.match(text)
    if m is None or int(m.group(1)) <= 0:
        raise ConfigError(
            f"{text!r} is not a duration: a positive number with s, m, h, d or w (e.g. 30d)"
        )
    return float(int(m.group(1)) * _UNIT[m.group(2)])


@dataclass(frozen=True)
class ClientConfig:
    """A wg-quick config for one client of a concentrator."""

    address: str  # the client's mesh IP
    dns: str  # the concentrator's mesh IP (its resolver answers the mesh's names)
    peer_public_key: str  # the concentrator's WireGuard key
    endpoint: str  # "host:port" of the concentrator
    allowed_ips: tuple[str, ...]  # the mesh prefix, or 0.0.0.0/0 for a full tunnel
    private_key: str = ""  # "" when the user keeps the key (``--public-key``)
    preshared_key: str = ""
    keepalive: int = KEEPALIVE

    def text(self) -> str:
        """The config in wg-quick format (``[Interface]`` and one ``[Peer]``)."""
        lines = ["[Interface]"]
        if self.private_key:
            lines.append(f"PrivateKey = {self.private_key}")
        else:
            lines.append("# PrivateKey = (the private key of the public key you gave)")
        lines += [
            f"Address = {self.address}/32",
            f"DNS = {self.dns}",
            "",
            "[Peer]",
            f"PublicKey = {self.peer_public_key}",
        ]
        if self.preshared_key:
            lines.append(f"PresharedKey = {self.preshared_key}")
        lines += [
            f"Endpoint = {self.endpoint}",
            f"AllowedIPs = {', '.join(self.allowed_ips)}",
            f"PersistentKeepalive = {self.keepalive}",
        ]
        return "\n".join(lines) + "\n"


def _qr(text: str) -> segno.QRCode:
    # Error correction M: a phone camera reads it from a screen; byte mode keeps it exact.
    return segno.make_qr(text, error="m", mode="byte", boost_error=False)


def terminal_qr(text: str) -> str:
    """``text`` as a QR code drawn with block characters (two rows per line)."""
    out = io.StringIO()
    _qr(text).terminal(out=out, compact=True)
    return out.getvalue()


def write_qr(text: str, path: str | Path) -> Path:
    """Write ``text`` as a QR code image, PNG or SVG by the file's suffix; the file is created
    readable by its owner only (it holds a private key).

    Raises:
        ConfigError: the suffix is neither .png nor .svg.
        OSError: the file cannot be written.
    """
    target = Path(path)
    kind = target.suffix.lower()
    if kind not in (".png", ".svg"):
        raise ConfigError(f"--qr {target}: the file must end in .png or .svg")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    with os.fdopen(fd, "wb") as f:
        _qr(text).save(f, kind=kind[1:], scale=8, border=4)
    return target
