"""``tunnelmesh benchmark PEER``: throughput, round trip and loss through the mesh."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import subprocess
import sys
from typing import Any

import click

from tunnelmesh.cli._options import context_option, json_option
from tunnelmesh.errors import TunnelmeshError


def _peer_ip(name: str, context_name: str | None) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    from tunnelmesh.cli.peers_cmd import fetch_peers
    from tunnelmesh.control.contexts import ContextStore

    wanted = name.lower().removesuffix(".")
    for domain in (".tunnelmesh", ".tm", ".mesh"):
        wanted = wanted.removesuffix(domain)
    store = ContextStore()
    rows, _ = fetch_peers(store.get(context_name), store)
    for p in rows:
        if p.name == wanted and p.mesh_ip:
            return str(p.mesh_ip)
    raise TunnelmeshError(f"no peer named {name!r} in this mesh (tunnelmesh peers lists them)")


def _device_to(ip: str) -> str:
    ip_cmd = shutil.which("ip")
    if ip_cmd is None:
        raise TunnelmeshError("the ip command (iproute2) is needed to find the mesh device")
    out = subprocess.run(
        [ip_cmd, "-j", "route", "get", ip], capture_output=True, text=True, timeout=10, check=False
    )
    try:
        return str(json.loads(out.stdout)[0]["dev"])
    except (ValueError, IndexError, KeyError):
        raise TunnelmeshError(f"no route to {ip}: is this node's mesh running?") from None


class _Progress:
    """A one-line progress display on stderr (only when it is a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        pct = done * 100 // total
        if pct != self.last:
            self.last = pct
            bar = "#" * (pct // 4)
            click.echo(f"\r{self.label:9} [{bar:<25}] {pct:3d}%", nl=False, err=True)
            if done >= total:
                click.echo("", err=True)


@click.command()
@click.argument("peer")
@click.option(
    "--size",
    default="10MB",
    show_default=True,
    envvar="TUNNELMESH_BENCH_SIZE",
    show_envvar=True,
    help="Bytes per direction: 10MB, 512KiB, 4096 (at most 1 GiB).",
)
@click.option(
    "--direction",
    type=click.Choice(["upload", "download", "both"]),
    default="both",
    show_default=True,
    envvar="TUNNELMESH_BENCH_DIRECTION",
    show_envvar=True,
    help="Which way the bytes go.",
)
@click.option(
    "--loss",
    type=click.FloatRange(0, 100),
    envvar="TUNNELMESH_BENCH_LOSS",
    show_envvar=True,
    help="Drop this percentage of what this node sends to PEER, during the run (nftables).",
)
@click.option(
    "--bandwidth",
    metavar="RATE",
    envvar="TUNNELMESH_BENCH_BANDWIDTH",
    show_envvar=True,
    help="Limit what this node sends into the mesh to RATE (20mbit, 500kbit; tc tbf).",
)
@click.option(
    "--probes",
    type=click.IntRange(1, 100000),
    default=200,
    show_default=True,
    envvar="TUNNELMESH_BENCH_PROBES",
    show_envvar=True,
    help="UDP probes for the round trip and loss (10 ms apart).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=9998,
    show_default=True,
    envvar="TUNNELMESH_BENCH_PORT",
    show_envvar=True,
    help="The peer's benchmark listener port.",
)
@context_option
@json_option("Print one JSON object (documented in docs/benchmark.md).")
def benchmark(
    peer: str,
    size: str,
    direction: str,
    loss: float | None,
    bandwidth: str | None,
    probes: int,
    port: int,
    context_name: str | None,
    as_json: bool,
) -> None:
    """Measure throughput, round trip and loss to PEER through the mesh.

    PEER is a peer's name or mesh IP; it must run the benchmark listener (`benchmark:
    {enabled: true}` in its config). UDP probes measure the round trip and the loss, then
    --size bytes go up and/or down over TCP. --loss and --bandwidth impair this node's side
    (what it sends into the mesh) for the run only, and need root; delay is not offered (it
    needs the sch_netem qdisc: see docs/benchmark.md).
    """
    from tunnelmesh import benchmark as bm
    from tunnelmesh.impair import Impairment

    try:
        nbytes = bm.parse_size(size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from None
    ip = _peer_ip(peer, context_name)
    dev = _device_to(ip)
    try:
        impairment = Impairment(dev, ip, loss_pct=loss, bandwidth=bandwidth)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bandwidth") from None
    impaired = bool(loss) or bool(bandwidth)
    if not as_json:
        click.echo(f"benchmark to {peer} ({ip}:{port}) via {dev}, {nbytes / 1e6:.1f} MB each way")
        if impaired:
            parts = [
                f"loss {loss:g} %" if loss else "",
                f"bandwidth {bandwidth}" if bandwidth else "",
            ]
            click.echo(f"impairment on this node's side: {', '.join(p for p in parts if p)}")

    async def run() -> dict[str, Any]:
        result: dict[str, Any] = {}
        probed = await bm.probe(ip, port, count=probes)
        result["probes"] = probed.as_dict()
        if probed.received == 0:
            raise TunnelmeshError(
                f"no answer from {ip}:{port}: is the benchmark listener enabled on {peer} "
                "(benchmark: {enabled: true})?"
            )
        for d in ("upload", "download") if direction == "both" else (direction,):
            try:
                res = await bm.transfer(ip, port, d, nbytes, progress=_Progress(d))
            except OSError as exc:
                raise TunnelmeshError(f"{d} to {ip}:{port} failed: {exc}") from None
            result[d] = res.as_dict()
        return result

    if impaired:
        impairment.apply()
    try:
        result = asyncio.run(run())
    finally:
        if impaired:
            impairment.restore()
    out = {"peer": peer, "address": ip, "port": port, "device": dev, "size": nbytes, **result}
    out["impairment"] = impairment.describe()
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    pr = result["probes"]
    rtt = pr["rtt_ms"]
    click.echo(
        f"rtt min/avg/max {rtt['min']:.3f}/{rtt['avg']:.3f}/{rtt['max']:.3f} ms, "
        f"loss {pr['loss_pct']:.1f} % ({pr['sent'] - pr['received']} of {pr['sent']} probes)"
    )
    for d in ("upload", "download"):
        if d in result:
            r = result[d]
            click.echo(
                f"{d:9} {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.3f} s: {r['mbps']:.1f} Mbit/s"
            )
