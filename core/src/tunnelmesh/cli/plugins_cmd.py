"""``tunnelmesh plugins``: what is installed, its version and the hooks it implements."""

from __future__ import annotations

import json

import click

from tunnelmesh.cli._root import Context


@click.command()
@click.option(
    "--json", "as_json", is_flag=True, envvar="TUNNELMESH_JSON", show_envvar=True,
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
    rows = []
    for info in sorted(ctx.pm.infos.values(), key=lambda i: i.name):
        rows.append(
            {
                "name": info.name,
                "dist": info.dist,
                "version": info.version,
                "status": info.status,
                "hooks": info.hooks,
                "provides": registry.provided_by(info.name),
                "error": info.error,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed (try: pip install 'tunnelmesh[all]')")
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['dist']} {r['version']}  [{r['status']}]")
        if r["hooks"]:
            click.echo(f"{'':<{width}}  hooks: {', '.join(h.removeprefix('tunnelmesh_') for h in r['hooks'])}")
        for kind, names in r["provides"].items():
            click.echo(f"{'':<{width}}  {kind}: {', '.join(names)}")
        if r["error"]:
            click.echo(f"{'':<{width}}  error: {r['error']}")
