"""``tunnelmesh proxy``: serve the header-routed proxy; ``proxy shim build``; ``proxy run``.

The routing rules are built once here, from every plugin's ``tunnelmesh_register_proxy_rules``;
the proxy never calls a hook per request.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

import click
from tunnelmesh.abc import ProxyRule
from tunnelmesh.control.urls import join_hostport

from tunnelmesh_proxy import listen as listen_mod
from tunnelmesh_proxy.mesh import HostsFileLookup, PeerLookup, resolver_lookup
from tunnelmesh_proxy.routing import Router

__all__ = ["build_router", "mesh_exposure", "proxy"]

_SECONDS = click.FloatRange(min=0)


def build_router(rule_classes: list[type[ProxyRule]], options: dict[str, Any]) -> Router:
    """Instantiate the registered rules (in registration order) for these options."""
    rules = []
    for cls in rule_classes:
        rule = cls.from_options(options)
        if rule is not None:
            rules.append(rule)
    return Router(rules)


def mesh_exposure(router: Router, addresses: list[tuple[str, int]]) -> list[str]:
    """The non-loopback listen addresses, when the router has the mesh rule (else [])."""
    if not any(rule.name == "mesh" for rule in router.rules):
        return []
    return [
        join_hostport(host, port)
        for host, port in addresses
        if not ipaddress.ip_address(host).is_loopback
    ]


def _registered_rules(ctx: click.Context) -> list[type[ProxyRule]]:
    pm = getattr(ctx.find_root().obj, "pm", None)
    if pm is None:
        from tunnelmesh.manager import make_plugin_manager

        pm = make_plugin_manager()
    return list(pm.build_registry("proxy_rules").proxy_rules.values())


@click.group(invoke_without_command=True)
@click.option(
    "--listen",
    "listen",
    metavar="IP:PORT",
    multiple=True,
    envvar=["TUNNELMESH_PROXY_LISTEN", "CMUX_LISTEN"],
    show_envvar=True,
    help="Address to listen on; repeat it or separate with commas. Duplicates and addresses a "
    "wildcard (0.0.0.0, [::]) of the same port covers are dropped.  [default: "
    "0.0.0.0:8080,127.0.0.1:8080]",
)
@click.option(
    "--upstream-host",
    metavar="HOST",
    default="127.0.0.1",
    show_default=True,
    envvar=["TUNNELMESH_PROXY_UPSTREAM_HOST", "CMUX_UPSTREAM_HOST"],
    show_envvar=True,
    help="Upstream for requests without a workspace (X-Cmux-Workspace-Internal or Host).",
)
@click.option(
    "--peers-file",
    metavar="PATH",
    envvar="TUNNELMESH_PROXY_PEERS_FILE",
    show_envvar=True,
    help="Hosts-format file (IP name ...) for X-Tunnelmesh-Peer; without it the peer's name "
    "<peer>.<mesh-domain> is resolved by the system resolver.",
)
@click.option(
    "--mesh/--no-mesh",
    "mesh",
    default=False,
    envvar="TUNNELMESH_PROXY_MESH",
    show_envvar=True,
    help="Enable the mesh rule (X-Tunnelmesh-Peer): whoever reaches the proxy can then connect "
    "to any port of any mesh peer as this node. Off by default; keep the proxy on loopback "
    "with it.  [default: no-mesh]",
)
@click.option(
    "--mesh-domain",
    default="tunnelmesh",
    show_default=True,
    envvar="TUNNELMESH_PROXY_MESH_DOMAIN",
    show_envvar=True,
    help="DNS suffix of mesh peers.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    envvar="TUNNELMESH_PROXY_WORKERS",
    show_envvar=True,
    help="Processes accepting on the same sockets (one core each).",
)
@click.option(
    "--header-timeout",
    type=_SECONDS,
    default=30.0,
    show_default=True,
    envvar="TUNNELMESH_PROXY_HEADER_TIMEOUT",
    show_envvar=True,
    help="Seconds a client has to send a complete request head.",
)
@click.option(
    "--idle-timeout",
    type=_SECONDS,
    default=60.0,
    show_default=True,
    envvar="TUNNELMESH_PROXY_IDLE_TIMEOUT",
    show_envvar=True,
    help="Seconds without traffic before a keep-alive connection or a request in flight is closed.",
)
@click.option(
    "--tunnel-idle-timeout",
    type=_SECONDS,
    default=0.0,
    show_default=True,
    envvar="TUNNELMESH_PROXY_TUNNEL_IDLE_TIMEOUT",
    show_envvar=True,
    help="The same for WebSocket and CONNECT tunnels; 0 keeps them open.",
)
@click.option(
    "--connect-timeout",
    type=_SECONDS,
    default=5.0,
    show_default=True,
    envvar="TUNNELMESH_PROXY_CONNECT_TIMEOUT",
    show_envvar=True,
    help="Seconds to connect to an upstream.",
)
@click.option(
    "--pool-size",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    envvar="TUNNELMESH_PROXY_POOL_SIZE",
    show_envvar=True,
    help="Idle keep-alive connections kept per upstream.",
)
@click.option(
    "--netns/--no-netns",
    default=False,
    show_default=True,
    envvar="TUNNELMESH_PROXY_NETNS",
    show_envvar=True,
    help="Reach workspaces started with `proxy run --netns` inside their namespace (root).",
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    default="auto",
    show_default=True,
    envvar="TUNNELMESH_PROXY_LOOP",
    show_envvar=True,
    help="Event loop; auto takes uvloop when it is installed.",
)
@click.pass_context
def proxy(ctx: click.Context, /, **opts: Any) -> None:
    """Header-routed reverse proxy: one port reaches the services of every workspace.

    \b
    Routing, per request (keep-alive connections are routed request by request):
      X-Cmux-Port-Internal: PORT             the upstream port (1-65535)
      X-Cmux-Workspace-Internal: NAME        upstream 127.18.(N>>8).(N&255) for NAME ending
                                             in N; other names are hashed (FNV-1a)
      Host: <workspace>-<port>.localhost     either of the two above, when absent
      X-Tunnelmesh-Peer: NAME                that mesh peer's IP, with the port header
                                             (only with --mesh)
    Without a workspace the upstream host is --upstream-host. Errors: 400 with a plain-text
    reason for a missing or bad header, 502 when the upstream cannot be reached.

    HTTP/1.1 with streaming both ways, WebSocket and other upgrades, and CONNECT tunnels.
    """
    if ctx.invoked_subcommand is not None:
        return
    from tunnelmesh_proxy.server import serve

    try:
        addresses = listen_mod.parse_listen(opts["listen"] or listen_mod.DEFAULT_LISTEN)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--listen'") from None
    lookup: PeerLookup
    if opts["peers_file"]:
        lookup = HostsFileLookup(opts["peers_file"], opts["mesh_domain"])
    else:
        lookup = resolver_lookup(opts["mesh_domain"])
    rule_options = {
        "upstream_host": opts["upstream_host"],
        "peer_lookup": lookup,
        "mesh": opts["mesh"],
    }
    router = build_router(_registered_rules(ctx), rule_options)
    exposed = mesh_exposure(router, addresses)
    if exposed:
        click.echo(
            "tunnelmesh proxy: warning: the mesh rule (--mesh) listens on "
            f"{', '.join(exposed)}: anyone who reaches it can connect to every mesh peer's "
            "ports as this node; listen on 127.0.0.1 only, or firewall the port",
            err=True,
        )
    names = ", ".join(rule.name for rule in router.rules) or "none"
    workers = opts["workers"]
    server_options: dict[str, Any] = {
        "header_timeout": opts["header_timeout"],
        "idle_timeout": opts["idle_timeout"],
        "tunnel_idle_timeout": opts["tunnel_idle_timeout"],
        "connect_timeout": opts["connect_timeout"],
        "pool_size": opts["pool_size"],
    }
    if opts["netns"]:
        from tunnelmesh_proxy.netns import workspace_connector

        server_options["connector"] = workspace_connector()

    def announce(bound: str) -> None:
        click.echo(
            f"tunnelmesh proxy: listening on {bound} (upstream host {opts['upstream_host']}; "
            f"rules {names}; {workers} worker{'s' if workers > 1 else ''})"
        )
        sys.stdout.flush()

    status = serve(
        lambda: router,
        addresses,
        workers=workers,
        loop=opts["loop"],
        announce=announce,
        **server_options,
    )
    ctx.exit(status)


@proxy.group()
def shim() -> None:
    """The LD_PRELOAD shim that keeps a workspace's processes on the workspace IP."""


@shim.command("build")
@click.option(
    "-o",
    "--output",
    metavar="PATH",
    envvar="TUNNELMESH_PROXY_SHIM",
    show_envvar=True,
    help="Where to write the library; default: a cache directory, reused while the source is "
    "unchanged.",
)
@click.option(
    "--cc",
    metavar="COMPILER",
    envvar="TUNNELMESH_PROXY_CC",
    show_envvar=True,
    help="C compiler.  [default: $CC, else cc]",
)
@click.option(
    "-f",
    "--force",
    is_flag=True,
    envvar="TUNNELMESH_PROXY_SHIM_FORCE",
    show_envvar=True,
    help="Compile even when the library is up to date.",
)
def shim_build(output: str | None, cc: str | None, force: bool) -> None:
    """Compile the shim with the system C compiler and print the library's path.

    It interposes bind(2), connect(2) and getaddrinfo(3): in a workspace (CMUX_WORKSPACE_INTERNAL,
    or a working directory named workspace-*), 0.0.0.0 and 127.0.0.1 become the workspace IP.
    """
    from tunnelmesh_proxy.shim import build_shim

    click.echo(build_shim(output, cc=cc, force=force))


@proxy.command(context_settings={"allow_interspersed_args": False})
@click.option(
    "-w",
    "--workspace",
    metavar="NAME",
    required=True,
    envvar=["TUNNELMESH_PROXY_WORKSPACE", "CMUX_WORKSPACE_INTERNAL"],
    show_envvar=True,
    help="The workspace (workspace-N, or any name: it is hashed).",
)
@click.option(
    "--netns",
    is_flag=True,
    envvar="TUNNELMESH_PROXY_RUN_NETNS",
    show_envvar=True,
    help="Run in a network namespace of its own instead of the LD_PRELOAD shim (root); start "
    "the proxy with --netns to reach it.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(workspace: str, netns: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND in a workspace: its servers bind, and its clients reach, the workspace IP.

    \b
    tunnelmesh proxy run --workspace workspace-1 -- python -m http.server 3000
    curl -H 'X-Cmux-Workspace-Internal: workspace-1' -H 'X-Cmux-Port-Internal: 3000' ...
    """
    from tunnelmesh_proxy.routing import workspace_ip

    ip = workspace_ip(workspace)
    if ip is None:
        raise click.BadParameter(f"invalid workspace name: {workspace}", param_hint="'--workspace'")
    if netns:
        from tunnelmesh_proxy.netns import run_in_namespace

        sys.exit(run_in_namespace(workspace, list(command)))
    from tunnelmesh_proxy.shim import build_shim, shim_environment

    env = shim_environment(os.environ, build_shim(None), workspace)
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as exc:
        raise click.ClickException(f"cannot run {command[0]}: {exc.strerror}") from None
