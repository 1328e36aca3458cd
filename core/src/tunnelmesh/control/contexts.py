"""Contexts: the meshes this machine has joined, in ``~/.tunnelmesh/contexts.json`` (0600).

A context remembers what ``tunnelmesh join`` learnt (coordinator URL, pinned CA, name, mesh
IP, session) so that ``status``, ``peers``, ``leave`` and a restarted ``join`` work without
asking again. It never holds the mesh join token: a registered key re-registers with its
signature alone. A contexts file written by an older release that still holds tokens is
rewritten without them when it is read. One context is *active*; commands use it unless given ``--context``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from tunnelmesh.errors import ConfigError
from tunnelmesh.identity import DEFAULT_PRIVATE_KEY, configured_key_path, tunnelmesh_home
from tunnelmesh.private_files import private_umask

__all__ = ["Context", "ContextStore", "join_mesh_key_path"]

log = logging.getLogger(__name__)


class Context(msgspec.Struct, kw_only=True):
    name: str
    server: str
    peer_name: str = ""
    peer_id: str = ""
    mesh_ip: str = ""
    mesh_cidr: str = ""
    domain: str = "tunnelmesh"
    session_token: str = ""
    ca_path: str = ""
    key_path: str = ""
    config_path: str = ""
    trusted_ca_path: str = ""  # where the CA was installed in the system trust store, if it was
    is_admin: bool = False
    stun_port: int = 0
    exit_pins: dict[str, str] = msgspec.field(default_factory=dict)
    """Exit node name -> the peer ID it had when this client first used it (exit pinning)."""


class _File(msgspec.Struct, kw_only=True):
    active: str = ""
    contexts: dict[str, Context] = msgspec.field(default_factory=dict)


class ContextStore:
    """The contexts file. Every change is written at once (atomically, mode 0600)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or tunnelmesh_home()
        self.path = self.home / "contexts.json"
        self._data = self._read()

    def _read(self) -> _File:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _File()
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", path=str(self.path)) from None
        try:
            data = msgspec.json.decode(raw, type=_File)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ConfigError(f"corrupt contexts file: {exc}", path=str(self.path)) from None
        if b'"auth_token"' in raw:  # an older release kept the join token here: drop it
            self._data = data
            try:
                self._write()
            except OSError as exc:
                raise ConfigError(
                    f"cannot drop the stored join token: {exc.strerror}", path=str(self.path)
                ) from None
        return data

    def _write(self) -> None:
        with private_umask():
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(self._data)))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    @property
    def active(self) -> str:
        return self._data.active

    def names(self) -> list[str]:
        return sorted(self._data.contexts)

    def get(self, name: str | None = None) -> Context:
        """The named context, or the active one.

        Raises:
            ConfigError: no such context (or none is active).
        """
        key = name or self._data.active
        if not key:
            raise ConfigError("no active context; join a mesh first (tunnelmesh join ...)")
        ctx = self._data.contexts.get(key)
        if ctx is None:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"no context named {key!r} (known: {known})")
        return ctx

    def put(self, ctx: Context, *, activate: bool = True) -> None:
        self._data.contexts[ctx.name] = ctx
        if activate or not self._data.active:
            self._data.active = ctx.name
        self._write()

    def use(self, name: str) -> None:
        self.get(name)
        self._data.active = name
        self._write()

    def delete(self, name: str) -> Context:
        ctx = self.get(name)
        del self._data.contexts[name]
        if self._data.active == name:
            self._data.active = self.names()[0] if self._data.contexts else ""
        self._write()
        return ctx

    def context_dir(self, name: str) -> Path:
        """A directory for one context's files (pinned CA, peers cache)."""
        return self.home / "contexts" / name


def join_mesh_key_path(private_key: str) -> Path:
    """The key of ``serve``'s own peer (``join_mesh.private_key``).

    As :func:`configured_key_path`, except for an install from before the default key followed
    ``TUNNELMESH_HOME``: when ``private_key`` is the default, ``$TUNNELMESH_HOME`` has no key,
    ``$HOME/.tunnelmesh`` has one and a context in ``$TUNNELMESH_HOME`` names it (the
    coordinator's own context, as such an install wrote it), that old key stays in use (a new
    key would make the coordinator's peer a new peer under another name) and a warning says
    how to move it. A key in ``$HOME/.tunnelmesh`` that no context here names (another node's,
    a ``join`` without ``TUNNELMESH_HOME``) is not taken.
    """
    key = configured_key_path(private_key)
    if private_key != DEFAULT_PRIVATE_KEY or key.exists():
        return key
    old = Path(DEFAULT_PRIVATE_KEY).expanduser()
    if old == key or not old.exists() or not _context_uses(key.parent, old):
        return key
    files = f"{old} {old}.pub" if Path(f"{old}.pub").exists() else str(old)
    log.warning(
        "join_mesh: using the key %s (no key in %s, where a default private_key now lives); "
        "to move it there: mv %s %s/",
        old,
        key.parent,
        files,
        key.parent,
    )
    return old


def _context_uses(home: Path, key: Path) -> bool:
    """Whether a context in ``home``'s contexts file has ``key`` as its key."""
    try:
        store = ContextStore(home)
        return any(store.get(name).key_path == str(key) for name in store.names())
    except (ConfigError, OSError):
        return False
