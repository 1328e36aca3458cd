"""`tunnelmesh demo` as the README runs it: a subprocess that must leave nothing behind, after a
normal run and after SIGINT or SIGTERM in the middle."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")

from tunnelmesh.testing import _netns

pytestmark = pytest.mark.lab


def start_demo(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELMESH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "tunnelmesh", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def leftovers(pid: int) -> list[str]:
    prefix = f"{_netns.DEFAULT_PREFIX}-{pid}-"
    found = [ns for ns in _netns.list_namespaces() if ns.startswith(prefix)]
    netns_etc = Path("/etc/netns")
    if netns_etc.exists():
        found += [str(p) for p in netns_etc.iterdir() if p.name.startswith(prefix)]
    return found


def test_demo_runs_reports_and_cleans_up() -> None:
    proc = start_demo("--duration", "0", "--transfer-seconds", "0.3")
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "all 6 paths work, by name and by IP" in out
    header = next(line for line in out.splitlines() if line.startswith("FROM"))
    assert header.split() == [
        "FROM", "TO", "MESH", "IP", "BY", "NAME", "TRANSPORT", "PATH", "RTT", "THROUGHPUT",
    ]  # fmt: skip
    rows = [line.split() for line in out.splitlines() if re.match(r"(alpha|beta|gamma)\s", line)]
    assert len(rows) == 6 and all(r[3] == "ok" and r[4] == "udp" for r in rows), out
    assert "removed every namespace" in out
    assert leftovers(proc.pid) == []
    assert not re.search(r"Traceback", out), out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_interrupted_cleans_up(sig: signal.Signals) -> None:
    proc = start_demo()
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 120
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "beta joined" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)
        assert leftovers(proc.pid), "the demo should have namespaces while it runs"
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert f"{sig.name}: stopping" in rest
    assert "removed every namespace" in rest
    assert leftovers(proc.pid) == []
