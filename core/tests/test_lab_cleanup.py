"""The namespace lab stays isolated from the machine and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tunnelmesh.errors import LabError
from tunnelmesh.testing import _netns
from tunnelmesh.testing.lab import PUBLIC_PROBES, Lab, host_addresses

pytestmark = pytest.mark.lab
pytest_plugins = ["pytester"]


def _root_forwarding() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text()


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def test_three_hosts_and_a_nat_are_isolated_and_removed() -> None:
    forwarding, links = _root_forwarding(), _root_links()
    with Lab() as lab:
        nat = lab.add_nat("nat", "full-cone")
        a = lab.add_host("a", switch=nat.inside)
        b = lab.add_host("b", switch=nat.inside)
        c = lab.add_host("c")
        assert a.ping(c.address) and b.ping(c.address)
        assert lab.escapes() == []
        lab.check_isolation()
        assert _root_forwarding() == forwarding  # forwarding only inside the NAT namespace
        assert _root_links() == links  # nothing was plugged into the root namespace
        namespaces = lab.namespaces
        assert len(namespaces) == 6  # wan, nat, natin, a, b, c
    assert not set(namespaces) & set(_netns.list_namespaces())
    assert not (_netns.REGISTRY_DIR / lab.run_id).exists()


def test_escapes_are_found_by_route_lookup(lab: Lab) -> None:
    a = lab.add_host("a")
    targets = [*host_addresses(), *PUBLIC_PROBES]
    assert any(":" not in t for t in targets)
    assert lab.escapes() == []
    # A default route (to a lab address) would make public addresses routable: the check
    # must see it. Nothing is sent; only the route lookup runs.
    a.run(["ip", "route", "add", "1.1.1.1/32", "via", "100.64.0.1"])
    found = lab.escapes()
    assert any("has a route to 1.1.1.1" in line and a.ns in line for line in found)
    with pytest.raises(LabError, match="not isolated"):
        lab.check_isolation()


def test_teardown_after_a_failing_test(pytester: pytest.Pytester, tmp_path: Path) -> None:
    record = tmp_path / "namespaces.txt"
    pytester.makepyfile(
        textwrap.dedent(
            f"""
            import pathlib
            import subprocess
            import pytest

            @pytest.mark.lab
            def test_fails(lab):
                a = lab.add_host("a")
                lab.add_host("b")
                a.popen(["sleep", "60"])
                pathlib.Path({str(record)!r}).write_text("\\n".join(lab.namespaces))
                raise RuntimeError("the test body failed")
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    namespaces = record.read_text().split()
    assert len(namespaces) == 3
    assert not set(namespaces) & set(_netns.list_namespaces())


def test_stale_namespaces_of_a_killed_run_are_reaped() -> None:
    code = textwrap.dedent(
        """
        import os, signal, subprocess, time
        from tunnelmesh.testing._netns import namespace_pids
        from tunnelmesh.testing.lab import Lab
        lab = Lab()
        a = lab.add_host("a")
        sleeper = a.popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10  # until `ip netns exec` has entered the namespace
        while sleeper.pid not in namespace_pids(a.ns) and time.monotonic() < deadline:
            time.sleep(0.01)
        print(" ".join(lab.namespaces), sleeper.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    crashed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert crashed.returncode == -signal.SIGKILL
    *namespaces, sleeper = crashed.stdout.split()
    assert set(namespaces) <= set(_netns.list_namespaces())
    assert int(sleeper) in _netns.namespace_pids(namespaces[-1])
    with Lab() as lab:
        assert set(namespaces) <= set(lab.reaped)
        assert not set(namespaces) & set(_netns.list_namespaces())
        assert not _alive(int(sleeper))


def test_live_runs_are_not_reaped_but_reused_pids_are() -> None:
    prefix = "tmlreap"
    live = f"{prefix}-1-{os.getpid()}-x"  # pid 1 is alive, no record: cannot prove it is stale
    reused = f"{prefix}-1-{os.getpid() + 1}-x"  # pid 1 alive, but recorded start time differs
    reused2 = f"{prefix}-1-{os.getpid() + 1}-y"  # the same run's second namespace
    mine = f"{prefix}-{os.getpid()}-{os.getpid() + 2}-x"  # this very process, recorded
    run_reused = f"1-{os.getpid() + 1}"
    run_mine = f"{os.getpid()}-{os.getpid() + 2}"
    _netns.REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    (_netns.REGISTRY_DIR / run_reused).write_text("not-a-start-time\n")
    (_netns.REGISTRY_DIR / run_mine).write_text(f"{_netns.process_start_time(os.getpid())}\n")
    try:
        for ns in (live, reused, reused2, mine):
            _netns.run_command(["ip", "netns", "add", ns])
        assert sorted(_netns.reap_stale(prefix)) == [reused, reused2]
        assert {live, mine} <= set(_netns.list_namespaces())
        assert not (_netns.REGISTRY_DIR / run_reused).exists()
    finally:
        for ns in (live, reused, reused2, mine):
            _netns.run_command(["ip", "netns", "delete", ns], check=False)
        (_netns.REGISTRY_DIR / run_mine).unlink(missing_ok=True)
        (_netns.REGISTRY_DIR / run_reused).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
