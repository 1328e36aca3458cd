"""litmus, the WebDAV server test suite (Debian ``litmus``), against the server over loopback.

Every suite it has (basic, copymove, props, locks, http) must pass whole. Skipped where litmus
is not installed (scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from davkit import Dav, dav_server

pytestmark = pytest.mark.skipif(
    shutil.which("litmus") is None, reason="litmus is not installed (Debian: litmus)"
)


@pytest.fixture(scope="module")
def dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dav]:
    yield from dav_server(tmp_path_factory.mktemp("litmus"))


def test_litmus_passes_every_suite(dav: Dav, tmp_path: Path) -> None:
    assert dav.request("MKCOL", "/team/litmus/")[0] == 201
    proc = subprocess.run(
        ["litmus", f"http://127.0.0.1:{dav.port}/team/litmus/"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # litmus writes debug.log and child.log where it runs
    )
    summaries = re.findall(
        r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed", proc.stdout
    )
    suites = {name: (int(run), int(passed), int(failed)) for name, run, passed, failed in summaries}
    assert set(suites) == {"basic", "copymove", "props", "locks", "http"}, proc.stdout[-3000:]
    failed = {name: s for name, s in suites.items() if s[2] or s[1] != s[0]}
    assert not failed, proc.stdout[-6000:]
    assert proc.returncode == 0, proc.stdout[-3000:]
