"""``tunnelmesh plugins``: what is installed, its version and the hooks it implements."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from tunnelmesh.cli._root import Context


@click.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="TUNNELMESH_JSON",
    show_envvar=True,
    help="Print JSON instead of a table.",
)
@click.pass_obj
def plugins(ctx: Context, as_json: bool) -> None:
    """List installed plugins with their version, status and hooks.

    Plugins are distributions with an entry point in the `tunnelmesh` group; install them with
    extras, e.g. `pip install 'tunnelmesh[udp,ssh,relay]'`. Set TUNNELMESH_DISABLE_PLUGINS=a,b to
    block some, TUNNELMESH_LOAD_PLUGINS=a,b to load only those.
    """
    registry = ctx.pm.build_registry()
    infos = sorted(ctx.pm.infos.values(), key=lambda i: i.name)
    if as_json:
        rows = [{**asdict(i), "provides": registry.provided_by(i.name)} for i in infos]
        click.echo(json.dumps(rows, indent=2))
        return
    if not infos:
        click.echo("no plugins installed (try: pip install 'tunnelmesh[all]')")
        return
    pad = " " * max(len(i.name) for i in infos)
    for info in infos:
        click.echo(f"{info.name:<{len(pad)}}  {info.dist} {info.version}  [{info.status}]")
        if info.hooks:
            hooks = ", ".join(h.removeprefix("tunnelmesh_") for h in info.hooks)
            click.echo(f"{pad}  hooks: {hooks}")
        for kind, names in registry.provided_by(info.name).items():
            click.echo(f"{pad}  {kind}: {', '.join(names)}")
        if info.error:
            click.echo(f"{pad}  error: {info.error}")
