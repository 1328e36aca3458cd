"""The proxy's request counts on the process's /metrics (docs/metrics.md), read from its
:class:`~tunnelmesh_proxy.client.ProxyContext` at scrape time. ``kind`` is http, upgrade
(WebSocket) or connect; ``result`` routed or no_route (no rule matched, or a bad routing header: a 400 to the client)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunnelmesh.metrics import Family, FamilyCollector

__all__ = ["ProxyCollector"]


class ProxyCollector(FamilyCollector):
    """Reads a running proxy's context."""

    FAMILIES = (
        Family(
            "tunnelmesh_proxy_requests_total",
            "counter",
            "Requests the proxy received, by kind and routing result.",
            ("kind", "result"),
        ),
        Family(
            "tunnelmesh_proxy_client_connections",
            "gauge",
            "Client connections open now.",
        ),
    )

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def samples(self) -> Iterable[Any]:
        req = self.family("tunnelmesh_proxy_requests_total")
        for (kind, result), n in sorted(self.ctx.requests.items()):
            req.add_metric([kind, result], n)
        conns = self.family("tunnelmesh_proxy_client_connections")
        conns.add_metric([], len(self.ctx.connections))
        yield from (req, conns)
