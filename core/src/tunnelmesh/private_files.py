"""Files that hold secrets: created private (0600, 0700 directories) from the first byte.

Secrets here are the node key, the coordinator's state database (it holds the mesh CA's private
key and session hashes) with SQLite's ``-wal`` and ``-shm`` files, and the contexts file (session
tokens). Two rules keep them private:

* They are created with a mode that is already private: the process umask is tightened to
  ``077`` while they are created (:func:`private_umask`), so no file or directory ever exists
  with wider permissions, not even for the moment between ``open`` and ``chmod``. SQLite creates
  ``-wal`` and ``-shm`` with the mode of the database file, so a database created 0600 keeps its
  journal 0600 too.
* The directory they live in must not be open to other users: :func:`ensure_private_dir`
  refuses (a :class:`~tunnelmesh.errors.ConfigError` naming the fix, ``chmod 700 DIR``) a
  directory that group or others may enter, since files already in it (from an older version,
  or copied in by hand) may be readable.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from tunnelmesh.errors import ConfigError

__all__ = [
    "PRIVATE_UMASK",
    "check_private_dir",
    "ensure_private_dir",
    "private_umask",
    "read_secret_file",
]

PRIVATE_UMASK = 0o077
"""No permission bit for group or others."""

_umask_lock = threading.Lock()


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Tighten the process umask to at least ``077`` for the ``with`` block, then restore it.

    The umask is process-wide: files other threads create meanwhile are private too, which is
    never less safe. Nested and concurrent uses are serialized so that the old umask always
    comes back.
    """
    with _umask_lock:
        old = os.umask(PRIVATE_UMASK)
        os.umask(old | PRIVATE_UMASK)
        try:
            yield
        finally:
            os.umask(old)


def check_private_dir(path: Path, what: str) -> None:
    """Refuse a directory that group or others may read, write or enter.

    Raises:
        ConfigError: the directory is group/world-accessible (the message says how to fix it),
            or is not a directory.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot use {what}: {exc.strerror}", path=str(path)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} is not a directory", path=str(path))
    mode = stat.S_IMODE(st.st_mode)
    if mode & PRIVATE_UMASK:
        raise ConfigError(
            f"{what} is accessible by other users (mode {mode:04o}) and holds secrets; "
            f"fix it with: chmod 700 {path}",
            path=str(path),
        )


def ensure_private_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` (and missing parents) mode 0700, or check the existing one.

    Returns:
        The expanded path.

    Raises:
        ConfigError: it cannot be created, or exists with group/other permissions.
    """
    p = Path(path).expanduser()
    try:
        with private_umask():
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create {what}: {exc.strerror}", path=str(p)) from None
    check_private_dir(p, what)
    return p


def read_secret_file(path: str | os.PathLike[str], what: str) -> str:
    """The first line of a private file holding a secret (a password, a key).

    Raises:
        ConfigError: the file cannot be read, is empty, or group/other may read it (the
            message says ``chmod 600 FILE``).
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", path=str(p)) from None
    if st.st_mode & PRIVATE_UMASK:
        raise ConfigError(
            f"{what} may be read by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {p}",
            path=str(p),
        )
    lines = text.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ConfigError(f"{what} is empty", path=str(p))
    return secret
