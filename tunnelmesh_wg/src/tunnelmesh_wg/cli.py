"""``tunnelmesh wg``: standard WireGuard clients of the mesh's concentrator peers."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from tunnelmesh.cli.common import api_call, context_option, echo_table, json_option
from tunnelmesh.errors import ConfigError

from tunnelmesh_wg.clientconf import (
    ClientConfig,
    generate_keypair,
    generate_preshared_key,
    parse_duration,
    terminal_qr,
    write_qr,
)

PATH = "/api/v1/wg/clients"


@click.group("wg")
def wg() -> None:
    """WireGuard clients (phones, laptops) of the mesh's concentrators.

    A client is a mesh citizen with its own mesh IP and DNS name (NAME.<domain>), reached
    through the concentrator peer it connects to. Its private key never reaches the
    coordinator: `wg add` makes the key pair where it runs and prints the config once (or
    takes your public key with --public-key). Adding, enabling, disabling and removing
    clients is for admins; every peer may list them.
    """


def _when(ts: float, now: float) -> str:
    if not ts:
        return "never"
    delta = ts - now
    word = "in" if delta > 0 else "ago"
    s = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            amount = f"{s / size:.0f}{unit}"
            break
    else:
        amount = f"{s:.0f}s"
    return f"in {amount}" if word == "in" else f"{amount} ago"


def _state(c: dict[str, Any]) -> str:
    if not c.get("enabled", True):
        return "disabled"
    if not c.get("active", True):
        return "expired"
    return "active"


@wg.command()
@context_option
@json_option("Print the client and its config as JSON (no QR code in the terminal).")
@click.argument("name")
@click.option(
    "--public-key",
    envvar="TUNNELMESH_WG_PUBLIC_KEY",
    show_envvar=True,
    metavar="KEY",
    help="The client's public key (base64, as `wg pubkey` prints it); its private key stays "
    "on the client. Without it a key pair is made here and printed in the config, once.",
)
@click.option(
    "--expires",
    metavar="DURATION",
    envvar="TUNNELMESH_WG_EXPIRES",
    show_envvar=True,
    help="The client stops working after this: 30d, 12h, 2w.",
)
@click.option(
    "--full-tunnel",
    "exit_name",
    envvar="TUNNELMESH_WG_FULL_TUNNEL",
    show_envvar=True,
    metavar="EXIT",
    help="Give the client AllowedIPs 0.0.0.0/0 and send its internet traffic through exit "
    "node EXIT (a peer with --allow-exit-traffic): the concentrator relays it to that exit.",
)
@click.option(
    "--concentrator",
    envvar="TUNNELMESH_WG_CONCENTRATOR",
    show_envvar=True,
    metavar="PEER",
    help="The concentrator peer the client connects to (needed when there are several).",
)
@click.option(
    "--preshared-key",
    envvar="TUNNELMESH_WG_PRESHARED_KEY",
    show_envvar=True,
    is_flag=True,
    help="Add a random preshared key (an extra symmetric key, given to the concentrator).",
)
@click.option(
    "--qr",
    "qr_path",
    envvar="TUNNELMESH_WG_QR",
    show_envvar=True,
    metavar="FILE.png|.svg",
    help="Also write the config as a QR code image (created mode 0600: it holds the key).",
)
def add(
    context_name: str | None,
    as_json: bool,
    name: str,
    public_key: str | None,
    expires: str | None,
    exit_name: str | None,
    concentrator: str | None,
    preshared_key: bool,
    qr_path: str | None,
) -> None:
    """Add the WireGuard client NAME and print its wg-quick config and a QR code, once.

    The config: [Interface] PrivateKey, Address (the client's mesh IP), DNS (the
    concentrator's mesh IP, which answers NAME.<domain> for every peer and client);
    [Peer] the concentrator's public key and endpoint, AllowedIPs the mesh prefix (or
    0.0.0.0/0 with --full-tunnel), PersistentKeepalive. Only the public key (and the
    preshared key) is sent to the coordinator; the private key is printed here and kept
    nowhere, so save the config or scan the code now.
    """
    if qr_path and not qr_path.lower().endswith((".png", ".svg")):
        raise click.BadParameter("the file must end in .png or .svg", param_hint="--qr")
    body: dict[str, Any] = {"name": name}
    try:
        if expires:
            body["expires_at"] = time.time() + parse_duration(expires)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    private = ""
    if public_key:
        body["public_key"] = public_key.strip()
    else:
        private, body["public_key"] = generate_keypair()
    psk = generate_preshared_key() if preshared_key else ""
    if psk:
        body["preshared_key"] = psk
    if concentrator:
        body["concentrator"] = concentrator
    if exit_name:
        body["exit"] = exit_name
    got = api_call(context_name, "POST", PATH, body)
    conc = got["concentrator"]
    conf = ClientConfig(
        address=got["client"]["mesh_ip"],
        dns=conc["mesh_ip"],
        peer_public_key=conc["wg_public_key"],
        endpoint=conc["endpoint"],
        allowed_ips=("0.0.0.0/0",) if exit_name else (got["mesh_cidr"],),
        private_key=private,
        preshared_key=psk,
    )
    text = conf.text()
    if as_json:
        click.echo(json.dumps({**got, "config": text}, indent=2))
    else:
        client = got["client"]
        via = f", internet through {got['exit_name']}" if exit_name else ""
        click.echo(
            f"added {client['name']} at {client['mesh_ip']} ({client['name']}.{got['domain']}) "
            f"through {conc['name']} ({conc['endpoint']}){via}",
            err=True,
        )
        if not private:
            click.echo("put the client's private key into the config below", err=True)
        else:
            click.echo(
                "the private key is printed only now: save the config or scan the code", err=True
            )
        click.echo(text, nl=False)
        click.echo(terminal_qr(text), nl=False, err=True)  # stdout: the config alone
    if qr_path:
        try:
            write_qr(text, qr_path)
        except (OSError, ConfigError) as exc:
            raise click.ClickException(f"cannot write {qr_path}: {exc}") from None
        click.echo(f"QR code written to {qr_path}", err=True)


@wg.command("list")
@context_option
@json_option()
def list_(context_name: str | None, as_json: bool) -> None:
    """List the WireGuard clients: name, mesh IP, concentrator, state, expiry, last handshake."""
    clients = api_call(context_name, "GET", PATH)["clients"]
    if as_json:
        click.echo(json.dumps(clients, indent=2))
        return
    if not clients:
        click.echo("no WireGuard clients")
        return
    now = time.time()
    table = [("NAME", "MESH IP", "CONCENTRATOR", "STATE", "EXPIRES", "HANDSHAKE")]
    for c in clients:
        status = c.get("status") or {}
        table.append(
            (
                c["name"],
                c["mesh_ip"],
                c.get("concentrator_name") or c["concentrator"],
                _state(c),
                _when(c.get("expires_at", 0.0), now),
                _when(status.get("latest_handshake", 0.0), now),
            )
        )
    echo_table(table)


@wg.command()
@context_option
@json_option()
@click.argument("name")
def show(context_name: str | None, as_json: bool, name: str) -> None:
    """Show the WireGuard client NAME (its keys are public; a preshared key is never shown)."""
    c = api_call(context_name, "GET", f"{PATH}/{name}")
    if as_json:
        click.echo(json.dumps(c, indent=2))
        return
    now = time.time()
    status = c.get("status") or {}
    rows = [
        ("name", c["name"]),
        ("client id", c["client_id"]),
        ("mesh ip", c["mesh_ip"]),
        ("public key", c["public_key"]),
        ("preshared key", "yes" if c.get("has_preshared_key") else "no"),
        ("concentrator", f"{c.get('concentrator_name') or '?'} ({c['concentrator']})"),
        ("state", _state(c)),
        ("expires", _when(c.get("expires_at", 0.0), now)),
        ("exit", c.get("exit_name") or "-"),
        ("latest handshake", _when(status.get("latest_handshake", 0.0), now)),
        ("endpoint", status.get("endpoint") or "-"),
        ("traffic (rx/tx)", f"{status.get('rx_bytes', 0)} / {status.get('tx_bytes', 0)} bytes"),
        ("created", _when(c.get("created_at", 0.0), now)),
        ("created by", c.get("created_by") or "-"),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':18} {value}")


def _change(context_name: str | None, name: str, action: str) -> dict[str, Any]:
    if action == "remove":
        got: dict[str, Any] = api_call(context_name, "DELETE", f"{PATH}/{name}")
    else:
        got = api_call(context_name, "POST", f"{PATH}/{name}/{action}")
    return got


@wg.command()
@context_option
@click.argument("name")
def disable(context_name: str | None, name: str) -> None:
    """Disable the client NAME: its traffic stops (admins only)."""
    got = _change(context_name, name, "disable")
    click.echo(f"disabled {name}" if got.get("changed") else f"{name} was disabled already")


@wg.command()
@context_option
@click.argument("name")
def enable(context_name: str | None, name: str) -> None:
    """Enable the client NAME again (admins only)."""
    got = _change(context_name, name, "enable")
    click.echo(f"enabled {name}" if got.get("changed") else f"{name} was enabled already")


@wg.command()
@context_option
@click.argument("name")
def remove(context_name: str | None, name: str) -> None:
    """Remove the client NAME: its mesh IP and name are freed (admins only)."""
    _change(context_name, name, "remove")
    click.echo(f"removed {name}")
