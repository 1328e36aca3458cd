"""The forwarding loop between the TUN device and the links of the peers.

Outbound: the TUN device becomes readable; up to ``batch`` packets are read at once, each is
routed by its destination address through the :class:`~tunnelmesh.mesh.routing.RoutingTable`
(one dict look-up), packets are grouped per peer, each group passes the packet filters (one
``verdicts()`` call per group, never a pluggy hook) and goes to the peer's link in one
``send_batch``.

Inbound: a link pushes a batch (:meth:`Forwarder.deliver`); in one pass over it, path probes
(IPv4 protocol :data:`PROBE_PROTOCOL`, :mod:`tunnelmesh.node.paths`) are taken out for
:attr:`Forwarder.probe_sink`, and every packet whose inner source address does not belong to
that peer (or to a WireGuard client it carries, see :mod:`tunnelmesh.mesh.routing`) is dropped
as spoofed (WireGuard's cryptokey routing); the rest pass the filters and are written to the TUN
device. On a WireGuard concentrator (:attr:`Forwarder.relay`) the packets between its clients
and the mesh are sent on to their destination's link without touching the TUN device. With ``vnet_hdr`` (a TUN device
opened with IFF_VNET_HDR), TCP segments of one flow are first coalesced into super-packets
(:mod:`tunnelmesh.mesh.offload`).

Counters are kept in :attr:`Forwarder.stats`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import select
from collections import defaultdict
from collections.abc import Callable, Sequence

from tunnelmesh.abc import Link, PacketFilter
from tunnelmesh.mesh.offload import coalesce_ipv4_tcp, split_tso
from tunnelmesh.mesh.routing import PeerRoute, RoutingTable

__all__ = ["PROBE_PROTOCOL", "Forwarder"]

PROBE_PROTOCOL = 253
"""The IPv4 protocol number of path probes (RFC 3692's experimental 253); never on the TUN."""
_PROBE = bytes([PROBE_PROTOCOL])


class Forwarder:
    """Moves packets between a TUN file descriptor and the peers' links.

    Args:
        tun_fd: a non-blocking TUN descriptor (no packet-information header).
        routes: the routing table (read only here).
        filters: packet filters applied to each batch, outbound and inbound.
        batch: how many packets one readiness callback reads at most.
        vnet_hdr: the TUN device was opened with IFF_VNET_HDR (reads and writes carry a
            virtio_net_hdr; received TCP segments are coalesced).
        tso: the device also has ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4)``: reads may be TCP
            super-packets or carry partial checksums, cut and completed by
            :func:`~tunnelmesh.mesh.offload.split_tso`.
        mesh_cidr: the mesh network: on a concentrator, a full-tunnel client's packets for
            addresses outside it go to the client's exit (empty: nothing is outside).
    """

    def __init__(
        self,
        tun_fd: int,
        routes: RoutingTable,
        filters: Sequence[PacketFilter] = (),
        *,
        batch: int = 128,
        vnet_hdr: bool = False,
        tso: bool = False,
        mesh_cidr: str = "",
    ) -> None:
        self.fd = tun_fd
        self.vnet_hdr = vnet_hdr
        self.tso = tso and vnet_hdr
        self.routes = routes
        self.filters = list(filters)
        self.batch = batch
        self.stats: defaultdict[str, int] = defaultdict(int)
        self.relay = False
        """This node serves WireGuard clients (a concentrator): received packets between a
        client and another route go on to that route (:meth:`_relay`) instead of the TUN."""
        self._mesh: tuple[int, int, int] | None = None
        if mesh_cidr:
            net = ipaddress.ip_network(mesh_cidr, strict=False)
            self._mesh = (net.max_prefixlen // 8, int(net.network_address), int(net.netmask))
        self.probe_sink: Callable[[Link, list[bytes]], None] | None = None
        """Gets the path probes of each received batch (None: probes are ordinary packets)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll = select.poll()
        self._poll.register(tun_fd, select.POLLIN)

    def start(self) -> None:
        """Start reading the TUN device (call from the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._on_tun_readable)

    def stop(self) -> None:
        """Stop reading. Idempotent."""
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None

    def attach(self, link: Link) -> None:
        """Route packets of ``link.peer`` through ``link`` and receive from it."""
        self.routes.set_link(link.peer, link)
        link.set_receiver(self.deliver)

    def outside(self, address: bytes) -> bool:
        """Whether a packed address is outside the mesh network (never, without ``mesh_cidr``)."""
        mesh = self._mesh
        if mesh is None:
            return False
        size, net, mask = mesh
        return len(address) != size or int.from_bytes(address, "big") & mask != net

    # --- outbound -------------------------------------------------------------------------------

    def _on_tun_readable(self) -> None:
        fd = self.fd
        read = os.read
        by_ip = self.routes.by_ip
        lookup = self.routes.lookup
        groups: dict[PeerRoute, list[bytes]] = {}
        stats = self.stats
        vnet = self.vnet_hdr
        tso = self.tso
        n = 0
        budget = self.batch  # packets, so TSO reads (up to ~45 segments each) count in full
        while budget > 0:
            segments: list[bytes] | None = None
            try:
                pkt = read(fd, 65546)  # a 64 KiB super-packet and its virtio_net_hdr
            except BlockingIOError:
                break
            except OSError:
                stats["tun_read_error"] += 1
                break
            n += 1
            budget -= 1
            if n == 1 and not self._poll.poll(0):
                budget = 0  # a lone packet (a ping): no second read that ends in EAGAIN
            if vnet:
                if tso and (pkt[0] or pkt[1]):  # NEEDS_CSUM and/or a TSO super-packet
                    segments = split_tso(pkt)
                    if not segments:
                        stats["dropped_bad_offload"] += 1
                        continue
                    pkt = segments[0]
                    stats["tso_segments"] += len(segments)
                    budget -= len(segments) - 1
                else:  # without TUNSETOFFLOAD the header is all zero
                    pkt = pkt[10:]
                    if not pkt:
                        continue
            version = pkt[0] >> 4
            if version == 4:
                dst = pkt[16:20]
            elif version == 6:
                dst = pkt[24:40]
            else:
                stats["dropped_not_ip"] += 1
                continue
            route = by_ip.get(dst) or lookup(dst)
            if route is None:
                stats["dropped_no_route"] += 1
                continue
            group = groups.get(route)
            if segments is not None:  # every segment has the super-packet's destination
                if group is None:
                    groups[route] = segments
                else:
                    group.extend(segments)
            elif group is None:
                groups[route] = [pkt]
            else:
                group.append(pkt)
        stats["tun_rx"] += n
        for route, packets in groups.items():
            link = route.link
            if link is None:
                stats["dropped_no_link"] += len(packets)
                continue
            if self.filters:
                packets = self._filter(packets, route.name, False)
                if not packets:
                    continue
            try:
                link.send_batch(packets)
            except Exception:
                stats["dropped_link_error"] += len(packets)
                continue
            stats["tx_packets"] += len(packets)

    def _filter(self, packets: list[bytes], peer: str, inbound: bool) -> list[bytes]:
        for f in self.filters:
            verdicts = f.verdicts(packets, peer, inbound)
            kept = [p for p, ok in zip(packets, verdicts, strict=True) if ok]
            self.stats["dropped_filter"] += len(packets) - len(kept)
            packets = kept
        return packets

    # --- inbound --------------------------------------------------------------------------------

    def deliver(self, link: Link, packets: list[bytes]) -> None:
        """Check and write packets received from ``link.peer`` to the TUN device.

        A source address must belong to the link's peer, or to a route carried ``via`` it (a
        WireGuard client behind that concentrator; its packets pass the filters under the
        client's name). On a concentrator (:attr:`relay`) the packets between a client and the
        mesh go on to their destination's link instead (:meth:`_relay`).
        """
        stats = self.stats
        sink = self.probe_sink
        route = self.routes.peers.get(link.peer)
        if route is None and sink is None:
            stats["dropped_unknown_peer"] += len(packets)
            return
        by_ip = self.routes.by_ip
        lookup = self.routes.lookup
        good = []
        carried: dict[PeerRoute, list[bytes]] | None = None
        answers: dict[PeerRoute, list[bytes]] | None = None
        probes: list[bytes] | None = None
        for pkt in packets:
            if pkt[0] >> 4 == 4:
                if pkt[9:10] == _PROBE and sink is not None:  # a slice: short packets drop below
                    if probes is None:
                        probes = [pkt]
                    else:
                        probes.append(pkt)
                    continue
                src = pkt[12:16]
            else:
                src = pkt[8:24]
            if route is None:
                stats["dropped_unknown_peer"] += 1
                continue
            source = by_ip.get(src) or lookup(src)
            if source is not route:
                if source is None or source.via != route.name:
                    if self.relay:  # a full-tunnel client's exit answering it?
                        target = self._exit_answer(route, pkt, src)
                        if target is not None:
                            if answers is None:
                                answers = {target: [pkt]}
                            elif target in answers:
                                answers[target].append(pkt)
                            else:
                                answers[target] = [pkt]
                            continue
                    stats["dropped_spoofed"] += 1
                    continue
                if carried is None:
                    carried = {source: [pkt]}
                elif source in carried:
                    carried[source].append(pkt)
                else:
                    carried[source] = [pkt]
                continue
            good.append(pkt)
        if probes is not None and sink is not None:
            sink(link, probes)
        if route is None:
            return
        if answers is not None:
            self._send(answers)
        if self.relay:
            good = self._relay(route, good)
            if carried is not None:
                for source, pkts in carried.items():
                    carried[source] = self._relay(source, pkts)
        if self.filters:
            if good:
                good = self._filter(good, route.name, True)
            if carried is not None:
                for source, pkts in carried.items():
                    if pkts:
                        good += self._filter(pkts, source.name, True)
        elif carried is not None:
            for pkts in carried.values():
                good += pkts
        fd = self.fd
        write = os.write
        if self.vnet_hdr:
            good_writes = coalesce_ipv4_tcp(good)
            stats["tun_writes"] += len(good_writes)
            good, count = good_writes, len(good)
        else:
            count = len(good)
        for pkt in good:
            try:
                write(fd, pkt)
            except BlockingIOError:
                stats["dropped_tun_full"] += 1
            except OSError:
                stats["tun_write_error"] += 1
        stats["rx_packets"] += count

    def _exit_answer(self, route: PeerRoute, pkt: bytes, src: bytes) -> PeerRoute | None:
        """On a concentrator, for a packet from ``route`` whose source is not its own: the
        client it goes to when ``route`` is that client's exit and the source is outside the
        mesh (an exit answers for the internet, never for mesh addresses); else None."""
        dst = pkt[16:20] if pkt[0] >> 4 == 4 else pkt[24:40]
        target = self.routes.by_ip.get(dst)
        if target is None or not target.client or target.exit != route.name:
            return None
        if not route.name or not self.outside(src):
            return None
        return target

    def _send(self, out: dict[PeerRoute, list[bytes]]) -> None:
        """Send relayed groups on to their routes' links (counted as ``relayed``)."""
        stats = self.stats
        for target, group in out.items():
            link = target.link
            if link is None:
                stats["dropped_no_link"] += len(group)
                continue
            try:
                link.send_batch(group)
            except Exception:
                stats["dropped_link_error"] += len(group)
                continue
            stats["relayed"] += len(group)

    def _relay(self, source: PeerRoute, packets: list[bytes]) -> list[bytes]:
        """On a concentrator: send on the packets between a WireGuard client and the mesh.

        A packet whose destination is another route's mesh address (a host entry: a prefix such
        as an exit's ``0.0.0.0/0`` is never relayed to) goes to that route's link when its source
        or its destination is a client of this node (the concentrator relays for its clients
        only, never between two mesh peers); such packets skip this node's filters, which guard
        its own services (the destination filters them, with the client as the source). The
        rest, for this node, is returned for the TUN device.

        A client with an exit (``source.exit``, a full tunnel) has its packets for outside the
        mesh sent to that exit's link; when the exit is not in the table they are dropped
        (``dropped_no_exit``), never sent out another way.
        """
        by_ip = self.routes.by_ip
        mine: list[bytes] = []
        out: dict[PeerRoute, list[bytes]] = {}
        exit_name = source.exit
        for pkt in packets:
            dst = pkt[16:20] if pkt[0] >> 4 == 4 else pkt[24:40]
            target = by_ip.get(dst)  # mesh addresses only: never a prefix (an exit's 0.0.0.0/0)
            if target is None and exit_name and self.outside(dst):
                target = self.routes.peers.get(exit_name)
                if target is None:
                    self.stats["dropped_no_exit"] += 1
                    continue
            elif target is None or target is source or not (target.client or source.client):
                mine.append(pkt)
                continue
            group = out.get(target)
            if group is None:
                out[target] = [pkt]
            else:
                group.append(pkt)
        if out:
            self._send(out)
        return mine
