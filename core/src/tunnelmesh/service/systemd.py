"""systemd units for ``tunnelmesh join`` (one per context) and ``tunnelmesh serve``.

``tunnelmesh service install`` writes:

* ``/etc/systemd/system/tunnelmesh-<context>.service`` (join) or ``tunnelmesh-server.service``
  (serve): a hardened ``Type=notify`` unit. It holds no secret: only paths and options;
* ``/var/lib/tunnelmesh-<context>/`` (``StateDirectory=``, mode 0700): the service's own copy
  of what it needs, each file 0600: the context (mesh token, session, pinned CA), the node's
  key, and the config with the control socket moved into ``/run/tunnelmesh-<context>/``
  (``RuntimeDirectory=``). For serve, ``server.yaml`` (which holds the mesh token) is copied
  there the same way; the coordinator's ``data_dir`` stays where the config says and is the one
  writable path outside the state directory.

``uninstall`` stops and disables the unit, runs the crash cleanup, and removes the unit and the
state directory; a coordinator's ``data_dir`` (its CA and peers) is removed only with
``--purge``. Paths take a ``root`` prefix (like ``systemctl --root``) so tests install into a
directory; systemctl is then not called.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tunnelmesh.control.contexts import join_mesh_key_path
from tunnelmesh.errors import ConfigError, TunnelmeshError

__all__ = [
    "ServiceError",
    "Unit",
    "install_join",
    "install_serve",
    "installed",
    "render_unit",
    "systemd_running",
    "uninstall",
    "unit_name",
]

Mode = Literal["join", "serve"]
UNIT_DIR = Path("/etc/systemd/system")
STATE_ROOT = Path("/var/lib")


class ServiceError(TunnelmeshError):
    """The service cannot be installed or managed here."""


def systemd_running() -> bool:
    """systemd is the init system (``/run/systemd/system`` exists, as sd_booted() checks)."""
    return Path("/run/systemd/system").is_dir()


def unit_name(mode: Mode, context: str = "") -> str:
    """``tunnelmesh-<context>`` for join, ``tunnelmesh-server`` for serve (no suffix)."""
    if mode == "serve":
        return "tunnelmesh-server"
    if not context or not all(c.isalnum() or c in "-_" for c in context):
        raise ServiceError(f"context name {context!r} cannot name a unit (letters, digits, - _)")
    return f"tunnelmesh-{context}"


def command() -> list[str]:
    """How the unit runs tunnelmesh: this interpreter (its virtualenv) with ``-m tunnelmesh``."""
    return [os.path.abspath(sys.executable), "-m", "tunnelmesh"]


def _under_home(path: str) -> bool:
    resolved = str(Path(path).resolve())
    return any(
        resolved == p or resolved.startswith(p + "/") for p in ("/home", "/root", "/run/user")
    )


@dataclass
class Unit:
    """What the unit says; :func:`render_unit` turns it into the file."""

    name: str
    description: str
    exec_start: list[str]
    exec_stop_post: list[str]
    home: str
    exit_gateway: bool = False
    """The node forwards for others: it writes net.ipv4.ip_forward (kernel tunables stay open)."""
    write_etc: bool = False
    """The resolver fallback swaps /etc/resolv.conf (no systemd-resolved here)."""
    read_write: list[str] = field(default_factory=list)
    protect_home: str = "yes"


def _quote(argv: Sequence[str]) -> str:
    out = []
    for a in argv:
        if not a or any(c in a for c in " \t\"'\\;$%"):
            a = '"' + a.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'
        out.append(a)
    return " ".join(out)


def render_unit(u: Unit) -> str:
    """The unit file. Capabilities: CAP_NET_ADMIN (TUN, routes, nftables) and
    CAP_NET_BIND_SERVICE (DNS on port 53); nothing needs CAP_NET_RAW."""
    rw = [*u.read_write, *(["/etc"] if u.write_etc else [])]
    lines = [
        "# Written by `tunnelmesh service install`; `tunnelmesh service uninstall` removes it.",
        "# No secret is in this file: the token, session and keys are in the state directory",
        f"# (/var/lib/{u.name}, mode 0700, files 0600).",
        "[Unit]",
        f"Description={u.description}",
        "Documentation=man:systemd.service(5)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={_quote(u.exec_start)}",
        f"ExecStopPost={_quote(u.exec_stop_post)}",
        f"Environment=TUNNELMESH_HOME=%S/{u.name}",
        "Environment=PYTHONUNBUFFERED=1",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStartSec=120",
        "WatchdogSec=30",
        f"StateDirectory={u.name}",
        "StateDirectoryMode=0700",
        f"RuntimeDirectory={u.name}",
        "RuntimeDirectoryMode=0700",
        "UMask=0077",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ProtectHome={u.protect_home}",
        *(f"ReadWritePaths={p}" for p in rw),
        "PrivateTmp=yes",
        "PrivateIPC=yes",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/net/tun rw",
        f"ProtectKernelTunables={'no' if u.exit_gateway else 'yes'}",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        f"ProcSubset={'all' if u.exit_gateway else 'pid'}",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "KeyringMode=private",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @mount @swap @reboot @raw-io @module @obsolete "
        "@cpu-emulation @debug @clock",
        "SystemCallErrorNumber=EPERM",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


# --- install -------------------------------------------------------------------------------


def _private_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _resolved_running() -> bool:
    return Path("/run/systemd/resolve").is_dir() and shutil.which("resolvectl") is not None


def _needs_etc(dns: Any) -> bool:
    if not dns.enabled or dns.system == "off":
        return False
    return dns.system == "resolv.conf" or not _resolved_running()


def _read_yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=path) from None
    if not isinstance(data, dict):
        raise ConfigError("not a mapping", path=path)
    return data


def _dump(data: dict[str, Any]) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


def install_join(
    context: str | None,
    *,
    config: str | None = None,
    root: Path | None = None,
    home: Path | None = None,
) -> tuple[Path, Path]:
    """Write the unit and the state directory for ``join --context``; return both paths.

    Raises:
        ConfigError: no such context, or its key/CA/config cannot be read.
    """
    from tunnelmesh.config import PeerConfig, load_config
    from tunnelmesh.control.contexts import ContextStore

    store = ContextStore(home)
    ctx = store.get(context)
    name = unit_name("join", ctx.name)
    runtime_state = STATE_ROOT / name  # as the service sees it
    state = _rooted(root, runtime_state)
    cfg_path = config or ctx.config_path or None
    peer = load_config(cfg_path, PeerConfig) if cfg_path else PeerConfig()

    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    svc = ContextStore(state)
    key_src = Path(ctx.key_path or peer.private_key).expanduser()
    try:
        key = key_src.read_bytes()
        ca = Path(ctx.ca_path).read_bytes() if ctx.ca_path else b""
    except OSError as exc:
        raise ConfigError(f"context {ctx.name!r}: {exc.filename}: {exc.strerror}") from None
    _private_file(state / "id_ed25519", key)
    ca_rel = Path("contexts") / ctx.name / "ca.pem"
    if ca:
        _private_file(state / ca_rel, ca)
    import msgspec

    data = _read_yaml(cfg_path)
    data["control_socket"] = f"/run/{name}/node.sock"
    data["private_key"] = str(runtime_state / "id_ed25519")
    _private_file(state / "peer.yaml", _dump(data))
    copy = msgspec.structs.replace(
        ctx,
        key_path=str(runtime_state / "id_ed25519"),
        ca_path=str(runtime_state / ca_rel) if ca else "",
        config_path=str(runtime_state / "peer.yaml"),
    )
    svc.put(copy, activate=True)
    for f in state.rglob("*"):
        os.chmod(f, 0o700 if f.is_dir() else 0o600)

    cfg_arg = ["-c", str(runtime_state / "peer.yaml")]
    unit = Unit(
        name=name,
        description=f"tunnelmesh node (context {ctx.name})",
        exec_start=[*command(), *cfg_arg, "join", "--context", ctx.name, "--no-trust"],
        exec_stop_post=[*command(), *cfg_arg, "cleanup"],
        home=str(runtime_state),
        exit_gateway=bool(peer.allow_exit_traffic),
        write_etc=_needs_etc(peer.dns),
        protect_home="read-only" if _under_home(sys.executable) else "yes",
    )
    return _write_unit(root, unit), state


def install_serve(
    config: str, *, root: Path | None = None, sections: Any = None
) -> tuple[Path, Path]:
    """Write the unit and the state directory for ``serve -c CONFIG``; return both paths.

    Raises:
        ConfigError: the config cannot be read, or its data_dir is under a home directory.
    """
    from tunnelmesh.config import load_server_config

    cfg = load_server_config(config, sections)
    name = unit_name("serve")
    runtime_state = STATE_ROOT / name
    state = _rooted(root, runtime_state)
    data = _read_yaml(config)
    data_dir = Path(cfg.data_dir).expanduser()
    if not data_dir.is_absolute():
        data_dir = (Path(config).resolve().parent / data_dir).resolve()
    if _under_home(str(data_dir)):
        raise ConfigError(
            f"data_dir {data_dir} is under a home directory, which the service cannot see "
            "(ProtectHome): move it (for example to /var/lib/tunnelmesh)",
            path=config,
        )
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True, mode=0o700)
    os.chmod(state, 0o700)
    data["data_dir"] = str(data_dir)
    if cfg.join_mesh is not None:
        jm = dict(data.get("join_mesh") or {})
        jm["control_socket"] = f"/run/{name}/node.sock"
        key_src = join_mesh_key_path(cfg.join_mesh.private_key)
        if key_src.exists():
            _private_file(state / "id_ed25519", key_src.read_bytes())
            jm["private_key"] = str(runtime_state / "id_ed25519")
        data["join_mesh"] = jm
    _private_file(state / "server.yaml", _dump(data))
    rooted_data = _rooted(root, data_dir)
    rooted_data.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg_arg = ["-c", str(runtime_state / "server.yaml")]
    unit = Unit(
        name=name,
        description="tunnelmesh coordinator",
        exec_start=[*command(), "serve", *cfg_arg],
        exec_stop_post=[*command(), *cfg_arg, "cleanup", "--mode", "serve"],
        home=str(runtime_state),
        exit_gateway=bool(cfg.join_mesh is not None and cfg.join_mesh.allow_exit_traffic),
        write_etc=cfg.join_mesh is not None and _needs_etc(cfg.join_mesh.dns),
        read_write=[str(data_dir)],
        protect_home="read-only" if _under_home(sys.executable) else "yes",
    )
    return _write_unit(root, unit), state


def _rooted(root: Path | None, path: Path) -> Path:
    return path if root is None else root / path.relative_to("/")


def _write_unit(root: Path | None, unit: Unit) -> Path:
    path = _rooted(root, UNIT_DIR) / f"{unit.name}.service"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_unit(unit), encoding="utf-8")
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path


def installed(name: str, root: Path | None = None) -> tuple[Path, Path]:
    """The unit file and state directory of the unit ``name`` (they may not exist)."""
    return _rooted(root, UNIT_DIR) / f"{name}.service", _rooted(root, STATE_ROOT / name)


def uninstall(name: str, *, root: Path | None = None, purge: bool = False) -> list[str]:
    """Remove the unit file and state directory (and with ``purge`` a coordinator's
    data_dir); return what was removed. systemctl calls are the caller's."""
    unit, state = installed(name, root)
    removed: list[str] = []
    data_dir: str | None = None
    if purge and (state / "server.yaml").exists():
        data_dir = _read_yaml(str(state / "server.yaml")).get("data_dir")
    if unit.exists():
        unit.unlink()
        removed.append(str(unit))
    if state.exists():
        shutil.rmtree(state)
        removed.append(str(state))
    if data_dir:
        d = _rooted(root, Path(data_dir))
        if d.exists():
            shutil.rmtree(d)
            removed.append(str(d))
    return removed


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run systemctl; raises :class:`ServiceError` with its message when it fails."""
    exe = shutil.which("systemctl")
    if exe is None:
        raise ServiceError("systemctl is not installed")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"systemctl {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc
