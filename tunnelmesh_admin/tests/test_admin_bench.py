"""The benchmark runs (small): a refactor of what it imports must not leave it broken unseen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_admin.py"


def test_the_benchmark_runs_and_prints_its_figures_beside_the_anchors() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--peers",
            "12",
            "--paths",
            "3",
            "--pages",
            "2",
            "--ticks",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout
    assert "peers page: server" in out and "anchor: < 1000 ms server-side" in out, out
    assert "live feed:" in out and "anchor: < 5 %" in out, out
