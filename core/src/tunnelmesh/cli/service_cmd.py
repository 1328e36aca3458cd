"""``tunnelmesh service``: run join (per context) or serve as a hardened systemd service."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tunnelmesh.cli._options import config_option
from tunnelmesh.cli._root import Context
from tunnelmesh.errors import TunnelmeshError

F = TypeVar("F", bound=Callable[..., Any])

NO_SYSTEMD = (
    "systemd is not running on this host (no /run/systemd/system): run `tunnelmesh join` "
    "(or `serve`) under your own init system or in a container instead"
)


def _which(f: F) -> F:
    f = click.option(
        "--mode",
        type=click.Choice(["join", "serve"]),
        default="join",
        show_default=True,
        envvar="TUNNELMESH_MODE",
        show_envvar=True,
        help="The node of a context (join), or the coordinator (serve).",
    )(f)
    return click.option(
        "--context",
        "context_name",
        metavar="NAME",
        envvar="TUNNELMESH_CONTEXT",
        show_envvar=True,
        help="With --mode join: the context (default: the active one).",
    )(f)


def _root_option(f: F) -> F:
    return click.option(
        "--root",
        metavar="DIR",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="TUNNELMESH_SERVICE_ROOT",
        show_envvar=True,
        help="Write under DIR instead of / and call no systemctl (like systemctl --root).",
    )(f)


def _name(mode: str, context_name: str | None) -> str:
    from tunnelmesh.control.contexts import ContextStore
    from tunnelmesh.service.systemd import unit_name

    if mode == "serve":
        return unit_name("serve")
    return unit_name("join", context_name or ContextStore().get(None).name)


def _need_systemd() -> None:
    from tunnelmesh.service.systemd import systemd_running

    if not systemd_running():
        raise TunnelmeshError(NO_SYSTEMD)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise TunnelmeshError("installing a system service needs root: run it with sudo")


@click.group()
def service() -> None:
    """Install and manage tunnelmesh as a systemd service (see docs/service.md).

    `service install` writes a hardened unit (Type=notify, only CAP_NET_ADMIN and
    CAP_NET_BIND_SERVICE, ProtectSystem=strict, ...) named tunnelmesh-<context> for the node
    of a context, or tunnelmesh-server for the coordinator (--mode serve), and a state
    directory (0700) holding the service's copy of the context or config: the unit itself
    holds no secret. On a host without systemd each command says so in one line.
    """


@service.command()
@_which
@config_option("join: the peer config (default: the context's); serve: server.yaml (required).")
@click.option(
    "--no-start",
    is_flag=True,
    envvar="TUNNELMESH_NO_START",
    show_envvar=True,
    help="Install and enable, but do not start it now.",
)
@_root_option
@click.pass_obj
def install(
    ctx: Context,
    mode: str,
    context_name: str | None,
    config_path: str | None,
    no_start: bool,
    root: Path | None,
) -> None:
    """Install (or update) the unit, enable it at boot and start it."""
    from tunnelmesh.service import systemd

    if root is None:
        _need_systemd()
        _need_root()
    if mode == "serve":
        config = config_path or ctx.config or "server.yaml"
        registry = ctx.pm.build_registry()
        unit, state = systemd.install_serve(config, root=root, sections=registry.config_sections)
    else:
        unit, state = systemd.install_join(
            context_name, config=config_path or ctx.config, root=root
        )
    name = unit.stem
    click.echo(f"wrote {unit} and {state}/ (0700)")
    if root is not None:
        return
    systemd.systemctl("daemon-reload")
    systemd.systemctl("enable", f"{name}.service")
    if not no_start:
        systemd.systemctl("restart", f"{name}.service")
        click.echo(f"{name} enabled and started; `tunnelmesh service status` shows it")
    else:
        click.echo(f"{name} enabled; `tunnelmesh service start` starts it")


@service.command()
@_which
@click.option(
    "--purge",
    is_flag=True,
    envvar="TUNNELMESH_PURGE",
    show_envvar=True,
    help="serve: also delete the coordinator's data_dir (its CA and every peer).",
)
@_root_option
@click.pass_obj
def uninstall(
    ctx: Context, mode: str, context_name: str | None, purge: bool, root: Path | None
) -> None:
    """Stop and disable the unit, undo what the node left, remove the unit and its state."""
    from tunnelmesh.service import systemd
    from tunnelmesh.service.cleanup import cleanup

    name = _name(mode, context_name)
    unit, state = systemd.installed(name, root)
    if root is None:
        _need_systemd()
        _need_root()
        if unit.exists():
            systemd.systemctl("disable", "--now", f"{name}.service")
    if root is None and (state / "peer.yaml").exists():
        from tunnelmesh.config import load_peer_config

        for line in cleanup(load_peer_config(str(state / "peer.yaml"))):
            click.echo(f"cleanup: {line}")
    removed = systemd.uninstall(name, root=root, purge=purge)
    if root is None:
        systemd.systemctl("daemon-reload")
        with _quiet():
            systemd.systemctl("reset-failed", f"{name}.service")
    for path in removed:
        click.echo(f"removed {path}")
    if not removed:
        click.echo(f"{name} is not installed")


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], TunnelmeshError)  # type: ignore[arg-type]


def _systemctl_command(verb: str, doc: str) -> click.Command:
    @click.command(name=verb, help=doc)
    @_which
    def run(mode: str, context_name: str | None) -> None:
        from tunnelmesh.service import systemd

        _need_systemd()
        name = _name(mode, context_name)
        if verb == "status":
            exe = shutil.which("systemctl") or "systemctl"
            os.execv(exe, [exe, "status", "--no-pager", f"{name}.service"])
        systemd.systemctl(verb, f"{name}.service")
        click.echo(f"{name}: {verb} done")

    return run


for _verb, _doc in (
    ("start", "Start the service."),
    ("stop", "Stop the service (ExecStopPost runs `tunnelmesh cleanup`)."),
    ("restart", "Restart the service."),
    ("status", "systemctl status of the service."),
):
    service.add_command(_systemctl_command(_verb, _doc))


@service.command()
@_which
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    envvar="TUNNELMESH_FOLLOW",
    show_envvar=True,
    help="Keep printing new lines.",
)
@click.option(
    "-n",
    "--lines",
    type=int,
    default=100,
    show_default=True,
    envvar="TUNNELMESH_LINES",
    show_envvar=True,
    help="How many recent lines.",
)
def logs(mode: str, context_name: str | None, follow: bool, lines: int) -> None:
    """The service's log (journalctl -u UNIT)."""
    _need_systemd()
    name = _name(mode, context_name)
    exe = shutil.which("journalctl")
    if exe is None:
        raise TunnelmeshError("journalctl is not installed")
    os.execv(exe, [exe, "-u", f"{name}.service", "-n", str(lines), *(["-f"] if follow else [])])
