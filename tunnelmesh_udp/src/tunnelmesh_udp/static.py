"""A node configured statically, like a ``wg`` configuration: no coordinator needed.

Used to interoperate with stock WireGuard peers and in namespace tests. A YAML (or JSON) file::

    interface: tm0                   # TUN device name
    address: 10.202.0.1/24           # our mesh address; the prefix is routed into the TUN
    mtu: 1420
    listen: 0.0.0.0:51820
    private_key: <base64>            # X25519, as `wg genkey` prints it ...
    # identity: ~/.tunnelmesh/id_ed25519    # ... or the node's ed25519 key
    peers:
      - name: b
        public_key: <base64>         # X25519 (`wg pubkey`)
        endpoint: 10.201.0.2:51820   # optional: learned from the peer's first packet
        allowed_ips: [10.202.0.2/32]
        persistent_keepalive: 0

Run it with ``tunnelmesh udp up FILE`` or ``python -m tunnelmesh_udp.static FILE``; it prints
``tunnelmesh-udp ready <public key>`` once the TUN device is up and the socket is bound, and exits cleanly
(TUN removed) on SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from pathlib import Path

import msgspec
import yaml
from tunnelmesh.errors import ConfigError
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.tun import TUN_F_CSUM, TUN_F_TSO4, TunDevice

from tunnelmesh_udp.transport import UdpTransport

__all__ = ["StaticConfig", "StaticPeer", "load_static_config", "run_static"]


class StaticPeer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One peer of a static configuration."""

    public_key: str
    name: str = ""
    endpoint: str = ""
    allowed_ips: list[str] = msgspec.field(default_factory=list)
    persistent_keepalive: float = 0.0


class StaticConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A static node (see the module docstring)."""

    address: str
    private_key: str = ""
    identity: str = ""
    interface: str = "tm0"
    mtu: int = 1420
    listen: str = "0.0.0.0:51820"
    gso: bool = True
    gro: bool = True
    rekey_after_time: float = 120.0
    tun_coalesce: bool = True
    tun_tso: bool = False
    peers: list[StaticPeer] = msgspec.field(default_factory=list)

    def x25519_private_key(self) -> bytes:
        """Our X25519 private key, from ``private_key`` or the ed25519 ``identity`` file."""
        if self.private_key:
            key = base64.b64decode(self.private_key)
            if len(key) != 32:
                raise ConfigError("private_key must be 32 bytes of base64", key="private_key")
            return key
        if self.identity:
            from cryptography.hazmat.primitives import serialization
            from tunnelmesh.proto.wgcrypto import x25519_private_from_ed25519_seed

            pem = Path(self.identity).expanduser().read_bytes()
            sk = serialization.load_ssh_private_key(pem, password=None)
            seed = sk.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            return x25519_private_from_ed25519_seed(seed)
        raise ConfigError("one of private_key or identity is required")


def load_static_config(path: str | Path) -> StaticConfig:
    """Read a static configuration file (YAML or JSON).

    Raises:
        ConfigError: the file is missing or invalid.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) if p.suffix != ".json" else json.loads(p.read_text())
        return msgspec.convert(data, StaticConfig)
    except (OSError, yaml.YAMLError, json.JSONDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(str(exc), path=str(p)) from None


async def run_static(config: StaticConfig, stop: asyncio.Event | None = None) -> None:
    """Bring the node up and forward until ``stop`` is set (or a signal arrives)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    routes = RoutingTable()
    transport = UdpTransport(
        config.x25519_private_key(),
        listen=config.listen,
        mtu=config.mtu,
        gso=config.gso,
        gro=config.gro,
    )
    transport.engine.rekey_after_time = config.rekey_after_time
    # pyroute2 runs its own event loop, so netlink work happens in a thread
    vnet_hdr = config.tun_coalesce or config.tun_tso
    tun = await asyncio.to_thread(
        TunDevice.create,
        config.interface,
        address=config.address,
        mtu=config.mtu,
        vnet_hdr=vnet_hdr,
    )
    with tun:
        # TSO: the kernel hands over 64 KiB TCP super-packets, cut into segments here
        tso = config.tun_tso and tun.set_offload(TUN_F_CSUM | TUN_F_TSO4)
        forwarder = Forwarder(tun.fileno(), routes, vnet_hdr=vnet_hdr, tso=tso)
        await transport.listen(forwarder.attach)
        for i, p in enumerate(config.peers):
            name = p.name or f"peer{i}"
            routes.set_peer(
                name,
                public_key=base64.b64decode(p.public_key),
                mesh_ips=p.allowed_ips,
                endpoints=[p.endpoint] if p.endpoint else [],
            )
            link = transport.add_wireguard_peer(
                name,
                base64.b64decode(p.public_key),
                p.endpoint or None,
                persistent_keepalive=p.persistent_keepalive,
            )
            forwarder.attach(link)
        forwarder.start()
        public = base64.b64encode(transport.public_key).decode()
        print(f"tunnelmesh-udp ready {public}", flush=True)
        try:
            await stop.wait()
        finally:
            forwarder.stop()
            await transport.aclose()
            drops = {k: v for k, v in transport.engine.drops.items() if v}
            print(
                f"stopped handshakes={transport.handshakes} stats={dict(forwarder.stats)} "
                f"drops={drops}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    """``python -m tunnelmesh_udp.static CONFIG``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m tunnelmesh_udp.static CONFIG")
    config = load_static_config(args[0])
    try:
        import uvloop

        uvloop.run(run_static(config))
    except ImportError:
        asyncio.run(run_static(config))


if __name__ == "__main__":
    main()
