"""Metrics: declared families are documented, the exposition escapes labels, the coordinator's
/metrics over loopback counts registrations and heartbeats, promtool accepts what we serve."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from tunnelmesh._builtin import metrics as builtin_metrics
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.config import MetricsConfig, ServerConfig
from tunnelmesh.control.client import ControlClient, fetch_ca
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.identity import Identity
from tunnelmesh.metrics import (
    CoordinatorCollector,
    Family,
    FamilyCollector,
    MetricsServer,
    NodeCollector,
    add_collector,
    exposition,
    remove_collector,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "metrics.md"
TOKEN = "test-token-0123456789abcdef"
CORE_COLLECTORS: tuple[type[FamilyCollector], ...] = (NodeCollector, CoordinatorCollector)


def documented() -> set[str]:
    return set(re.findall(r"^\| `(tunnelmesh_[a-z0-9_]+)` \|", DOCS.read_text(), re.M))


def plugin_families() -> set[str]:
    """Families the installed plugins declare (the ones not installed cannot be checked here)."""
    names: set[str] = set()
    for mod, attr in (
        ("tunnelmesh_s3.metrics", "S3Collector"),
        ("tunnelmesh_s3.metrics", "DavCollector"),
        ("tunnelmesh_s3.metrics", "NfsCollector"),
        ("tunnelmesh_proxy.metrics", "ProxyCollector"),
        ("tunnelmesh_relay.metrics", "RelayCollector"),
    ):
        try:
            cls = getattr(__import__(mod, fromlist=[attr]), attr)
        except ImportError:
            continue
        names |= set(cls.declared())
    return names


@pytest.mark.parametrize("cls", CORE_COLLECTORS, ids=lambda c: c.__name__)
def test_every_declared_family_is_documented(cls: type[FamilyCollector]) -> None:
    missing = sorted(set(cls.declared()) - documented())
    assert not missing, f"docs/metrics.md does not document {missing}"


def test_no_documented_family_that_no_collector_declares() -> None:
    declared = {n for cls in CORE_COLLECTORS for n in cls.declared()} | plugin_families()
    prefixes = (
        "tunnelmesh_s3_",
        "tunnelmesh_dav_",
        "tunnelmesh_nfs_",
        "tunnelmesh_proxy_",
        "tunnelmesh_relay_hub_",
    )
    stale = sorted(n for n in documented() - declared if not n.startswith(prefixes))
    assert not stale, f"docs/metrics.md documents {stale}, which no collector declares"


@pytest.mark.parametrize("cls", CORE_COLLECTORS, ids=lambda c: c.__name__)
def test_declarations_are_well_formed(cls: type[FamilyCollector]) -> None:
    for f in cls.FAMILIES:
        assert re.fullmatch(r"tunnelmesh_[a-z0-9_]+", f.name), f.name
        assert f.name.endswith("_total") == (f.kind == "counter"), f.name
        assert f.help.endswith("."), f.name
        assert len(set(f.labels)) == len(f.labels), f.name


def test_an_undeclared_family_is_refused() -> None:
    with pytest.raises(KeyError):
        NodeCollector(None).family("tunnelmesh_made_up")


class _Odd(FamilyCollector):
    FAMILIES = (Family("tunnelmesh_peer_up", "gauge", "1 when up.", ("peer",)),)

    def __init__(self, names: Iterable[str]) -> None:
        self.names = list(names)

    def samples(self) -> Iterable[Metric]:
        m = self.family("tunnelmesh_peer_up")
        for n in self.names:
            m.add_metric([n], 1)
        yield m


ODD = ['we"ird', "back\\slash", "new\nline", 'all\\"of\nit', "ünï"]


def test_exposition_escapes_quotes_backslashes_and_newlines() -> None:
    text = exposition(_Odd(ODD), extra=False).decode()
    assert 'peer="we\\"ird"' in text and 'peer="back\\\\slash"' in text
    assert 'peer="new\\nline"' in text
    (fam,) = text_string_to_metric_families(text)
    assert [s.labels["peer"] for s in fam.samples] == ODD  # round trip


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_promtool_accepts_escaped_labels() -> None:
    text = exposition(_Odd(ODD), extra=False)
    check(text)


def check(text: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode() + text.decode()


def test_a_failing_collector_is_logged_and_the_rest_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(FamilyCollector):
        def samples(self) -> Iterable[Metric]:
            raise RuntimeError("boom")

    text = exposition(Broken(), _Odd(["a"]), extra=False).decode()
    assert 'tunnelmesh_peer_up{peer="a"} 1.0' in text
    assert "metrics collector Broken failed" in caplog.text


def test_plugin_collectors_are_served_while_added() -> None:
    odd = _Odd(["plugged"])
    add_collector(odd)
    try:
        assert b'peer="plugged"' in exposition()
    finally:
        remove_collector(odd)
    assert b'peer="plugged"' not in exposition()


def test_node_collector_reads_a_node_without_a_data_plane() -> None:
    """A node whose forwarder, filter and DNS are not up yet yields what exists, no error."""
    node = SimpleNamespace(
        name="alpha",
        started_at=0.0,
        client=SimpleNamespace(reachable=False, heartbeat_seconds=(0, 0.0)),
        network_changes=0,
        sync=None,
        routes=SimpleNamespace(peers={}),
        transports=[],
        forwarder=None,
        filter_service=None,
        dns=None,
    )
    fams = {m.name for m in NodeCollector(node).collect()}
    assert "tunnelmesh_node_info" in fams and "tunnelmesh_coordinator_reachable" in fams


def test_heartbeat_histogram_buckets_are_cumulative() -> None:
    from tunnelmesh.control.client import HEARTBEAT_BUCKETS

    per_bucket = [0] * len(HEARTBEAT_BUCKETS)
    per_bucket[0], per_bucket[3] = 2, 1  # two under 5 ms, one under 50 ms; one over 10 s
    node = SimpleNamespace(
        name="alpha",
        started_at=0.0,
        client=SimpleNamespace(
            reachable=True, heartbeat_seconds=(4, 12.07), heartbeat_buckets=per_bucket
        ),
        network_changes=0,
        sync=None,
        routes=SimpleNamespace(peers={}),
        transports=[],
        forwarder=None,
        filter_service=None,
        dns=None,
    )
    text = exposition(NodeCollector(node), extra=False).decode()
    assert 'tunnelmesh_heartbeat_duration_seconds_bucket{le="0.005"} 2.0' in text
    assert 'tunnelmesh_heartbeat_duration_seconds_bucket{le="0.05"} 3.0' in text
    assert 'tunnelmesh_heartbeat_duration_seconds_bucket{le="10.0"} 3.0' in text
    assert 'tunnelmesh_heartbeat_duration_seconds_bucket{le="+Inf"} 4.0' in text
    assert "tunnelmesh_heartbeat_duration_seconds_count 4.0" in text
    check(text.encode())


def test_bad_listen_is_a_config_error() -> None:
    from tunnelmesh.errors import ConfigError

    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        MetricsServer(listen="127.0.0.1:notaport")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def scrape(url: str) -> tuple[str, dict[str, Metric]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Metric], name: str, suffix: str = "", **labels: str) -> float:
    fam = fams[name]
    for s in fam.samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name}{suffix} {labels}")


def test_coordinator_metrics_over_loopback(tmp_path: Path) -> None:
    """``serve``'s coordinator with the built-in plugin: /metrics on metrics.listen counts
    registrations by result, heartbeats and peers online."""

    async def main() -> None:
        cfg = ServerConfig(
            auth_token=TOKEN,
            listen="127.0.0.1:0",
            stun_listen="127.0.0.1:0",
            data_dir=str(tmp_path / "state"),
            metrics=MetricsConfig(listen="127.0.0.1:0"),
        )
        pm = make_plugin_manager()
        async with CoordinatorServer(cfg, pm=pm) as server:
            metrics = builtin_metrics._servers[server.coordinator]
            assert metrics.host == "127.0.0.1" and metrics.port > 0
            ca = await fetch_ca(server.url, TOKEN)
            c = ControlClient(
                server=server.url,
                identity=Identity.generate(),
                ca_pem=ca,
                auth_token=TOKEN,
                name="alpha",
            )
            bad = ControlClient(
                server=server.url,
                identity=Identity.generate(),
                ca_pem=ca,
                auth_token="wrong-token-wrong-token",
                name="beta",
            )
            try:
                await c.register()
                await c.heartbeat()
                assert c.heartbeat_seconds[0] == 1 and sum(c.heartbeat_buckets) == 1
                with pytest.raises(Exception, match=r"bad_token|401"):
                    await bad.register()
                # the join token as a credential, an unknown session: denied, and not counted
                # as registrations (they were, as refused ones)
                session = c.session_token
                c.session_token = TOKEN
                with pytest.raises(Exception, match=r"token_not_credential"):
                    await c.request("DELETE", "/api/v1/peers/alpha")
                c.session_token = "not-a-session"
                with pytest.raises(Exception, match=r"401"):
                    await c.request("GET", "/api/v1/peers")
                c.session_token = session
            finally:
                await c.aclose()
                await bad.aclose()
            text, fams = await scrape(metrics.url)
        assert coordinator_gone(metrics)
        reg = "tunnelmesh_coordinator_registrations"
        assert value(fams, reg, "_total", result="registered") == 1
        assert value(fams, reg, "_total", result="refused", reason="bad_token") == 1
        reasons = {x.labels.get("reason") for x in fams[reg].samples}
        assert not reasons & {"unauthorized", "token_not_credential"}, reasons
        denied = "tunnelmesh_coordinator_denied"
        assert value(fams, denied, "_total", reason="unauthorized") == 1
        assert value(fams, denied, "_total", reason="token_not_credential") == 1
        assert value(fams, "tunnelmesh_coordinator_heartbeats", "_total") == 1
        assert value(fams, "tunnelmesh_coordinator_peer_online", peer="alpha") == 1
        assert value(fams, "tunnelmesh_coordinator_peers", state="online") == 1
        assert TOKEN not in text
        check(text.encode())

    run(main())


def coordinator_gone(server: MetricsServer) -> bool:
    """The metrics server stopped with the coordinator (its port refuses connections)."""
    import socket

    with socket.socket() as s:
        return s.connect_ex((server.host, server.port)) != 0


def test_metrics_disabled_serves_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = ServerConfig(
            auth_token=TOKEN,
            listen="127.0.0.1:0",
            stun_listen="127.0.0.1:0",
            data_dir=str(tmp_path / "state"),
            metrics=MetricsConfig(enabled=False),
        )
        async with CoordinatorServer(cfg, pm=make_plugin_manager()) as server:
            assert server.coordinator not in builtin_metrics._servers

    run(main())
