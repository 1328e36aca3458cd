"""The node's metrics, read from its running parts at scrape time (see docs/metrics.md).

Label values are bounded: ``peer`` is a mesh peer's name (a DNS label the coordinator checked;
the exposition layer escapes whatever it holds), ``transport`` a registered transport's name,
``reason``/``result``/``outcome`` the fixed keys of the counters they come from, and the filter
rule labels the fields of the (bounded) rule table.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import Metric

from tunnelmesh import __version__
from tunnelmesh.control.client import HEARTBEAT_BUCKETS
from tunnelmesh.metrics.base import Family, FamilyCollector

__all__ = ["NodeCollector"]

_PEER = ("peer",)
_PEER_TRANSPORT = ("peer", "transport")

# The resolver's counters that are outcomes of a query (the rest are queries and cache hits).
_DNS_RESULTS = ("answered", "nxdomain", "forwarded", "formerr", "refused", "servfail", "dropped")
# The filter's global counters (FilterStats fields).
_FILTER_OUTCOMES = (
    "default_allowed",
    "default_denied",
    "tracked_passed",
    "icmp_denied",
    "other_denied",
    "malformed",
)


class NodeCollector(FamilyCollector):
    """Reads a :class:`~tunnelmesh.node.Node` (forwarder, WireGuard peers, path selection,
    filter, DNS, control client, transports) when scraped."""

    FAMILIES = (
        Family("tunnelmesh_node_info", "gauge", "This node (value 1).", ("name", "version")),
        Family("tunnelmesh_node_uptime_seconds", "gauge", "Seconds since the node started."),
        Family(
            "tunnelmesh_coordinator_reachable",
            "gauge",
            "1 when the last request to the coordinator got an answer, else 0.",
        ),
        Family(
            "tunnelmesh_heartbeat_duration_seconds",
            "histogram",
            "Heartbeat round trips to the coordinator (acknowledged ones).",
        ),
        Family(
            "tunnelmesh_heartbeat_last_duration_seconds",
            "gauge",
            "The round trip of the last acknowledged heartbeat.",
        ),
        Family(
            "tunnelmesh_network_changes_total",
            "counter",
            "Underlay network changes handled (debounced netlink events).",
        ),
        Family(
            "tunnelmesh_peer_online",
            "gauge",
            "1 when the coordinator reports the peer online.",
            _PEER,
        ),
        Family("tunnelmesh_peer_up", "gauge", "1 when the peer has an active path.", _PEER),
        Family(
            "tunnelmesh_peer_transport",
            "gauge",
            "The transport of the peer's active path (value 1; absent without a path).",
            ("peer", "transport"),
        ),
        Family(
            "tunnelmesh_peer_path_changes_total",
            "counter",
            "Changes of the peer's active path (up, down, or another transport).",
            _PEER,
        ),
        Family(
            "tunnelmesh_peer_rtt_seconds",
            "gauge",
            "Round trip of the active path's probes.",
            _PEER,
        ),
        Family(
            "tunnelmesh_peer_receive_bytes_total",
            "counter",
            "WireGuard transport bytes received from the peer (authenticated).",
            _PEER_TRANSPORT,
        ),
        Family(
            "tunnelmesh_peer_transmit_bytes_total",
            "counter",
            "WireGuard transport bytes sent to the peer (handshakes included).",
            _PEER_TRANSPORT,
        ),
        Family(
            "tunnelmesh_peer_receive_packets_total",
            "counter",
            "WireGuard data messages received from the peer (authenticated).",
            _PEER_TRANSPORT,
        ),
        Family(
            "tunnelmesh_peer_transmit_packets_total",
            "counter",
            "WireGuard data messages sent to the peer.",
            _PEER_TRANSPORT,
        ),
        Family(
            "tunnelmesh_peer_handshakes_total",
            "counter",
            "WireGuard handshakes completed with the peer.",
            _PEER_TRANSPORT,
        ),
        Family(
            "tunnelmesh_peer_handshake_attempts",
            "gauge",
            "Handshake initiations sent since the last completed one (0: none pending).",
            _PEER_TRANSPORT,
        ),
        Family(
            "tunnelmesh_peer_last_handshake_age_seconds",
            "gauge",
            "Seconds since the last completed handshake with the peer.",
            _PEER_TRANSPORT,
        ),
        Family(
            "tunnelmesh_forwarder_packets_total",
            "counter",
            "IP packets forwarded: tx from the TUN device to peers, rx from peers to it.",
            ("direction",),
        ),
        Family(
            "tunnelmesh_forwarder_dropped_packets_total",
            "counter",
            "IP packets the forwarder dropped, by reason.",
            ("reason",),
        ),
        Family(
            "tunnelmesh_wireguard_dropped_messages_total",
            "counter",
            "WireGuard messages dropped (bad tag, replay, unknown index, ...), by transport "
            "and reason.",
            ("transport", "reason"),
        ),
        Family(
            "tunnelmesh_filter_rule_packets_total",
            "counter",
            "Packets a filter rule decided, by rule and verdict.",
            ("layer", "protocol", "port", "action", "source_peer", "verdict"),
        ),
        Family(
            "tunnelmesh_filter_packets_total",
            "counter",
            "Inbound packets no rule decided, by outcome.",
            ("outcome",),
        ),
        Family("tunnelmesh_filter_tracked_flows", "gauge", "Flows in the connection tracker."),
        Family("tunnelmesh_dns_queries_total", "counter", "DNS queries the resolver received."),
        Family(
            "tunnelmesh_dns_responses_total",
            "counter",
            "DNS queries by outcome (answered, nxdomain, forwarded, ...).",
            ("result",),
        ),
        Family("tunnelmesh_dns_cache_hits_total", "counter", "DNS answers from the cache."),
        Family(
            "tunnelmesh_relay_messages_total",
            "counter",
            "Messages this node exchanged with the coordinator's relay.",
            ("direction",),
        ),
    )

    def __init__(self, node: Any) -> None:
        self.node = node

    def samples(self) -> Iterable[Metric]:
        node = self.node
        fam = self.family
        info = fam("tunnelmesh_node_info")
        info.add_metric([node.name, __version__], 1)
        yield info
        up = fam("tunnelmesh_node_uptime_seconds")
        up.add_metric([], time.monotonic() - node.started_at if node.started_at else 0.0)
        yield up
        client = node.client
        reach = fam("tunnelmesh_coordinator_reachable")
        reach.add_metric([], 1.0 if client.reachable else 0.0)
        yield reach
        count, total = getattr(client, "heartbeat_seconds", (0, 0.0))
        per_bucket = getattr(client, "heartbeat_buckets", None) or [0] * len(HEARTBEAT_BUCKETS)
        hb = fam("tunnelmesh_heartbeat_duration_seconds")
        cumulative, buckets = 0, []
        for bound, n in zip(HEARTBEAT_BUCKETS, per_bucket, strict=True):
            cumulative += n
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", count))
        hb.add_metric([], buckets=buckets, sum_value=total)
        yield hb
        last = getattr(client, "heartbeat_last_seconds", None)
        if last is not None:
            g = fam("tunnelmesh_heartbeat_last_duration_seconds")
            g.add_metric([], last)
            yield g
        nc = fam("tunnelmesh_network_changes_total")
        nc.add_metric([], node.network_changes)
        yield nc

        yield from self._peers()
        yield from self._forwarder()
        yield from self._filter()
        yield from self._dns()
        yield from self._relay()

    def _peers(self) -> Iterable[Metric]:
        node, fam = self.node, self.family
        sync = node.sync
        names = sorted(node.routes.peers)
        online, upm, transport = (
            fam("tunnelmesh_peer_online"),
            fam("tunnelmesh_peer_up"),
            fam("tunnelmesh_peer_transport"),
        )
        changes, rtt = fam("tunnelmesh_peer_path_changes_total"), fam("tunnelmesh_peer_rtt_seconds")
        wg = {
            k: fam(k)
            for k in (
                "tunnelmesh_peer_receive_bytes_total",
                "tunnelmesh_peer_transmit_bytes_total",
                "tunnelmesh_peer_receive_packets_total",
                "tunnelmesh_peer_transmit_packets_total",
                "tunnelmesh_peer_handshakes_total",
                "tunnelmesh_peer_handshake_attempts",
                "tunnelmesh_peer_last_handshake_age_seconds",
            )
        }
        wg_peers = self._wireguard_peers()
        now = time.monotonic()
        for name in names:
            route = node.routes.peers[name]
            info = sync.peers.get(name) if sync is not None else None
            online.add_metric([name], 1.0 if info is not None and info.online else 0.0)
            upm.add_metric([name], 1.0 if route.link is not None else 0.0)
            active = sync.link_transport.get(name) if sync is not None else None
            if active:
                transport.add_metric([name, active], 1.0)
            if sync is not None:
                changes.add_metric([name], sync.path_changes.get(name, 0))
                paths = sync.paths.get(name)
                ms = paths.rtt_ms() if paths is not None else None
                if ms is not None:
                    rtt.add_metric([name], ms / 1000.0)
            for tname, p in wg_peers.get(name, []):
                labels = [name, tname]
                wg["tunnelmesh_peer_receive_bytes_total"].add_metric(labels, p.rx_bytes)
                wg["tunnelmesh_peer_transmit_bytes_total"].add_metric(labels, p.tx_bytes)
                wg["tunnelmesh_peer_receive_packets_total"].add_metric(labels, p.rx_packets)
                wg["tunnelmesh_peer_transmit_packets_total"].add_metric(labels, p.tx_packets)
                wg["tunnelmesh_peer_handshakes_total"].add_metric(labels, p.handshakes)
                wg["tunnelmesh_peer_handshake_attempts"].add_metric(labels, p.handshake_attempts)
                if p.last_handshake is not None:
                    # the engines' clock is the event loop's (monotonic)
                    age = max(0.0, now - p.last_handshake)
                    wg["tunnelmesh_peer_last_handshake_age_seconds"].add_metric(labels, age)
        yield from (online, upm, transport, changes, rtt, *wg.values())

    def _wireguard_peers(self) -> dict[str, list[tuple[str, Any]]]:
        """Per mesh name, the WireGuard peer of every transport that keeps one (udp and relay
        each run their own engine and session; their engines name peers by mesh name)."""
        out: dict[str, list[tuple[str, Any]]] = {}
        for t in self.node.transports:
            by_name = getattr(getattr(t, "engine", None), "peer_by_name", None)
            if not callable(by_name):
                continue
            for name in self.node.routes.peers:
                p = by_name(name)
                if p is not None and hasattr(p, "rx_packets"):
                    out.setdefault(name, []).append((t.name, p))
        return out

    def _forwarder(self) -> Iterable[Metric]:
        node, fam = self.node, self.family
        fwd = node.forwarder
        if fwd is None:
            return
        st = dict(fwd.stats)
        pk = fam("tunnelmesh_forwarder_packets_total")
        pk.add_metric(["tx"], st.get("tx_packets", 0))
        pk.add_metric(["rx"], st.get("rx_packets", 0))
        yield pk
        dropped = fam("tunnelmesh_forwarder_dropped_packets_total")
        for key, value in sorted(st.items()):
            if key.startswith("dropped_"):
                dropped.add_metric([key.removeprefix("dropped_")], value)
        yield dropped
        wgd = fam("tunnelmesh_wireguard_dropped_messages_total")
        for t in node.transports:
            drops = getattr(getattr(t, "engine", None), "drops", None)
            if isinstance(drops, dict):
                for key, value in sorted(drops.items()):
                    wgd.add_metric([t.name, str(key)], value)
        yield wgd

    def _filter(self) -> Iterable[Metric]:
        svc, fam = self.node.filter_service, self.family
        engine = getattr(svc, "engine", None)
        if engine is None or not callable(getattr(engine, "stats", None)):
            return
        st = engine.stats()
        rules = fam("tunnelmesh_filter_rule_packets_total")
        for r in st.rules:
            base = [r.layer, r.protocol, str(r.port), r.action, r.source_peer or ""]
            rules.add_metric([*base, "allowed"], r.allowed)
            rules.add_metric([*base, "denied"], r.denied)
        yield rules
        outcomes = fam("tunnelmesh_filter_packets_total")
        for key in _FILTER_OUTCOMES:
            outcomes.add_metric([key], getattr(st, key))
        yield outcomes
        tracked = fam("tunnelmesh_filter_tracked_flows")
        tracked.add_metric([], st.tracked)
        yield tracked

    def _dns(self) -> Iterable[Metric]:
        dns, fam = self.node.dns, self.family
        stats = getattr(getattr(dns, "server", None), "stats", None)
        if not isinstance(stats, dict):
            return
        q = fam("tunnelmesh_dns_queries_total")
        q.add_metric([], stats.get("queries", 0))
        yield q
        res = fam("tunnelmesh_dns_responses_total")
        for key in _DNS_RESULTS:
            if key in stats:
                res.add_metric([key], stats[key])
        yield res
        hits = fam("tunnelmesh_dns_cache_hits_total")
        hits.add_metric([], stats.get("cache_hits", 0))
        yield hits

    def _relay(self) -> Iterable[Metric]:
        relay = next((t for t in self.node.transports if t.name == "relay"), None)
        stats = getattr(relay, "stats", None)
        if not isinstance(stats, dict):
            return
        m = self.family("tunnelmesh_relay_messages_total")
        m.add_metric(["tx"], stats.get("tx_messages", 0))
        m.add_metric(["rx"], stats.get("rx_messages", 0))
        yield m
