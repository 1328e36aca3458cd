"""Packet filter cost per packet, with 10 and 1,000 rules (pytest-benchmark).

Run: ``uv run python core/bench/bench_filter.py`` (or ``nox -s bench -- filter``). Not part
of the test run. Each benchmark filters one batch of 64 packets; the figure to read is the
median divided by 64, printed at the end as ns/packet (the mean suffers on a busy machine).
"""

from __future__ import annotations

import sys

import pytest
from tunnelmesh.filter import Layer, PortFilter, Rule
from tunnelmesh.filter.craft import ACK, SYN, tcp, udp

ME = "10.42.0.1"
PEERS = [f"10.42.0.{i}" for i in range(2, 10)]
BATCH = 64
NOW = 1_000_000.0


def make_filter(n_rules: int) -> PortFilter:
    f = PortFilter(default_deny=True, clock=lambda: NOW)
    per_layer = n_rules // 4
    for i, layer in enumerate(Layer):
        rules = []
        for j in range(per_layer):
            port = 1000 + i * per_layer + j
            if j % 3 == 0:
                rules.append(Rule(port=port, action="deny", source_peer=f"peer{j % 8}"))
            else:
                rules.append(Rule(port=port, protocol="udp" if j % 2 else "tcp"))
        f.set_layer(layer, rules, now=NOW)
    return f


def new_flow_batch(n_rules: int) -> list[bytes]:
    """SYNs that the rules decide (denied, so they never enter conntrack)."""
    span = max(n_rules, 1)
    return [tcp(PEERS[i % 8], ME, 40000 + i, 1000 + (i * 37) % span, SYN) for i in range(BATCH)]


@pytest.mark.parametrize("n_rules", [10, 1000])
def test_new_flows_decided_by_rules(benchmark, n_rules: int) -> None:  # type: ignore[no-untyped-def]
    f = make_filter(n_rules)
    f.add_rule(Layer.RUNTIME, Rule(port=1, action="deny"), now=NOW)
    batch = new_flow_batch(n_rules)
    benchmark.extra_info["packets"] = BATCH
    benchmark(f.verdicts, batch, "peer3", True, NOW)
    assert len(f.conntrack) < BATCH


@pytest.mark.parametrize("n_rules", [10, 1000])
def test_tracked_flows(benchmark, n_rules: int) -> None:  # type: ignore[no-untyped-def]
    f = make_filter(n_rules)
    out = [udp(ME, PEERS[0], 20000 + i, 53) for i in range(BATCH)]
    f.verdicts(out, "peer0", False, NOW)
    replies = [udp(PEERS[0], ME, 53, 20000 + i, b"x" * 100) for i in range(BATCH)]
    benchmark.extra_info["packets"] = BATCH
    result = benchmark(f.verdicts, replies, "peer0", True, NOW)
    assert all(result)


def test_outbound_established_tcp(benchmark) -> None:  # type: ignore[no-untyped-def]
    f = make_filter(10)
    f.verdicts([tcp(ME, PEERS[0], 30000, 443, SYN)], "peer0", False, NOW)
    f.verdicts([tcp(PEERS[0], ME, 443, 30000, SYN | ACK)], "peer0", True, NOW)
    batch = [tcp(ME, PEERS[0], 30000, 443, ACK, b"x" * 1300)] * BATCH
    benchmark.extra_info["packets"] = BATCH
    benchmark(f.verdicts, batch, "peer0", False, NOW)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    bs = getattr(config, "_benchmarksession", None)
    if bs is None:
        return
    terminalreporter.write_line("")
    for bench in bs.benchmarks:
        mean = bench.stats.mean / BATCH * 1e9
        median = bench.stats.median / BATCH * 1e9
        terminalreporter.write_line(
            f"{bench.name:<40} {median:7.0f} ns/packet median, {mean:7.0f} mean"
        )


if __name__ == "__main__":
    import os
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    sys.exit(
        subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                __file__,
                "-q",
                "-p",
                "bench_filter",
                "--benchmark-min-rounds=50",
                "--benchmark-max-time=0.5",
                "--benchmark-columns=mean,median,stddev,rounds",
            ],
            env=env,
        )
    )
