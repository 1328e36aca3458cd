"""A minimal mesh peer for lab tests and benchmarks: one transport, one other peer, a TUN.

It registers with a coordinator (fresh identity), brings up a TUN device with the mesh IP it
got, waits for the other peer to register, and carries the traffic between them over the chosen
transport (``relay``, ``udp`` or ``ssh``). It is what the full node does, minus negotiation,
DNS and filters, so a lab test can put one transport between two hosts and measure it::

    python -m tunnelmesh_relay.labpeer --server https://100.64.0.2:8443 --token T \\
        --name a --peer b --transport relay [--dial relay|HOST:PORT] [--listen 0.0.0.0:51820]

It prints ``labpeer ready <our mesh IP> <peer mesh IP>`` once the link is up (dialling side) or
the transport listens (the other side), and ``labpeer stats {...}`` as JSON on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from typing import Any

from tunnelmesh.abc import Transport
from tunnelmesh.control.client import ApiRequestError, ControlClient, fetch_ca
from tunnelmesh.errors import TransportError
from tunnelmesh.identity import Identity, parse_public_key
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.tun import TunDevice

__all__ = ["main", "run"]


def _build(args: argparse.Namespace, ident: Identity, session: str, ca: str) -> Transport:
    if args.transport == "relay":
        from tunnelmesh_relay.transport import RelayTransport

        return RelayTransport(
            ident.x25519_private(),
            server=args.server,
            session_token=session,
            ca_pem=ca,
            mtu=args.mtu,
        )
    if args.transport == "udp":
        from tunnelmesh_udp.transport import UdpTransport

        return UdpTransport(ident.x25519_private(), listen=args.listen, mtu=args.mtu)
    if args.transport == "ssh":
        from tunnelmesh_ssh.transport import SshTransport

        return SshTransport(ident, args.name, listen=args.listen, mtu=args.mtu)
    raise SystemExit(f"unknown transport {args.transport!r}")


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ident = Identity.generate()
    ca = await fetch_ca(args.server, args.token)
    async with ControlClient(
        server=args.server, identity=ident, ca_pem=ca, auth_token=args.token, name=args.name
    ) as client:
        reg = await client.register()
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                info = await client.get_peer(args.peer)
                break
            except ApiRequestError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"peer {args.peer} did not register in time") from None
                await asyncio.sleep(0.2)
        peer_key = parse_public_key(info.public_key).public_bytes_raw()
        prefix = reg.mesh_cidr.rpartition("/")[2]
        transport = _build(args, ident, reg.session_token, ca)
        routes = RoutingTable()
        routes.set_peer(args.peer, public_key=peer_key, mesh_ips=[info.mesh_ip])
        tun = await asyncio.to_thread(
            TunDevice.create,
            args.tun,
            address=f"{reg.mesh_ip}/{prefix}",
            mtu=args.mtu,
            vnet_hdr=args.tun_coalesce,
        )
        with tun:
            forwarder = Forwarder(tun.fileno(), routes, vnet_hdr=args.tun_coalesce)
            await transport.listen(forwarder.attach)
            transport.update_peer(args.peer, public_key=peer_key)
            if args.dial:
                while True:
                    try:
                        link = await transport.dial(args.peer, [args.dial], public_key=peer_key)
                        break
                    except TransportError as exc:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"cannot dial {args.peer}: {exc}") from None
                        await asyncio.sleep(0.5)
                forwarder.attach(link)
            forwarder.start()
            print(f"labpeer ready {reg.mesh_ip} {info.mesh_ip}", flush=True)
            try:
                await stop.wait()
            finally:
                forwarder.stop()
                stats: dict[str, Any] = {"forwarder": dict(forwarder.stats)}
                engine = getattr(transport, "engine", None)
                if engine is not None:
                    stats["drops"] = {k: v for k, v in engine.drops.items() if v}
                for extra in ("stats",):
                    value = getattr(transport, extra, None)
                    if isinstance(value, dict):
                        stats[extra] = value
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(transport.aclose(), 10)
                print(f"labpeer stats {json.dumps(stats)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tunnelmesh_relay.labpeer", description=__doc__)
    p.add_argument("--server", required=True, help="coordinator URL, https://host:port")
    p.add_argument("--token", required=True, help="the mesh auth token")
    p.add_argument("--name", required=True, help="our peer name")
    p.add_argument("--peer", required=True, help="the other peer's name")
    p.add_argument("--transport", choices=["relay", "udp", "ssh"], default="relay")
    p.add_argument("--dial", default="", help="dial the peer at HOST:PORT (relay: any word)")
    p.add_argument("--listen", default="0.0.0.0:51820", help="udp/ssh listen address")
    p.add_argument("--tun", default="tm0")
    p.add_argument("--mtu", type=int, default=1420)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument(
        "--tun-coalesce",
        action="store_true",
        help="write received TCP segments to the TUN as GSO super-packets (IFF_VNET_HDR)",
    )
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:  # pragma: no cover - uvloop is a core dependency on Linux
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
