"""The root click group and the options every command shares."""

from __future__ import annotations

import logging

import click
from click.core import ParameterSource

from tunnelmesh import __version__
from tunnelmesh._manager import PluginManager, make_plugin_manager
from tunnelmesh.cli.lazy import LazyGroup
from tunnelmesh.logs import LOG_FORMATS, setup_logging

LOG_LEVELS = ("debug", "info", "warning", "error")


def apply_config_log_level(level: str | None) -> None:
    """A config file's ``log_level``, unless ``--log-level``/``TUNNELMESH_LOG_LEVEL`` was given."""
    if not level:
        return
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        source = ctx.find_root().get_parameter_source("log_level")
        if source not in (None, ParameterSource.DEFAULT):
            return
    logging.getLogger().setLevel(level.upper())


class Context:
    """What the root group hands to every command (``click.pass_obj``)."""

    def __init__(self, pm: PluginManager, config: str | None, log_level: str) -> None:
        self.pm = pm
        self.config = config
        self.log_level = log_level


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-c",
    "--config",
    metavar="PATH",
    envvar="TUNNELMESH_CONFIG",
    show_envvar=True,
    help="Config file; without it the usual places are searched (see docs/config.md).",
)
@click.option(
    "-l",
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    envvar="TUNNELMESH_LOG_LEVEL",
    show_envvar=True,
    help="How much to log.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    default="text",
    show_default=True,
    envvar="TUNNELMESH_LOG_FORMAT",
    show_envvar=True,
    help="Log lines as text, or as JSON objects (time, level, logger, message, fields).",
)
@click.version_option(__version__, "-V", "--version", prog_name="tunnelmesh")
@click.pass_context
def cli(ctx: click.Context, config: str | None, log_level: str, log_format: str) -> None:
    """tunnelmesh: a peer-to-peer encrypted mesh network.

    Nodes get a mesh IP on a TUN interface and talk directly to each other through encrypted
    tunnels; a coordination server does discovery, IP allocation and NAT traversal help.
    Features come from plugins: `tunnelmesh plugins` lists what is installed.
    """
    setup_logging(log_level, log_format.lower())
    pm = ctx.obj if isinstance(ctx.obj, PluginManager) else make_plugin_manager()
    ctx.obj = Context(pm, config, log_level)


CORE_COMMANDS: dict[str, tuple[str, str]] = {
    # name: ("module:attribute", the one-line help --help lists; a test keeps it the command's)
    "plugins": (
        "tunnelmesh.cli.plugins_cmd:plugins",
        "List installed plugins with their version, status and hooks.",
    ),
    "init": (
        "tunnelmesh.cli.init_cmd:init",
        "Write commented example config files (server.yaml and/or peer.yaml).",
    ),
    "serve": (
        "tunnelmesh.cli.serve_cmd:serve",
        "Run the coordination server until SIGINT/SIGTERM; SIGHUP re-reads the config.",
    ),
    "join": (
        "tunnelmesh.cli.join_cmd:join",
        "Join a mesh: register this node, then keep it online until SIGINT/SIGTERM.",
    ),
    "context": (
        "tunnelmesh.cli.context_cmd:context",
        "Manage contexts: one per mesh joined (stored in ~/.tunnelmesh/contexts.json; "
        "TUNNELMESH_HOME moves it).",
    ),
    "status": (
        "tunnelmesh.cli.status_cmd:status",
        "Show this node's name, mesh IP, whether the coordinator is reachable, how many peers "
        "are online and which transports are in use; on a WireGuard concentrator (tunnelmesh "
        "wg), also where its clients dial it and how many of them it serves.",
    ),
    "peers": (
        "tunnelmesh.cli.peers_cmd:peers",
        "List the mesh's peers: name, mesh IP, online, exit, transport, RTT, traffic, last "
        "seen, why.",
    ),
    "leave": (
        "tunnelmesh.cli.leave_cmd:leave",
        "Leave the mesh: the coordinator frees this node's mesh IP.",
    ),
    "token": (
        "tunnelmesh.cli.token_cmd:token_group",
        "The mesh join token: it lets a new key join, and nothing else.",
    ),
    "group": (
        "tunnelmesh.cli.group_cmd:group_group",
        "Groups of peers (kept by peer ID) that S3 buckets and shares can grant to.",
    ),
    "filter": (
        "tunnelmesh.cli.filter_cmd:filter_group",
        "Show and change the running daemon's packet filter (needs root).",
    ),
    "dns": ("tunnelmesh.cli.dns_cmd:dns", "The built-in mesh DNS resolver."),
    "demo": (
        "tunnelmesh.cli.demo_cmd:demo",
        "Run a coordinator and three peers in network namespaces (one behind a NAT).",
    ),
    "service": (
        "tunnelmesh.cli.service_cmd:service",
        "Install and manage tunnelmesh as a systemd service (see docs/service.md).",
    ),
    "benchmark": (
        "tunnelmesh.cli.benchmark_cmd:benchmark",
        "Measure throughput, round trip and loss to PEER through the mesh.",
    ),
    "cleanup": (
        "tunnelmesh.cli.cleanup_cmd:cleanup",
        "Remove the routes, nftables table, ip_forward and resolver changes a crashed node left.",
    ),
}
"""Core's commands, imported only when used (:mod:`tunnelmesh.cli.lazy`)."""


def build_cli(pm: PluginManager | None = None) -> click.Group:
    """Return the root group with core commands and every plugin's commands added.

    Commands are named by import path and imported when they are used, so building the group
    (and ``tunnelmesh --help``) imports none of them.
    """
    if pm is None:
        pm = make_plugin_manager()
    root = LazyGroup(
        name=cli.name,
        callback=cli.callback,
        params=list(cli.params),
        help=cli.help,
        context_settings=dict(cli.context_settings),
    )
    for name, (import_path, short_help) in CORE_COMMANDS.items():
        root.add_lazy_command(name, import_path, short_help)
    pm.hook.tunnelmesh_register_commands(cli=root)
    return root
