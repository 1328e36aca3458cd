"""``tunnelmesh init``: write commented example config files."""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

import click

from tunnelmesh.errors import ConfigError

SERVER_TEMPLATE = """\
# tunnelmesh coordination server config (tunnelmesh serve -c {name})
# Every key below shows its default unless marked "required".

# required: the mesh's shared secret; peers join with it. Keep it private.
auth_token: "{token}"

# where the coordination API listens (HTTPS)
listen: "0.0.0.0:8443"

# RFC 5389 STUN (UDP): peers learn their public address here
stun_listen: "0.0.0.0:3478"

# mesh addresses are allocated from this range
mesh_cidr: "172.30.0.0/16"

# DNS suffix of mesh names: <peer>.tunnelmesh
domain: "tunnelmesh"

# state (SQLite database, mesh CA); a restart with the same directory loses nothing
data_dir: "/var/lib/tunnelmesh"

# admin peers, by key: peer IDs (tunnelmesh status) or SHA256: fingerprints as
# `ssh-keygen -lf ~/.tunnelmesh/id_ed25519.pub` prints them; never names or globs.
# Empty: the first peer to join is admin. Re-read on SIGHUP (removing an entry demotes).
admin_peers: []

# device approval: a new key waits (sees nothing, is seen by nobody) until an admin runs
# `tunnelmesh peers approve NAME`; admin keys never wait
approve_new_peers: false

# how often peers report in; a peer missing three heartbeats is shown offline
heartbeat_interval: 10s

# log level (debug, info, warning, error); null: --log-level / TUNNELMESH_LOG_LEVEL (info)
log_level: null

# extra names and addresses in the coordinator's TLS certificate (it always has localhost,
# 127.0.0.1 and coordinator.tunnelmesh.invalid); name the mesh CA may vouch for: set before
# the first start (see docs/control-plane.md)
tls_names: []

# the URL peers reach this coordinator at (https://host:port). Several coordinators on one
# database each set their own: peers learn every one and move to another within seconds when
# theirs is gone (see docs/scale.md). "": not announced (peers keep the URL they joined with)
public_url: ""

# refused registrations cost their source address one unit of a bucket this big, refilled
# at this rate (an IPv6 source: its /64)
auth_failures_burst: 20
auth_failures_per_minute: 30.0

# new keys joining from one source address (an IPv6 source: its /64): this many at once, then
# this many a minute; each leaves a name reserved for its key when it goes
joins_burst: 100
joins_per_minute: 20.0

# keep and show the location: peers give in their peer.yaml (the dashboard's map); false:
# a peer's location is dropped when it arrives
locations: false

# Prometheus GET /metrics; listen "" = 127.0.0.1:9274 (see docs/metrics.md)
metrics:
  enabled: true
  listen: ""

# where the state lives (see docs/scale.md): sqlite = <data_dir>/state.db, one coordinator;
# postgres (tunnelmesh[postgres]) = one database shared by several coordinators. dsn_file: a
# 0600 file with the connection string and its password. encryption_key_file: a 0600 file with
# the key (openssl rand -hex 32) that encrypts the mesh CA's key and the rotated join token in
# the database; required for postgres, the same file on every coordinator.
state:
  backend: "sqlite"
  dsn_file: ""
  encryption_key_file: ""

# packet filter rules pushed to every peer: the "coordinator" layer of each peer's filter
# (the most restrictive layer wins). Sent when a peer joins, and at once to every peer when
# they change: edit this file and send SIGHUP (kill -HUP <serve pid>). Only the rules are
# pushed; default_deny and allow_icmp are each peer's own (peer.yaml). source_peer is a
# peer ID (tunnelmesh peers --json), never a name.
filter:
  rules: []
  #  - port: 22
  #    protocol: tcp
  #    action: allow

# uncomment to make the coordinator a mesh peer too (server-as-client); any key of
# peer.yaml (tunnelmesh init --peer) may go below it, except server and auth_token
# join_mesh:
#   name: "coord"            # any peer name but a reserved one (coordinator, this, admin, ...)
#   dns:
#     enabled: true
"""

PEER_TEMPLATE = """\
# tunnelmesh peer config (tunnelmesh join -c {name})
# Every key below shows its default unless marked "required".

# this peer's name in the mesh (a DNS label: <name>.tunnelmesh)
name: "{hostname}"

# required to join: the coordinator's URL and the mesh's auth token
# (or pass --server/--token, or TUNNELMESH_SERVER/TUNNELMESH_TOKEN)
server: ""
auth_token: ""

# this node's identity (ed25519, OpenSSH format); created when missing
private_key: "~/.tunnelmesh/id_ed25519"

# where `tunnelmesh filter` and `tunnelmesh status` reach the running node (a Unix socket)
control_socket: "/run/tunnelmesh.sock"

# how often this peer reports to the coordinator
heartbeat_interval: 10s

# log level (debug, info, warning, error); null: --log-level / TUNNELMESH_LOG_LEVEL (info)
log_level: null

tun:
  name: "tun-mesh0"
  mtu: 1420

# the mesh resolver (see docs/dns.md)
dns:
  enabled: true
  listen: "127.0.0.53:5353"
  cache_ttl: 300
  # extra names of this peer (db -> db.tunnelmesh), published through the coordinator so
  # every peer resolves them; a name another peer has is refused
  aliases: []
  # where other names go (ip[:port]); empty: the name servers of /etc/resolv.conf
  upstreams: []
  upstream_timeout: 2s
  # false: other names get REFUSED
  forward: true
  # how the system resolver is pointed at this one: auto, resolved, resolv.conf or off
  system: auto

# transports in order of preference, globally and per peer (installed transports the order
# leaves out come after it; order: [] means all of them in their own order, udp ssh relay);
# listen_port is the port the transports listen on and the endpoints carry: the UDP transport
# (WireGuard) binds it over UDP, the SSH transport over TCP (was udp_port)
transports:
  order: [udp, ssh, relay]
  per_peer: {{}}
  listen_port: 2223

# the packet filter (see docs/filter.md)
filter:
  # true: drop new inbound connections from other peers unless a rule allows them (the
  # default is false, see docs/filter.md for why; tunnelmesh init asks)
  default_deny: {default_deny}
  allow_icmp: true
  # size bound of the connection-tracking table
  max_flows: 65536
  rules: []
  #  - port: 3306
  #    protocol: tcp
  #    action: deny
  #    source_peer: 3f2a9c0d1e4b5a67   # a peer ID (tunnelmesh peers --json); "" = any peer

# Prometheus GET /metrics; listen "" = this node's mesh IP, port 9273 (see docs/metrics.md)
metrics:
  enabled: true
  listen: ""

# the listener `tunnelmesh benchmark` measures against, TCP and UDP on this node's mesh IP
# (see docs/benchmark.md); off unless enabled
benchmark:
  enabled: false
  port: 9998

# route internet traffic through this peer (split tunnel); "" = off
exit_node: ""
# let other peers use this one as their exit
allow_exit_traffic: false
# what an exit forwards (only with allow_exit_traffic)
exit:
  # the peers that may use it, by peer ID (tunnelmesh peers --json) or ssh-ed25519 key;
  # empty: every peer. Names are refused (a name can change hands, a key cannot).
  allowed_peers: []
  # also forward to private, CGNAT, link-local (169.254.169.254), loopback and this host's
  # own LAN addresses (default: dropped, so clients reach the internet but not your LAN)
  allow_lan: false

# where this peer is, for the dashboard's map (shown only by a coordinator with
# locations: true), e.g. {{lat: 52.52, lon: 13.40, city: Berlin}}; null: not given
location: null
"""


def _sanitised_hostname() -> str:
    name = socket.gethostname().split(".")[0].lower()
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")
    return name[:63] or "node"


def _interactive() -> bool:
    return sys.stdin.isatty()


def _ask_default_deny() -> bool:
    """filter.default_deny for a new peer.yaml: asked on a terminal, else false (and said)."""
    if not _interactive():
        click.echo(
            "filter.default_deny: false (no terminal to ask; --default-deny drops inbound "
            "connections from other peers that no filter rule allows)",
            err=True,
        )
        return False
    return click.confirm(
        "Drop inbound connections from other mesh peers unless a filter rule allows them "
        "(filter.default_deny; pings still pass)?",
        default=False,
    )


def _write(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    click.echo(f"wrote {path}")


@click.command()
@click.option(
    "--server",
    "server",
    is_flag=True,
    envvar="TUNNELMESH_INIT_SERVER",
    show_envvar=True,
    help="Write server.yaml (coordinator).",
)
@click.option(
    "--peer",
    "peer",
    is_flag=True,
    envvar="TUNNELMESH_INIT_PEER",
    show_envvar=True,
    help="Write peer.yaml.",
)
@click.option(
    "--default-deny/--no-default-deny",
    "default_deny",
    default=None,
    envvar="TUNNELMESH_INIT_DEFAULT_DENY",
    show_envvar=True,
    help="peer.yaml's filter.default_deny; without either flag init asks (on a terminal) "
    "or writes false and says so.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    envvar="TUNNELMESH_INIT_OUTPUT",
    show_envvar=True,
    help="Directory to write into.",
)
@click.option(
    "-f",
    "--force",
    is_flag=True,
    envvar="TUNNELMESH_INIT_FORCE",
    show_envvar=True,
    help="Overwrite existing files.",
)
def init(server: bool, peer: bool, default_deny: bool | None, output: Path, force: bool) -> None:
    """Write commented example config files (server.yaml and/or peer.yaml).

    The server file gets a fresh random auth_token. Files are created with mode 0600 because
    they hold secrets. With --peer, this node's identity key (~/.tunnelmesh/id_ed25519, or
    $TUNNELMESH_HOME/id_ed25519) is created too when it does not exist yet.
    """
    if not server and not peer:
        raise click.UsageError("say what to write: --server, --peer or both")
    if server:
        _write(
            output / "server.yaml",
            SERVER_TEMPLATE.format(name=output / "server.yaml", token=secrets.token_hex(32)),
            force,
        )
    if peer:
        if (output / "peer.yaml").exists() and not force:  # refused before anything is asked
            raise ConfigError(f"{output / 'peer.yaml'} exists; pass --force to overwrite it")
        if default_deny is None:
            default_deny = _ask_default_deny()
        _write(
            output / "peer.yaml",
            PEER_TEMPLATE.format(
                name=output / "peer.yaml",
                hostname=_sanitised_hostname(),
                default_deny="true" if default_deny else "false",
            ),
            force,
        )
        from tunnelmesh.identity import Identity, default_key_path

        key = default_key_path()
        ident, created = Identity.load_or_create(key)
        if created:
            click.echo(f"created key {key} ({ident.fingerprint})")
