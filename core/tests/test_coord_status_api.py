"""The mesh at a glance: ``GET /api/v1/status`` rows, per-peer traffic history from heartbeats
(``GET /api/v1/peers/{name}/traffic``) and peer locations (loopback; the rings sans-IO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_coord_api import TOKEN, Api, client, config, run
from tunnelmesh.config import ConfigError, load_peer_config
from tunnelmesh.control.client import PeerStatus
from tunnelmesh.control.messages import Counters, Heartbeat, Location
from tunnelmesh.coordinator.peerstats import COARSE, FINE, PeerStats, Ring, Traffic
from tunnelmesh.coordinator.server import CoordinatorServer

# --- the rings, sans-IO ------------------------------------------------------------------------


def test_a_heartbeat_interval_is_spread_over_the_slots_it_covers() -> None:
    ring = Ring(10.0, 6)
    ring.add(95.0, 115.0, 2000, 200)  # 5 s in slot 9, 10 s in slot 10, 5 s in slot 11
    pts = ring.series(now=115.0, covered_until=115.0)
    assert [p[0] for p in pts] == [90.0, 100.0, 110.0]
    assert [p[1] for p in pts] == pytest.approx([50.0, 100.0, 100.0])  # bytes/s
    assert [p[2] for p in pts] == pytest.approx([5.0, 10.0, 10.0])
    # the newest slot's rate is over the time it covers so far (5 s), so a chart moves at once


def test_gaps_hold_no_data_and_the_ring_forgets_what_is_older_than_its_span() -> None:
    ring = Ring(10.0, 6)
    ring.add(0.0, 10.0, 100, 0)
    ring.add(40.0, 50.0, 300, 0)  # slots 1..3 had no heartbeat
    pts = ring.series(now=50.0, covered_until=50.0)
    assert [p[0] for p in pts] == [0.0, 40.0]
    ring.add(100.0, 110.0, 700, 0)  # 6 slots later: slot 0 and 4 are out of the span
    assert [p[0] for p in ring.series(now=110.0, covered_until=110.0)] == [100.0]
    assert len(ring.rx) == 6  # fixed size, whatever the time


def test_traffic_rates_restarts_and_gaps() -> None:
    t = Traffic()
    t.record(1000.0, 0, 0)  # the first heartbeat: a baseline, no rate
    assert (t.rx_rate, t.tx_rate) == (0.0, 0.0)
    t.record(1010.0, 10_000, 5_000)
    assert (t.rx_rate, t.tx_rate) == (1000.0, 500.0)
    t.record(1020.0, 100, 100)  # the daemon restarted: counters went down, a new baseline
    assert (t.rx_rate, t.tx_rate) == (0.0, 0.0)
    t.record(1030.0, 10_100, 100)
    assert t.rx_rate == 1000.0
    t.record(1330.0, 20_100, 100)  # 5 minutes without a heartbeat: unknown when, not spread
    assert t.rx_rate == 0.0
    step, pts = t.series("hour", 1330.0)
    assert step == FINE[0] and sum(p[1] for p in pts) * step == pytest.approx(20_000, rel=0.01)
    step, pts = t.series("day", 1330.0)
    assert step == COARSE[0] and len(pts) == 1  # 1000..1030 is one 5-minute slot


def test_memory_is_fixed_per_peer() -> None:
    t = Traffic()
    per_peer = sum(a.itemsize * len(a) for a in (t.fine.rx, t.fine.tx, t.coarse.rx, t.coarse.tx))
    assert per_peer == (FINE[1] + COARSE[1]) * 2 * 4  # 5,184 bytes: 2,000 peers ~10 MiB
    for i in range(2000):  # a day of heartbeats does not grow it
        t.record(float(i * 10), i * 1000, i * 10)
    assert sum(len(a) for a in (t.fine.rx, t.coarse.rx)) == FINE[1] + COARSE[1]


def test_locations_are_kept_only_when_the_coordinator_shows_them() -> None:
    hb = Heartbeat(location=Location(lat=52.5, lon=13.4, city="Berlin"))
    off, on = PeerStats(), PeerStats(locations=True)
    off.heartbeat("p1", hb, 1.0)
    on.heartbeat("p1", hb, 1.0)
    assert off.location == {} and on.location == {"p1": hb.location}
    on.heartbeat("p1", Heartbeat(), 2.0)  # the peer dropped it from its config
    assert on.location == {}


# --- the routes -----------------------------------------------------------------------------


def _hb(node: Any, rx: int, tx: int, **kw: Any) -> None:
    node._status = lambda: PeerStatus(counters=Counters(bytes_received=rx, bytes_sent=tx), **kw)


def test_status_lists_what_the_peers_page_needs(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            api = Api(server)
            boss = await client(server, "boss")
            beta = await client(server, "beta")
            _hb(boss, 0, 0, transports={"beta": "relay"}, rtt_ms={"beta": 12.5})
            await boss.heartbeat()
            _hb(beta, 0, 0, allow_exit_traffic=True, transports={"boss": "relay"})
            await beta.heartbeat()
            _hb(beta, 50_000, 10_000, allow_exit_traffic=True, transports={"boss": "relay"})
            await beta.heartbeat()
            tok = boss.registration.session_token
            assert (await api.call("GET", "/api/v1/status"))[0] == 401
            assert (await api.call("GET", "/api/v1/status", token=TOKEN))[0] == 403
            st, got = await api.call("GET", "/api/v1/status", token=beta.registration.session_token)
            assert st == 200 and got["view"] == "beta"
            st, got = await api.call("GET", "/api/v1/status", token=tok)
            assert st == 200 and got["view"] == "boss"
            srv = got["server"]
            assert srv["peers_total"] == 2 and srv["peers_online"] == 2
            assert srv["locations"] is False and srv["uptime"] >= 0 and srv["version"]
            rows = {r["name"]: r for r in got["peers"]}
            b = rows["beta"]
            assert b["mesh_ip"] and b["online"] and b["exit"] and b["version"]
            assert b["transport"] == "relay" and b["relayed"] and b["rtt_ms"] == 12.5
            assert b["rx_rate"] > 0 and b["rx_bytes"] == 50_000 and b["tx_bytes"] == 10_000
            assert b["transports_used"] == {"relay": 1} and "location" not in b
            assert rows["boss"]["transport"] == "" and rows["boss"]["rtt_ms"] is None
            # another peer's view
            got = (await api.call("GET", "/api/v1/status?view=beta", token=tok))[1]
            rows = {r["name"]: r for r in got["peers"]}
            assert got["view"] == "beta" and rows["boss"]["transport"] == "relay"
            st, got = await api.call("GET", "/api/v1/status?view=nobody", token=tok)
            assert st == 404
            for c in (boss, beta):
                await c.aclose()
            await api.close()

    run(main())


def test_traffic_history_of_a_peer(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            api = Api(server)
            boss = await client(server, "boss")
            tok = boss.registration.session_token
            path = "/api/v1/peers/boss/traffic"
            st, got = await api.call("GET", path, token=tok)
            assert st == 200 and got["points"] == [] and got["step"] == 10.0
            for i in range(3):
                _hb(boss, i * 100_000, i * 1_000)
                await boss.heartbeat()
            st, got = await api.call("GET", path + "?span=hour", token=tok)
            assert st == 200 and got["span"] == "hour" and got["points"], got
            assert all(len(p) == 3 for p in got["points"])
            assert max(p[1] for p in got["points"]) > 0
            st, got = await api.call("GET", path + "?span=day", token=tok)
            assert st == 200 and got["step"] == 300.0 and got["points"]
            coord = server.coordinator
            before = coord.stats["bad_requests"]
            st, got = await api.call("GET", path + "?span=week", token=tok)
            assert st == 400 and "span" in got["message"]
            assert coord.stats["bad_requests"] == before + 1
            assert (await api.call("GET", "/api/v1/peers/nobody/traffic", token=tok))[0] == 404
            assert (await api.call("GET", path))[0] == 401
            await boss.aclose()
            await api.close()

    run(main())


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ({"lat": 91, "lon": 0}, "lat"),
        ({"lat": 0, "lon": -180.5}, "lon"),
        ({"lat": 0, "lon": 0, "city": "x" * 65}, "city"),
        ({"lat": 0, "lon": 0, "city": "a\nb"}, "city"),
        ({"lat": "north", "lon": 0}, "lat"),
        ({"lon": 0}, "lat"),
    ],
)
def test_a_bad_location_is_400_counted_and_changes_nothing(
    tmp_path: Path, location: dict[str, Any], says: str
) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path, locations=True)) as server:
            api = Api(server)
            boss = await client(server, "boss")
            coord = server.coordinator
            rec = coord.peers[boss.registration.peer_id]
            seen, before = rec.last_seen, coord.stats["bad_requests"]
            body = {"location": location, "counters": {"bytes_sent": 5}}
            st, got = await api.call(
                "POST", "/api/v1/heartbeat", body, token=boss.registration.session_token
            )
            assert st == 400 and says in got["message"], got
            assert coord.stats["bad_requests"] == before + 1
            assert rec.last_seen == seen and rec.counters.bytes_sent == 0
            assert coord.peerstats.location == {}
            await boss.aclose()
            await api.close()

    run(main())


@pytest.mark.parametrize("shown", [True, False])
def test_locations_are_shown_only_with_locations_true(tmp_path: Path, shown: bool) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path, locations=shown)) as server:
            api = Api(server)
            boss = await client(server, "boss")
            here = Location(lat=-33.87, lon=151.21, city="Sydney")
            _hb(boss, 0, 0, location=here)
            await boss.heartbeat()
            got = (await api.call("GET", "/api/v1/status", token=boss.registration.session_token))[
                1
            ]
            assert got["server"]["locations"] is shown
            row = got["peers"][0]
            if shown:
                assert row["location"] == {"lat": -33.87, "lon": 151.21, "city": "Sydney"}
            else:
                assert "location" not in row
            await boss.aclose()
            await api.close()

    run(main())


def test_peer_yaml_location_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: alpha\nlocation: {lat: 48.86, lon: 2.35, city: Paris}\n")
    assert load_peer_config(good).location == Location(lat=48.86, lon=2.35, city="Paris")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: alpha\nlocation: {lat: 100, lon: 2.35}\n")
    with pytest.raises(ConfigError, match="lat"):
        load_peer_config(bad)
    nan = tmp_path / "nan.yaml"
    nan.write_text("name: alpha\nlocation: {lat: .nan, lon: 0}\n")
    with pytest.raises(ConfigError, match="lat"):
        load_peer_config(nan)


def test_peers_traffic_command_prints_the_routes_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tunnelmesh peers traffic``: the same answer as the dashboard's chart, as a table or
    JSON (the route itself is tested above)."""
    import json

    from click.testing import CliRunner
    from tunnelmesh.cli import peers_cmd

    asked: list[str] = []
    answer = {"name": "beta", "peer_id": "0" * 16, "span": "day", "step": 300.0,
              "points": [[1_700_000_000.0, 2048.0, 10.0]]}  # fmt: skip

    def fake(context: str | None, method: str, path: str, body: Any = None) -> Any:
        asked.append(f"{method} {path}")
        return answer

    monkeypatch.setattr(peers_cmd, "api_call", fake)
    out = CliRunner().invoke(peers_cmd.peers, ["traffic", "beta", "--span", "day"])
    assert out.exit_code == 0, out.output
    assert asked == ["GET /api/v1/peers/beta/traffic?span=day"]
    assert "2.0 KiB" in out.output and "10 B" in out.output
    out = CliRunner().invoke(peers_cmd.peers, ["traffic", "beta", "--json"])
    assert json.loads(out.output) == answer
    answer["points"] = []
    out = CliRunner().invoke(peers_cmd.peers, ["traffic", "beta"])
    assert "no traffic history yet" in out.output
