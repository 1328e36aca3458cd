"""Attack suite (issue 11), relay part: frames to names nobody holds cost bounded memory (sans-IO).

A peer may send SEND messages to any name; a destination without a relay link answers with an
UNREACHED notice at most once a second per (source, destination). The bookkeeping behind that
used to keep one entry per (source, destination) forever, so frames to random names grew the
coordinator without bound; now each connection remembers its 64 most recent destinations. (The RSS of a real coordinator under 100,000 such frames is measured
by ``tunnelmesh_relay/bench/bench_relay_unreached.py``.)
"""

from __future__ import annotations

import os

import pytest
from tunnelmesh_relay.proto import SEND, UNREACHED, decode_header, encode_message
from tunnelmesh_relay.server import RelayConfig, RelayHub, _Conn

from tunnelmesh_relay import server

DATA = bytes((4, 0, 0, 0)) + bytes(12) + bytes(16)


def _hub(names: list[str]) -> tuple[RelayHub, list[float]]:
    now = [0.0]
    hub = RelayHub(RelayConfig(rate_bytes_per_second=0, queue=64), clock=lambda: now[0])
    for n in names:
        hub.conns[n] = _Conn(n, None, 64)  # type: ignore[arg-type]
    return hub, now


def test_frames_to_random_names_leave_the_relay_tables_bounded() -> None:
    hub, now = _hub(["attacker", "bob"])
    for i in range(100_000):
        now[0] = i * 0.001  # 1,000 frames a second for 100 s
        hub.forward("attacker", encode_message(SEND, os.urandom(8).hex(), [DATA]))
    assert hub.counters["attacker"].dropped_unreachable == 100_000
    # The bookkeeping used to keep all 100,000 names; now the connection's 64 most recent.
    assert len(hub.conns["attacker"].unreached) == server.MAX_UNREACHED
    assert not hub.conns["bob"].unreached
    assert set(hub.counters) == {"attacker"}  # nothing per destination name


def test_unreached_notices_still_come_once_a_second_per_destination() -> None:
    hub, now = _hub(["a"])
    q = hub.conns["a"].queue
    for t in (0.0, 0.5, 0.99, 1.0, 1.2, 2.5):
        now[0] = t
        hub.forward("a", encode_message(SEND, "ghost", [DATA]))
    notices = [q.get_nowait() for _ in range(q.qsize())]
    assert [decode_header(n)[:2] for n in notices] == [(UNREACHED, "ghost")] * 3


def test_counters_of_gone_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "MAX_COUNTED", 10)
    hub, _ = _hub(["stays"])
    hub.forward("stays", encode_message(SEND, "nobody", [DATA]))
    for i in range(50):  # peers come and go under ever new names
        conn = _Conn(f"p{i}", None, 4)  # type: ignore[arg-type]
        hub.conns[conn.name] = conn
        hub.forward(conn.name, encode_message(SEND, "nobody", [DATA]))
        del hub.conns[conn.name]
        hub._trim()
    assert len(hub.counters) <= 11 and len(hub.buckets) <= 11
    assert "stays" in hub.counters  # a connected peer's counters are kept
