"""The proxy's request counts on the process's /metrics (loopback), documented."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_proxy_http import fetch, proxy, ws_headers
from tunnelmesh.metrics import exposition
from tunnelmesh_proxy.metrics import ProxyCollector
from tunnelmesh_proxy.testing import HttpUpstream, request_bytes, runner

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def requests_in(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "tunnelmesh_proxy_requests_total":
                out[(s.labels["kind"], s.labels["result"])] = s.value
    return out


def test_requests_are_counted_by_kind_and_result_while_the_proxy_runs() -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.5") as up, proxy() as p:
            for _ in range(3):
                assert (
                    await fetch(p, request_bytes("/", ws_headers(up, "workspace-5")))
                ).status == 200
            bad = await fetch(p, request_bytes("/", {"X-Cmux-Port-Internal": "notaport"}))
            assert bad.status == 400
            counts = requests_in(exposition().decode())
            assert counts[("http", "routed")] == 3
            assert counts[("http", "no_route")] == 1
        assert "tunnelmesh_proxy_requests_total" not in exposition().decode()  # stopped

    runner("asyncio")(main)


def test_families_are_documented() -> None:
    docs = set(re.findall(r"^\| `(tunnelmesh_[a-z0-9_]+)` \|", DOCS.read_text(), re.M))
    assert set(ProxyCollector.declared()) <= docs
