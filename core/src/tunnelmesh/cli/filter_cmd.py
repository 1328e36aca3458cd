"""``tunnelmesh filter list|add|remove``: the running daemon's packet filter;
``tunnelmesh filter coordinator list|add|remove``: the coordinator's rules for every peer.

The first talk to the daemon over its control socket (root only); changes apply at once,
without a restart, and live in the runtime layer (they do not survive a daemon restart: put
permanent rules in peer.yaml's ``filter.rules``). The ``coordinator`` ones call the
coordinator's API as this peer (``/api/v1/filter/rules``; admins change, every peer lists).
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Callable
from typing import Any

import click

from tunnelmesh.cli._api import api_call
from tunnelmesh.cli._options import context_option, json_option
from tunnelmesh.cli._table import echo_table
from tunnelmesh.control_socket import DEFAULT_SOCKET, ENV_SOCKET, request

__all__ = ["filter_group"]


def _socket_path(ctx: click.Context, explicit: str | None) -> str:
    if explicit:
        return explicit
    obj = ctx.find_root().obj
    config_path = getattr(obj, "config", None)
    try:
        from tunnelmesh.config import load_peer_config

        pm = getattr(obj, "pm", None)
        sections = pm.build_registry().config_sections if pm is not None else None
        return load_peer_config(config_path, sections).control_socket or DEFAULT_SOCKET
    except Exception:  # a broken config must not hide the real error: use the default
        if config_path:
            raise
        return DEFAULT_SOCKET


def _option(
    *decls: str, envvar: str, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option with its ``TUNNELMESH_FILTER_*`` environment variable shown in --help."""
    return click.option(*decls, envvar=f"TUNNELMESH_FILTER_{envvar}", show_envvar=True, **kwargs)


# The options a rule has, shared by the daemon's (filter add/remove) and the coordinator's
# (filter coordinator add/remove) commands; the help that differs is an argument.


def _port_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return _option("--port", envvar="PORT", type=click.IntRange(1, 65535), required=True, help=help)


_protocol_option = _option(
    "--protocol",
    envvar="PROTOCOL",
    type=click.Choice(["tcp", "udp"]),
    default="tcp",
    show_default=True,
)
_action_option = _option(
    "--action",
    envvar="ACTION",
    type=click.Choice(["allow", "deny"]),
    default="allow",
    show_default=True,
)


def _source_peer_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return _option("--source-peer", envvar="SOURCE_PEER", default="", metavar="PEER", help=help)


def _ttl_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return _option(
        "--ttl",
        envvar="TTL",
        type=click.IntRange(0, 365 * 24 * 3600),
        default=0,
        show_default=True,
        help=help,
    )


socket_option = click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    envvar=ENV_SOCKET,
    show_envvar=True,
    help=f"The daemon's control socket (default: control_socket in the peer config, "
    f"{DEFAULT_SOCKET}).",
)


@click.group("filter")
def filter_group() -> None:
    """Show and change the running daemon's packet filter (needs root)."""


def _expires(ts: float) -> str:
    if not ts:
        return "never"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@filter_group.command("list")
@socket_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="TUNNELMESH_FILTER_JSON",
    show_envvar=True,
    help="Print the daemon's answer as JSON.",
)
@click.pass_context
def list_cmd(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """List the rules of every layer with their counters (packets allowed, denied)."""
    data: dict[str, Any] = request(_socket_path(ctx, socket_path), "filter.list")
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2))
        return
    policy = "deny" if data["default_deny"] else "allow"
    icmp = "allowed" if data["allow_icmp"] else "replies only"
    click.echo(f"default: {policy}   icmp: {icmp}   tracked flows: {data['tracked']}")
    rows = [("LAYER", "PROTO", "PORT", "ACTION", "SOURCE", "EXPIRES", "ALLOWED", "DENIED")]
    for r in data["rules"]:
        rows.append(
            (
                r["layer"],
                r["protocol"],
                str(r["port"]),
                r["action"],
                r["source_peer"] or "*",
                _expires(r["expires"]),
                str(r["allowed"]),
                str(r["denied"]),
            )
        )
    echo_table(rows)
    click.echo(
        f"no rule matched: {data['default_allowed']} allowed, {data['default_denied']} denied"
    )


@filter_group.command("add")
@socket_option
@_port_option("Local port.")
@_protocol_option
@_action_option
@_source_peer_option("Only packets from this peer (default: any).")
@_ttl_option("Seconds until the rule expires; 0 keeps it until the daemon stops.")
@click.pass_context
def add_cmd(
    ctx: click.Context,
    socket_path: str | None,
    port: int,
    protocol: str,
    action: str,
    source_peer: str,
    ttl: int,
) -> None:
    """Add a runtime rule (it replaces a runtime rule for the same port, protocol and peer)."""
    payload = {
        "port": port,
        "protocol": protocol,
        "action": action,
        "source_peer": source_peer,
        "ttl": ttl,
    }
    rule = request(_socket_path(ctx, socket_path), "filter.add", payload)
    who = rule["source_peer"] or "any peer"
    click.echo(
        f"{rule['action']} {rule['protocol']}/{rule['port']} from {who}, "
        f"expires {_expires(rule['expires'])}"
    )


@filter_group.command("remove")
@socket_option
@_port_option("Local port.")
@_protocol_option
@_source_peer_option("The rule's source peer.")
@click.pass_context
def remove_cmd(
    ctx: click.Context, socket_path: str | None, port: int, protocol: str, source_peer: str
) -> None:
    """Remove a runtime rule."""
    payload = {"port": port, "protocol": protocol, "source_peer": source_peer}
    request(_socket_path(ctx, socket_path), "filter.remove", payload)
    click.echo(f"removed {protocol}/{port}" + (f" from {source_peer}" if source_peer else ""))


# --- the coordinator layer (the coordinator's API, as this peer) ---------------------------------


@filter_group.group("coordinator")
def coordinator_group() -> None:
    """The coordinator layer: rules for the whole mesh, kept by the coordinator.

    These commands call the coordinator's API as this peer (no root needed): every peer may
    list the rules; adding and removing is for admins. Rules from server.yaml are listed with
    origin "config" and change only there (SIGHUP); rules added here (origin "api") are kept
    by the coordinator across restarts, pushed to every peer at once and, with --ttl, removed
    when they expire.
    """


def _peer_label(rule: dict[str, Any]) -> str:
    if not rule["source_peer"]:
        return "*"
    return f"{rule['source_name'] or '(gone)'} {rule['source_peer']}"


@coordinator_group.command("list")
@context_option
@json_option()
def coordinator_list(context_name: str | None, as_json: bool) -> None:
    """List the coordinator's rules: server.yaml's (config) and the API's (api)."""
    got = api_call(context_name, "GET", "/api/v1/filter/rules")
    if as_json:
        import json

        click.echo(json.dumps(got["rules"], indent=2))
        return
    if not got["rules"]:
        click.echo("no coordinator rules")
        return
    rows = [("ORIGIN", "PROTO", "PORT", "ACTION", "SOURCE", "EXPIRES")]
    for r in got["rules"]:
        origin = r["origin"] + (" (shadowed)" if r["shadowed"] else "")
        rows.append(
            (
                origin,
                r["protocol"],
                str(r["port"]),
                r["action"],
                _peer_label(r),
                _expires(r["expires"]),
            )
        )
    echo_table(rows)


@coordinator_group.command("add")
@context_option
@_port_option("Port.")
@_protocol_option
@_action_option
@_source_peer_option(
    "Only packets from this peer: a peer ID or the name of a registered peer (stored "
    "as its peer ID). Default: any peer."
)
@_ttl_option("Seconds until the coordinator removes the rule; 0 keeps it until removed.")
def coordinator_add(
    context_name: str | None, port: int, protocol: str, action: str, source_peer: str, ttl: int
) -> None:
    """Add a rule for every peer (admins only); it replaces an API rule with the same key."""
    body = {
        "port": port,
        "protocol": protocol,
        "action": action,
        "source_peer": source_peer,
        "ttl": ttl,
    }
    r = api_call(context_name, "POST", "/api/v1/filter/rules", body)
    who = _peer_label(r) if r["source_peer"] else "any peer"
    click.echo(
        f"{r['action']} {r['protocol']}/{r['port']} from {who} on every peer, "
        f"expires {_expires(r['expires'])}"
    )


@coordinator_group.command("remove")
@context_option
@_port_option("Port.")
@_protocol_option
@_source_peer_option("The rule's source.")
def coordinator_remove(
    context_name: str | None, port: int, protocol: str, source_peer: str
) -> None:
    """Remove a rule added through the API (admins only)."""
    query = f"?source_peer={urllib.parse.quote(source_peer)}" if source_peer else ""
    api_call(context_name, "DELETE", f"/api/v1/filter/rules/{protocol}/{port}{query}")
    click.echo(f"removed {protocol}/{port}" + (f" from {source_peer}" if source_peer else ""))
