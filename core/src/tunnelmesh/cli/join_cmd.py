"""``tunnelmesh join``: register with a coordinator, write the context, run the daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, NamedTuple

import click
from click.core import ParameterSource

from tunnelmesh.aio.stopping import finish
from tunnelmesh.cli._loop import run_fast
from tunnelmesh.cli._options import config_option
from tunnelmesh.cli._root import Context, apply_config_log_level
from tunnelmesh.config import PeerConfig, load_peer_config
from tunnelmesh.control.contexts import Context as MeshContext
from tunnelmesh.control.contexts import ContextStore
from tunnelmesh.control.urls import normalize_server_url
from tunnelmesh.errors import ConfigError, TunnelmeshError
from tunnelmesh.identity import Identity, configured_key_path
from tunnelmesh.logs import add_secret


def _hostname_label() -> str:
    name = socket.gethostname().split(".")[0].lower()
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")
    return name[:63] or "node"


@click.command()
@config_option("Peer config (default: ~/.tunnelmesh/config.yaml, ...).")
@click.option(
    "-s",
    "--server",
    metavar="URL",
    envvar="TUNNELMESH_SERVER",
    show_envvar=True,
    help="Coordinator URL; https:// and :8443 are added when missing.",
)
@click.option(
    "-t",
    "--token",
    metavar="TOKEN",
    envvar="TUNNELMESH_TOKEN",
    show_envvar=True,
    help="The mesh join token, only for a first join. On the command line it is visible to "
    "local users until join moves it into its environment and restarts itself: prefer "
    "--token-file, TUNNELMESH_TOKEN or the prompt.",
)
@click.option(
    "--token-file",
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TUNNELMESH_TOKEN_FILE",
    show_envvar=True,
    help="Read the mesh join token from this file (first line).",
)
@click.option(
    "--context",
    "context_name",
    metavar="NAME",
    envvar="TUNNELMESH_CONTEXT",
    show_envvar=True,
    help="Context to write (default: the active one, or 'default').",
)
@click.option(
    "-n",
    "--name",
    metavar="NAME",
    envvar="TUNNELMESH_NAME",
    show_envvar=True,
    help="This peer's name (a DNS label; default: config name or hostname).",
)
@click.option(
    "--key",
    "key_path",
    metavar="PATH",
    envvar="TUNNELMESH_KEY",
    show_envvar=True,
    help="ed25519 key (OpenSSH); created when missing (default ~/.tunnelmesh/id_ed25519).",
)
@click.option(
    "--no-rename",
    is_flag=True,
    envvar="TUNNELMESH_NO_RENAME",
    show_envvar=True,
    help="Fail if the name belongs to another key (default: take name-2, ...).",
)
@click.option(
    "-y",
    "--yes",
    is_flag=True,
    envvar="TUNNELMESH_YES",
    show_envvar=True,
    help="Install the mesh CA in the system trust store without asking.",
)
@click.option(
    "--no-trust",
    is_flag=True,
    envvar="TUNNELMESH_NO_TRUST",
    show_envvar=True,
    help="Do not install the mesh CA in the system trust store.",
)
@click.option(
    "--once",
    is_flag=True,
    envvar="TUNNELMESH_ONCE",
    show_envvar=True,
    help="Register and write the context, then exit (no daemon).",
)
@click.option(
    "--no-tun",
    is_flag=True,
    envvar="TUNNELMESH_NO_TUN",
    show_envvar=True,
    help="Run the control plane only: no TUN device, no transports (needs no root).",
)
@click.option(
    "--allow-exit-traffic",
    is_flag=True,
    default=None,
    envvar="TUNNELMESH_ALLOW_EXIT_TRAFFIC",
    show_envvar=True,
    help="Be an exit node: forward and masquerade other peers' internet traffic.",
)
@click.option(
    "--exit-node",
    metavar="NAME|PEER_ID",
    envvar="TUNNELMESH_EXIT_NODE",
    show_envvar=True,
    help="Route internet traffic through this peer (an exit node); mesh traffic stays direct. "
    "A name is pinned to the key it has the first time; a peer ID is that key.",
)
@click.option(
    "--duration",
    type=float,
    metavar="SECONDS",
    envvar="TUNNELMESH_DURATION",
    show_envvar=True,
    help="Stop the daemon after this many seconds (tests).",
)
@click.pass_obj
def join(
    ctx: Context,
    config_path: str | None,
    server: str | None,
    token: str | None,
    token_file: Path | None,
    context_name: str | None,
    name: str | None,
    key_path: str | None,
    no_rename: bool,
    yes: bool,
    no_trust: bool,
    once: bool,
    no_tun: bool,
    allow_exit_traffic: bool | None,
    exit_node: str | None,
    duration: float | None,
) -> None:
    """Join a mesh: register this node, then keep it online until SIGINT/SIGTERM.

    The daemon brings up the mesh node: a TUN device with the mesh IP, the transports of the
    installed plugins (UDP: WireGuard), the packet filter and the DNS resolver; this needs root.
    With --no-tun (or when no transport plugin is installed) only the control plane runs.

    Registration proves possession of this node's ed25519 key (a signed challenge); a key the
    coordinator does not know yet also needs the mesh join token, from --token-file,
    TUNNELMESH_TOKEN or a prompt (hidden input). Before the token is used, the coordinator must
    prove it knows the token too (an HMAC over its CA certificate); the CA is then pinned in
    the context, which never stores the token. Joining again with the same key needs no token
    and keeps the same mesh IP. Without --server the stored context is used.

    Exit nodes: --allow-exit-traffic makes this node an exit (IP forwarding and NAT while it
    runs); --exit-node NAME sends this node's internet traffic through the peer NAME (which
    must allow it). The exit's key is pinned when the name is first resolved (kept in the
    context): a peer under that name with another key is refused. Both are undone on exit,
    and after a crash at the next start.

    Example: tunnelmesh join --server coord.example.com --token-file token.txt --context work
    """
    from tunnelmesh.control import daemon, trust

    click_ctx = click.get_current_context()
    if token and click_ctx.get_parameter_source("token") == ParameterSource.COMMANDLINE:
        _restart_without_token_in_argv(token)

    # From here on a SIGTERM runs the cleanup path, however early it comes: before the event
    # loop it raises (nothing was changed yet), then the loop's handler sets `stop`.
    with _EarlySigterm() as early:
        if yes and no_trust:
            raise click.UsageError("--yes and --no-trust contradict each other")
        store = ContextStore()
        # plugins' sections (wireguard: ...) decode into their Structs
        cfg = load_peer_config(config_path or ctx.config, ctx.pm.build_registry().config_sections)
        apply_config_log_level(cfg.log_level)
        cfg = _with_exit_options(cfg, allow_exit_traffic, exit_node)
        ctx_name = context_name or store.active or "default"
        existing = None
        if ctx_name in store.names():
            existing = store.get(ctx_name)
        server = server or cfg.server or (existing.server if existing else "")
        if not server:
            raise ConfigError("no coordinator given: pass --server URL (or TUNNELMESH_SERVER)")
        url = normalize_server_url(server)
        pinned_ca = _pinned_ca(existing, url)
        token = token or _read_token_file(token_file) or cfg.auth_token
        if not token and not pinned_ca:
            token = _prompt_token()
        add_secret(token, existing.session_token if existing else None)
        peer_name = (
            name or cfg.name or (existing.peer_name if existing else "") or _hostname_label()
        )
        if key_path:
            key = Path(key_path).expanduser()
        elif existing and existing.key_path:
            key = Path(existing.key_path)
        else:
            key = configured_key_path(cfg.private_key)

        data_plane = False
        if not once and not no_tun:
            transports = ctx.pm.build_registry().transports
            if transports:
                from tunnelmesh.node import can_create_tun

                why = can_create_tun()
                if why is not None:
                    raise TunnelmeshError(f"{why} (or pass --no-tun for the control plane only)")
                data_plane = True
            else:
                click.echo(
                    "no transport plugin is loaded (pip install 'tunnelmesh[udp]'): "
                    "running the control plane only",
                    err=True,
                )
        if not once and not data_plane and (cfg.allow_exit_traffic or cfg.exit_node):
            click.echo("warning: exit node settings need the data plane (TUN); ignored", err=True)

        install = _decide_trust(yes=yes, no_trust=no_trust)

        def trust_ca(ca_pem: str) -> Path | None:
            if not install:
                return None
            try:
                return trust.install_ca(ca_pem, ctx_name)
            except TunnelmeshError as exc:
                click.echo(f"warning: CA not installed: {exc}", err=True)
                return None

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            handled = _add_stop_handlers(loop, stop)
            try:
                await joined(stop)
            finally:
                for sig in handled:
                    loop.remove_signal_handler(sig)
                early.arm()

        async def joined(stop: asyncio.Event) -> None:
            from tunnelmesh.control.client import CoordinatorUnreachable

            try:
                result = await _unless_stopped(
                    stop,
                    daemon.join(
                        server=url,
                        token=token,
                        context_name=ctx_name,
                        name=peer_name,
                        key_path=key,
                        store=store,
                        trust=trust_ca,
                        rename=not no_rename,
                        config_path=str(Path(config_path).resolve()) if config_path else "",
                        pinned_ca=pinned_ca,
                        on_pending=lambda reg: _say_pending(reg, wait=not once),
                    ),
                )
            except CoordinatorUnreachable as exc:
                # A node that already belongs to this mesh starts from its stored context and
                # cached peers, and forwards to them until the coordinator is back.
                if not (data_plane and existing and existing.session_token and existing.mesh_ip):
                    raise
                if existing.server != url or existing.peer_name != peer_name:
                    raise
                click.echo(f"warning: {exc}", err=True)
                resumed = _Resumed(existing, None, Identity.load(key))
                click.echo(
                    f"coordinator unreachable; resuming context {ctx_name!r} as {existing.peer_name}: "
                    f"mesh IP {existing.mesh_ip}, with the cached peers"
                )
                await _run_node(ctx, cfg, resumed, store, duration, stop)
                return
            if result is None:
                click.echo("stopped before joining", err=True)
                return
            reg = result.registration
            if result.key_created:
                click.echo(f"created key {key} ({result.identity.fingerprint})")
            if reg.renamed:
                click.echo(f"name {peer_name!r} belongs to another key; registered as {reg.name!r}")
            if reg.pending:  # --once: the context is written; join again once approved
                return
            admin = " (admin)" if reg.is_admin else ""
            click.echo(
                f"joined {url} as {reg.name}{admin}: mesh IP {reg.mesh_ip}, "
                f"{reg.name}.{reg.domain}; context {ctx_name!r}"
            )
            if result.context.trusted_ca_path:
                click.echo(f"mesh CA trusted via {result.context.trusted_ca_path}")
            if once:
                return
            if data_plane:
                await _run_node(ctx, cfg, result, store, duration, stop)
                return
            client = daemon.client_for(
                result.context,
                store,
                listen_port=cfg.transports.listen_port,
                identity=result.identity,
            )
            client.registration = reg
            click.echo("running; Ctrl-C to stop", err=True)
            await daemon.run_daemon(client, duration=duration, stop=stop)

        if data_plane:
            run_fast(main())  # uvloop: the forwarder's hot path gains from it
        else:
            asyncio.run(main())


def _restart_without_token_in_argv(token: str) -> None:
    """Move a ``--token`` given on the command line into the environment and re-exec.

    /proc/PID/cmdline is readable by every local user; the environment is not. The restarted
    process reads the token from TUNNELMESH_TOKEN, so its argv never holds it. When this
    process's own argv does not hold the token (an in-process caller), nothing is done.
    """
    argv = scrub_token(list(sys.orig_argv), token)
    if argv is None:
        return
    click.echo(
        "warning: --token on the command line is visible to local users; join moved it to "
        "its environment and restarted (use --token-file or TUNNELMESH_TOKEN)",
        err=True,
    )
    env = dict(os.environ, TUNNELMESH_TOKEN=token)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def scrub_token(argv: list[str], token: str) -> list[str] | None:
    """``argv`` without the ``--token``/``-t`` option holding ``token``; None when absent."""
    out: list[str] = []
    found = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--token", "-t") and i + 1 < len(argv) and argv[i + 1] == token:
            found = True
            i += 2
            continue
        if arg in (f"--token={token}", f"-t{token}"):
            found = True
            i += 1
            continue
        out.append(arg)
        i += 1
    return out if found else None


def _say_pending(reg: Any, *, wait: bool) -> bool:
    """approve_new_peers: say that this key waits for an admin; whether to wait here."""
    click.echo(
        f"registered as {reg.name} (peer ID {reg.peer_id}); this key waits for an admin's "
        f"approval: tunnelmesh peers approve {reg.name}"
        + ("; waiting..." if wait else "; run join again once approved"),
        err=True,
    )
    return wait


def _pinned_ca(existing: MeshContext | None, url: str) -> str:
    """The CA pinned by an earlier join to ``url`` ("" when there is none)."""
    if existing is None or existing.server != url or not existing.ca_path:
        return ""
    try:
        return Path(existing.ca_path).read_text(encoding="ascii")
    except OSError:
        return ""


def _read_token_file(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file: {exc.strerror}", path=str(path)) from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError("the token file is empty", path=str(path))
    return token


def _prompt_token() -> str:
    """Ask for the token with hidden input; without a terminal, say how to give it."""
    if not sys.stdin.isatty():
        raise ConfigError(
            "no mesh join token: this key has not joined this mesh yet; give the token with "
            "--token-file PATH or TUNNELMESH_TOKEN (there is no terminal to ask on)"
        )
    token = str(click.prompt("mesh join token", hide_input=True, err=True)).strip()
    if not token:
        raise ConfigError("no mesh join token given")
    return token


def _decide_trust(*, yes: bool, no_trust: bool) -> bool:
    """Whether to install the mesh CA, decided before anything is registered.

    Asking after registration left a ghost peer behind when the answer never came (no terminal,
    Ctrl-C): registered on the coordinator, but no context written here. Without a terminal
    there is nobody to ask: the CA is not installed, and the user is told how to install it.
    """
    if no_trust:
        return False
    if yes:
        return True
    if not sys.stdin.isatty():
        click.echo(
            "not installing the mesh CA in the system trust store (no terminal to ask; "
            "pass --yes to install it, --no-trust to not be told)",
            err=True,
        )
        return False
    return click.confirm(
        "Install the mesh CA in the system trust store (lets browsers reach "
        "https://this.tm and other mesh services without warnings)?",
        default=False,
    )


def _with_exit_options(
    cfg: PeerConfig, allow_exit_traffic: bool | None, exit_node: str | None
) -> PeerConfig:
    """The config with ``--allow-exit-traffic`` / ``--exit-node`` applied over its keys."""
    changes: dict[str, Any] = {}
    if allow_exit_traffic is not None:
        changes["allow_exit_traffic"] = allow_exit_traffic
    if exit_node is not None:
        name = exit_node.strip().lower().removesuffix(".")
        for domain in (".tunnelmesh", ".tm", ".mesh"):
            name = name.removesuffix(domain)
        changes["exit_node"] = name
    if not changes:
        return cfg
    import msgspec

    return msgspec.structs.replace(cfg, **changes)


class _Terminated(BaseException):
    """SIGTERM before ``join``'s event loop handles it (a BaseException, as KeyboardInterrupt:
    no ``except Exception`` on the way may swallow it)."""


class _EarlySigterm:
    """``join``'s SIGTERM handler outside its event loop.

    The default action killed a ``join`` that got SIGTERM before the loop's handlers were
    installed (while it registered), with no cleanup. Here such a SIGTERM raises
    :class:`_Terminated`, which unwinds (nothing was changed yet: the TUN device, routes and
    resolver come after the loop's handlers) and ends ``join`` with "stopped" and status 0.
    Not in the main thread (an in-process caller) it does nothing.
    """

    def __init__(self) -> None:
        self._old: Any = None
        self._armed = False

    def _handler(self, signum: int, frame: Any) -> None:
        raise _Terminated

    def arm(self) -> None:
        """(Re)install the handler: the loop's ``remove_signal_handler`` leaves SIG_DFL."""
        if self._armed:
            signal.signal(signal.SIGTERM, self._handler)

    def __enter__(self) -> _EarlySigterm:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            return self
        self._armed = True
        return self

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        if self._armed:
            signal.signal(signal.SIGTERM, self._old)
        if typ is not None and issubclass(typ, _Terminated):
            click.echo("stopped (SIGTERM)", err=True)
            return True
        return False


def _add_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[int]:
    """SIGINT and SIGTERM set ``stop``; the signals handled (none off the main thread)."""
    handled: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            continue
        handled.append(sig)
    return handled


async def _unless_stopped(stop: asyncio.Event, coro: Any) -> Any:
    """``coro``'s result, or None when ``stop`` is set first (``coro`` is then cancelled)."""
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
        await finish(waiter)
    if not task.done() or task.cancelled():
        await finish(task)
        return None
    return task.result()


class _Resumed(NamedTuple):
    context: MeshContext
    registration: None
    identity: Identity


async def _run_node(
    ctx: Context,
    cfg: PeerConfig,
    result: Any,
    store: ContextStore,
    duration: float | None,
    stop: asyncio.Event,
) -> None:
    from tunnelmesh.node import Node

    node = Node(
        cfg,
        context=result.context,
        store=store,
        identity=result.identity,
        pm=ctx.pm,
        notify=click.echo,
    )
    if result.registration is not None:
        node.client.registration = result.registration
    try:
        await node.start()
        click.echo("running; Ctrl-C to stop", err=True)
        await node.run(stop, duration)
    finally:
        await node.aclose()
        click.echo("node stopped")
