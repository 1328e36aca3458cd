"""The relay hub's counters as metrics (read at scrape time), documented."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tunnelmesh.metrics import exposition
from tunnelmesh_relay.metrics import RelayCollector
from tunnelmesh_relay.server import RelayHub

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_hub_counters_are_read_when_scraped() -> None:
    hub = RelayHub()
    collector = RelayCollector(hub)
    hub.counters_for("alice").rx_bytes = 1500
    hub.counters_for("alice").dropped_rate = 2
    hub.counters_for("bob").tx_messages = 7
    text = exposition(collector, extra=False).decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert (
        got[("tunnelmesh_relay_hub_bytes_total", (("direction", "rx"), ("peer", "alice")))] == 1500
    )
    assert got[("tunnelmesh_relay_hub_messages_total", (("direction", "tx"), ("peer", "bob")))] == 7
    key = ("tunnelmesh_relay_hub_dropped_messages_total", (("peer", "alice"), ("reason", "rate")))
    assert got[key] == 2
    assert got[("tunnelmesh_relay_hub_connections", ())] == 0
    hub.counters_for("alice").rx_bytes += 10  # live: the next scrape sees it
    assert (
        'tunnelmesh_relay_hub_bytes_total{direction="rx",peer="alice"} 1510.0'
        in exposition(collector, extra=False).decode()
    )


def test_families_are_documented() -> None:
    docs = set(re.findall(r"^\| `(tunnelmesh_[a-z0-9_]+)` \|", DOCS.read_text(), re.M))
    assert set(RelayCollector.declared()) <= docs


def test_hub_families_are_served_only_while_the_app_runs() -> None:
    # An app built and never started (as the route-policy walker builds one to read its
    # routes) must not leave its families behind: the next coordinator's /metrics would
    # carry them twice, which Prometheus refuses ("second HELP line").
    from aiohttp import web
    from tunnelmesh.metrics.base import _extra
    from tunnelmesh_relay.server import add_routes

    class _Coordinator:
        config = None

    def relay_collectors() -> list[object]:
        return [c for c in _extra if isinstance(c, RelayCollector)]

    async def scenario() -> None:
        before = len(relay_collectors())
        app = web.Application()
        add_routes(app, _Coordinator())  # type: ignore[arg-type]
        assert len(relay_collectors()) == before
        runner = web.AppRunner(app)
        await runner.setup()
        assert len(relay_collectors()) == before + 1
        await runner.cleanup()
        assert len(relay_collectors()) == before

    asyncio.run(scenario())
