"""Coordinator: the mesh as others see it (functions bound as methods of
:class:`~tunnelmesh.coordinator.core.Coordinator`).

A peer's :class:`~tunnelmesh.control.messages.PeerInfo` (with or without its path figures),
the push channel's snapshot, the peers waiting for approval, this coordinator's own mesh IP
and the DNS records.
"""

from __future__ import annotations

import base64
import functools
import logging
from typing import TYPE_CHECKING

import msgspec

from tunnelmesh.control.messages import DnsRecord, PeerInfo, Snapshot, encode
from tunnelmesh.coordinator.store import PeerRecord
from tunnelmesh.identity import parse_public_key, x25519_public_of

if TYPE_CHECKING:
    from tunnelmesh.coordinator.core import Coordinator

log = logging.getLogger("tunnelmesh.coordinator.core")
"""Coordinator's log: every part of it logs under the name it always had."""


@functools.lru_cache(maxsize=1 << 16)
def wg_public_key(public_key: str) -> str:
    """The WireGuard (X25519) public key, base64, of the OpenSSH ed25519 ``public_key``.

    Derived once per key and kept: the conversion costs about 70 µs, and every push snapshot
    carries every peer's key, so a 10,000-peer mesh spent 0.7 s of CPU per peer that (re)connected
    its push channel (ten thousand of them after a coordinator restart).

    Raises:
        ValueError: not an OpenSSH ed25519 public key.
    """
    raw = parse_public_key(public_key).public_bytes_raw()
    return base64.b64encode(x25519_public_of(raw)).decode("ascii")


def info(self: Coordinator, rec: PeerRecord, *, figures: bool = True) -> PeerInfo:
    """``rec`` as other peers and the CLI see it.

    ``figures=False`` leaves out what the peer reports about its own paths (transports,
    RTTs, reasons, counters): maps keyed by the other peers, so their size grows with the
    mesh. The push channel carries peers without them (see :meth:`push_info`).
    """
    info = PeerInfo(
        name=rec.name,
        peer_id=rec.peer_id,
        public_key=rec.public_key,
        wg_public_key=wg_public_key(rec.public_key),
        mesh_ip=rec.mesh_ip,
        endpoints=rec.endpoints,
        online=self.liveness.is_online(rec.peer_id),
        last_seen=rec.last_seen,
        is_admin=rec.is_admin,
        is_coordinator=rec.is_coordinator,
        version=rec.version,
        allow_exit_traffic=rec.allow_exit_traffic,
        aliases=rec.aliases,
        concentrator_endpoint=rec.concentrator_endpoint,
    )
    if not figures:
        return info
    return msgspec.structs.replace(
        info,
        transports=rec.transports,
        rtt_ms=rec.rtt_ms,
        reasons=rec.reasons,
        counters=rec.counters,
    )


def peer_infos(self: Coordinator) -> list[PeerInfo]:
    """Every approved peer (a key waiting for approval is shown to nobody)."""
    return [self.info(r) for r in self._visible()]


def push_info(self: Coordinator, rec: PeerRecord) -> PeerInfo:
    """``rec`` as the push channel carries it: what the other peers' data plane and DNS
    use, constant in size whatever the size of the mesh (the path figures a peer reports
    are keyed by every other peer; ``GET /api/v1/peers`` has them). One change of one peer
    therefore costs one message of constant size per connected peer."""
    return self.info(rec, figures=False)


SNAPSHOT_REUSE = 1.0
"""Seconds one push snapshot is given to every channel that connects at the same revision."""


def snapshot_message(self: Coordinator) -> bytes:
    """The first message of a push channel: every approved peer and the revision the
    deltas that follow continue from (each carries the next revision; a peer that sees a
    gap reconnects for a new snapshot).

    Channels that connect at the same revision within SNAPSHOT_REUSE seconds get the same
    bytes: a snapshot of 10,000 peers costs some 75 CPU ms, and after a coordinator restart
    every peer reconnects at once. Every announced change moves the revision, so a reused
    snapshot differs from a fresh one only in its peers' ``last_seen`` (under a second)."""
    urls = self.coordinator_urls()
    key, now = (self.revision, tuple(urls)), self.clock()
    cached = self.snapshot_cache
    if cached is not None and cached[0] == key and 0 <= now - cached[1] < SNAPSHOT_REUSE:
        return cached[2]
    data = encode(
        Snapshot(
            peers=[self.push_info(r) for r in self._visible()],
            revision=self.revision,
            coordinators=urls,
        )
    )
    self.snapshot_cache = (key, now, data)
    return data


def _visible(self: Coordinator) -> list[PeerRecord]:
    return sorted((r for r in self.peers.values() if not r.pending), key=lambda r: r.name)


def pending_peers(self: Coordinator) -> list[PeerRecord]:
    """Keys that registered and wait for an admin (``approve_new_peers``), by name."""
    return sorted((r for r in self.peers.values() if r.pending), key=lambda r: r.name)


def own_mesh_ip(self: Coordinator) -> str | None:
    """The mesh IP of this coordinator's own peer (``join_mesh``), or None until it has
    registered (or when it does not join its mesh)."""
    for key in sorted(self.coordinator_keys):
        pid = self._by_key.get(key)
        if pid is not None and pid in self.peers:
            return self.peers[pid].mesh_ip
    return None


async def wait_own_mesh_ip(self: Coordinator) -> str:
    """Wait until this coordinator's own peer is registered; return its mesh IP.

    For plugins that serve on the mesh IP (the S3 service): at a restart the IP is known
    as soon as the state is loaded; at first start, once ``join_mesh`` has registered.
    Never returns when the coordinator does not join its mesh.
    """
    while True:
        ip = self.own_mesh_ip()
        if ip is not None:
            return ip
        self._own_peer_known.clear()
        await self._own_peer_known.wait()


def coordinator_ips(self: Coordinator) -> list[str]:
    return sorted(r.mesh_ip for r in self.peers.values() if r.is_coordinator)


def dns_records(self: Coordinator) -> list[DnsRecord]:
    """``<name>.<domain>`` for every peer; ``this.<domain>``/``this.tm`` for coordinators."""
    out = [DnsRecord(name=f"{r.name}.{self.domain}", ip=r.mesh_ip) for r in self._visible()]
    for r in self._visible():
        out += [
            DnsRecord(name=f"{a}.{self.domain}", ip=r.mesh_ip)
            for a in r.aliases
            if a not in self._by_name  # a peer's name wins over an alias
        ]
    now = self.clock()
    out += [
        DnsRecord(name=f"{c.name}.{self.domain}", ip=c.mesh_ip)
        for c in self.clients.sorted()
        if self.clients.active(c, now)
    ]
    for ip in self.coordinator_ips():
        for suffix in dict.fromkeys((self.domain, "tunnelmesh", "tm")):
            out.append(DnsRecord(name=f"this.{suffix}", ip=ip))
    return out
