"""The relay hub's metrics on the coordinator's /metrics (docs/metrics.md), read from its
per-peer counters at scrape time. ``peer`` values are registered peer names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunnelmesh.metrics import Family, FamilyCollector

__all__ = ["RelayCollector"]

_PEER = ("peer",)
_DROPS = ("rate", "unreachable", "queue", "invalid")


class RelayCollector(FamilyCollector):
    """Reads a :class:`~tunnelmesh_relay.server.RelayHub`."""

    FAMILIES = (
        Family(
            "tunnelmesh_relay_hub_bytes_total",
            "counter",
            "Bytes the relay took from (rx) and delivered to (tx) the peer.",
            ("peer", "direction"),
        ),
        Family(
            "tunnelmesh_relay_hub_messages_total",
            "counter",
            "Messages the relay took from (rx) and delivered to (tx) the peer.",
            ("peer", "direction"),
        ),
        Family(
            "tunnelmesh_relay_hub_dropped_messages_total",
            "counter",
            "Messages the relay dropped, by peer and reason (rate, unreachable, queue, invalid).",
            ("peer", "reason"),
        ),
        Family(
            "tunnelmesh_relay_hub_connections",
            "gauge",
            "Peers with an open relay connection.",
        ),
    )

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    def samples(self) -> Iterable[Any]:
        hub, fam = self.hub, self.family
        by, msgs, drops = (
            fam("tunnelmesh_relay_hub_bytes_total"),
            fam("tunnelmesh_relay_hub_messages_total"),
            fam("tunnelmesh_relay_hub_dropped_messages_total"),
        )
        for name, c in sorted(hub.counters.items()):
            by.add_metric([name, "rx"], c.rx_bytes)
            by.add_metric([name, "tx"], c.tx_bytes)
            msgs.add_metric([name, "rx"], c.rx_messages)
            msgs.add_metric([name, "tx"], c.tx_messages)
            for reason in _DROPS:
                drops.add_metric([name, reason], getattr(c, f"dropped_{reason}"))
        conns = fam("tunnelmesh_relay_hub_connections")
        conns.add_metric([], len(hub.conns))
        yield from (by, msgs, drops, conns)
