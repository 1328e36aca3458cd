"""``tunnelmesh dns serve``: run the mesh resolver on its own (debugging, tests, benchmarks).

The node daemon runs the resolver itself (:class:`tunnelmesh.dns.DnsService`); this command
serves static records, and optionally a live feed of changes, without joining a mesh. It
never touches the system resolver.

Feed (``--feed PATH``, ``-`` for standard input): JSON lines, each one of
``{"set": {"name": ["ip", ...]}}``, ``{"remove": ["name", ...]}``,
``{"records": {"name": ["ip"]}}`` (replace all) or ``{"coordinators": ["ip"]}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from tunnelmesh.cli._loop import run_fast
from tunnelmesh.dns.backend import DEFAULT_DOMAINS, CoordinatorBackend
from tunnelmesh.dns.resolver import MeshResolver
from tunnelmesh.dns.server import DnsServer

__all__ = ["dns"]


def _option(
    *decls: str, envvar: str, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(*decls, envvar=f"TUNNELMESH_DNS_{envvar}", show_envvar=True, **kwargs)


@click.group("dns")
def dns() -> None:
    """The built-in mesh DNS resolver."""


def apply_feed_line(backend: CoordinatorBackend, line: str) -> None:
    """Apply one feed line (see the module docstring). Raises ValueError when malformed."""
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("a feed line must be a JSON object")
    for name, ips in msg.get("set", {}).items():
        backend.set(name, ips)
    for name in msg.get("remove", []):
        backend.remove(name)
    if "records" in msg:
        backend.update(msg["records"])
    if "coordinators" in msg:
        backend.set_coordinators(msg["coordinators"])


@dns.command("serve")
@_option("--listen", envvar="LISTEN", default="127.0.0.1:5353", show_default=True, help="ip:port.")
@_option(
    "--record",
    "records",
    envvar="RECORDS",
    multiple=True,
    metavar="NAME=IP[,IP]",
    help="A mesh record; repeat for more.",
)
@_option(
    "--upstream",
    "upstreams",
    envvar="UPSTREAMS",
    multiple=True,
    metavar="IP[:PORT]",
    help="Resolver for other names; repeat for more (default: /etc/resolv.conf).",
)
@_option(
    "--domain",
    "domains",
    envvar="DOMAINS",
    multiple=True,
    help=f"Mesh domain; repeat for more (default: {', '.join(DEFAULT_DOMAINS)}).",
)
@_option("--ttl", envvar="TTL", default=300, show_default=True, help="TTL of mesh answers.")
@_option("--feed", envvar="FEED", metavar="PATH", help="JSON-lines record changes; - for stdin.")
def serve(
    listen: str,
    records: tuple[str, ...],
    upstreams: tuple[str, ...],
    domains: tuple[str, ...],
    ttl: int,
    feed: str | None,
) -> None:
    """Serve mesh records on UDP and TCP until interrupted; prints `ready HOST:PORT`."""
    initial: dict[str, list[str]] = {}
    for rec in records:
        name, sep, ips = rec.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{rec!r} is not NAME=IP", param_hint="--record")
        initial[name] = [ip for ip in ips.split(",") if ip]
    doms = domains or DEFAULT_DOMAINS
    backend = CoordinatorBackend(domains=doms)
    try:
        backend.update(initial)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--record") from None
    resolver = MeshResolver(backend, domains=doms, ttl=ttl)
    server = DnsServer(resolver, listen=listen, upstreams=list(upstreams) or None)
    run_fast(_serve(server, backend, feed))


async def _serve(server: DnsServer, backend: CoordinatorBackend, feed: str | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    click.echo("ready {}:{}".format(*server.address))
    sys.stdout.flush()
    if feed is not None:
        # A daemon thread: a blocking readline must not keep the process alive at exit.
        threading.Thread(target=_read_feed, args=(loop, backend, feed), daemon=True).start()
    try:
        await stop.wait()
    finally:
        await server.aclose()


def _apply(backend: CoordinatorBackend, line: str) -> None:
    try:
        apply_feed_line(backend, line)
    except (ValueError, AttributeError) as exc:
        click.echo(f"feed: ignored a bad line: {exc}", err=True)
        return
    click.echo(f"applied version {backend.version}")
    sys.stdout.flush()


def _read_feed(loop: asyncio.AbstractEventLoop, backend: CoordinatorBackend, feed: str) -> None:
    stream = sys.stdin if feed == "-" else open(feed, encoding="utf-8")  # noqa: SIM115
    with contextlib.suppress(RuntimeError):  # the loop closed: we are exiting
        for line in stream:
            if line.strip():
                loop.call_soon_threadsafe(_apply, backend, line)
