"""The root click group and the options every command shares."""

from __future__ import annotations

import click

from tunnelmesh import __version__
from tunnelmesh._manager import PluginManager, make_plugin_manager
from tunnelmesh.logs import LOG_FORMATS, setup_logging

LOG_LEVELS = ("debug", "info", "warning", "error")


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


def build_cli(pm: PluginManager | None = None) -> click.Group:
    """Return the root group with core commands and every plugin's commands added."""
    from tunnelmesh.cli import (
        context_cmd,
        demo_cmd,
        dns_cmd,
        filter_cmd,
        init_cmd,
        join_cmd,
        leave_cmd,
        peers_cmd,
        plugins_cmd,
        serve_cmd,
        status_cmd,
    )

    if pm is None:
        pm = make_plugin_manager()
    root = click.Group(
        name=cli.name,
        callback=cli.callback,
        params=list(cli.params),
        help=cli.help,
        context_settings=dict(cli.context_settings),
    )
    for cmd in (plugins_cmd.plugins, init_cmd.init):
        root.add_command(cmd)
    for cmd in (
        serve_cmd.serve,
        join_cmd.join,
        context_cmd.context,
        status_cmd.status,
        peers_cmd.peers,
        leave_cmd.leave,
    ):
        root.add_command(cmd)
    root.add_command(filter_cmd.filter_group)
    root.add_command(dns_cmd.dns)
    root.add_command(demo_cmd.demo)
    pm.hook.tunnelmesh_register_commands(cli=root)
    return root
