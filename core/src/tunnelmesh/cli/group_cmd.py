"""``tunnelmesh group``: groups of peers, by peer ID, for grants (admins change them)."""

from __future__ import annotations

import json

import click

from tunnelmesh.cli._api import api_call
from tunnelmesh.cli._options import context_option, json_option


@click.group("group")
def group_group() -> None:
    """Groups of peers (kept by peer ID) that S3 buckets and shares can grant to.

    'everyone' and 'admins' are built in. Creating, changing and deleting groups is for
    admins; every peer may list them.
    """


@group_group.command("list")
@context_option
@json_option()
def list_(context_name: str | None, as_json: bool) -> None:
    """List the groups and their members (current name and peer ID)."""
    groups = api_call(context_name, "GET", "/api/v1/groups")["groups"]
    if as_json:
        click.echo(json.dumps(groups, indent=2))
        return
    for g in groups:
        members = [f"{g['names'].get(pid, '(gone)')} {pid}" for pid in g["members"]]
        click.echo(f"{g['name']}: {', '.join(members) if members else '(no members)'}")


@group_group.command()
@context_option
@click.argument("name")
def create(context_name: str | None, name: str) -> None:
    """Create an empty group NAME (admins only)."""
    api_call(context_name, "POST", "/api/v1/groups", {"name": name})
    click.echo(f"created group {name}")


@group_group.command()
@context_option
@click.argument("name")
def delete(context_name: str | None, name: str) -> None:
    """Delete group NAME (admins only); its members stay peers."""
    api_call(context_name, "DELETE", f"/api/v1/groups/{name}")
    click.echo(f"deleted group {name}")


@group_group.command()
@context_option
@click.argument("group")
@click.argument("peers", nargs=-1, required=True)
def add(context_name: str | None, group: str, peers: tuple[str, ...]) -> None:
    """Add PEERS (names or peer IDs) to GROUP (admins only); they are stored by peer ID."""
    got = api_call(context_name, "POST", f"/api/v1/groups/{group}/members", {"add": list(peers)})
    click.echo(f"{group}: {len(got['members'])} member(s)")


@group_group.command()
@context_option
@click.argument("group")
@click.argument("peers", nargs=-1, required=True)
def remove(context_name: str | None, group: str, peers: tuple[str, ...]) -> None:
    """Remove PEERS (names or peer IDs) from GROUP (admins only)."""
    body = {"remove": list(peers)}
    got = api_call(context_name, "POST", f"/api/v1/groups/{group}/members", body)
    click.echo(f"{group}: {len(got['members'])} member(s)")
