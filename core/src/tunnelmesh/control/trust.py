"""Installing the mesh CA in the system trust store (Debian/Ubuntu: ca-certificates).

The CA goes to ``/usr/local/share/ca-certificates/tunnelmesh-<context>.crt`` and
``update-ca-certificates`` is run. Both can be moved for tests and unusual systems:
``TUNNELMESH_CA_STORE_DIR`` (the directory) and ``TUNNELMESH_UPDATE_CA_CMD`` (the command, split
on spaces; empty to skip it).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from tunnelmesh.errors import TunnelmeshError

__all__ = ["install_ca", "remove_ca", "store_dir"]

DEFAULT_STORE_DIR = "/usr/local/share/ca-certificates"
DEFAULT_UPDATE_CMD = "update-ca-certificates"


def store_dir() -> Path:
    return Path(os.environ.get("TUNNELMESH_CA_STORE_DIR", DEFAULT_STORE_DIR))


def _update() -> None:
    cmd = shlex.split(os.environ.get("TUNNELMESH_UPDATE_CA_CMD", DEFAULT_UPDATE_CMD))
    if not cmd:
        return
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    except FileNotFoundError:
        raise TunnelmeshError(
            f"{cmd[0]} not found; install the ca-certificates package or use --no-trust"
        ) from None
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["failed"]
        raise TunnelmeshError(f"{cmd[0]} failed: {err[0]}") from None
    except subprocess.TimeoutExpired:
        raise TunnelmeshError(f"{cmd[0]} timed out") from None


def install_ca(ca_pem: str, context: str) -> Path:
    """Install the CA for ``context``; returns where it was written.

    Raises:
        TunnelmeshError: no permission (run as root) or the update command failed.
    """
    safe = re.sub(r"[^a-zA-Z0-9_-]", "_", context)
    path = store_dir() / f"tunnelmesh-{safe}.crt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ca_pem, encoding="ascii")
        path.chmod(0o644)
    except PermissionError:
        raise TunnelmeshError(
            f"no permission to write {path}; run as root or pass --no-trust"
        ) from None
    except OSError as exc:
        raise TunnelmeshError(f"cannot write {path}: {exc.strerror}") from None
    _update()
    return path


def remove_ca(path: str | Path) -> None:
    """Remove a CA installed by :func:`install_ca` and refresh the store."""
    p = Path(path)
    try:
        p.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TunnelmeshError(f"cannot remove {p}: {exc.strerror}") from None
    _update()
