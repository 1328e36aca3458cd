"""Network monitoring: which netlink messages matter, the debounce (sans-IO, explicit time),
and the real netlink monitor in a lab namespace (an address change fires once, debounced)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from tunnelmesh.netmon import Debouncer, relevant
from tunnelmesh.testing.lab import Lab, wait_for_line

MESH = ["172.30.0.0/16"]


def test_address_changes_on_the_underlay_matter() -> None:
    assert relevant("RTM_NEWADDR", {"index": 2}, {"IFA_LOCAL": "100.64.0.9"})
    assert relevant("RTM_DELADDR", {"index": 2}, {"IFA_ADDRESS": "10.77.1.2"})
    assert relevant("RTM_NEWADDR", {"index": 2}, {"IFA_ADDRESS": "2001:db8::9"})


def test_the_tun_device_the_mesh_loopback_and_link_local_do_not() -> None:
    kw = {"ignore_indexes": [7], "ignore_networks": MESH}
    assert not relevant("RTM_NEWADDR", {"index": 7}, {"IFA_LOCAL": "100.64.0.9"}, **kw)
    assert not relevant("RTM_NEWADDR", {"index": 2}, {"IFA_LOCAL": "172.30.4.5"}, **kw)
    assert not relevant("RTM_NEWADDR", {"index": 1}, {"IFA_LOCAL": "127.0.0.1"}, **kw)
    assert not relevant("RTM_NEWADDR", {"index": 2}, {"IFA_ADDRESS": "fe80::1"}, **kw)


def test_routes_matter_except_local_table_tun_mesh_and_multicast() -> None:
    kw = {"ignore_indexes": [7], "ignore_networks": MESH}
    assert relevant("RTM_NEWROUTE", {"table": 254}, {"RTA_DST": "10.77.0.0", "RTA_OIF": 2}, **kw)
    assert relevant("RTM_DELROUTE", {"table": 254}, {"RTA_OIF": 2}, **kw)  # a default route
    assert not relevant("RTM_NEWROUTE", {"table": 255}, {"RTA_DST": "100.64.0.9"}, **kw)
    assert not relevant("RTM_NEWROUTE", {"table": 254}, {"RTA_OIF": 7}, **kw)
    assert not relevant("RTM_NEWROUTE", {"table": 254}, {"RTA_DST": "172.30.0.0"}, **kw)
    assert not relevant("RTM_NEWROUTE", {"table": 254}, {"RTA_DST": "ff00::"}, **kw)


def test_links_matter_when_they_change_and_other_messages_never() -> None:
    assert relevant("RTM_NEWLINK", {"index": 3, "change": 1}, {})
    assert relevant("RTM_DELLINK", {"index": 3}, {})
    assert not relevant("RTM_NEWLINK", {"index": 3, "change": 0}, {})
    assert not relevant("RTM_NEWLINK", {"index": 7, "change": 1}, {}, ignore_indexes=[7])
    assert not relevant("RTM_NEWNEIGH", {"index": 3}, {})


def test_debounce_waits_for_quiet_but_not_forever() -> None:
    d = Debouncer(quiet=0.5, max_delay=2.0)
    assert d.deadline() is None and not d.due(100.0)
    d.event(10.0)
    d.event(10.2)
    assert d.deadline() == pytest.approx(10.7)
    assert not d.due(10.6)
    assert d.due(10.7)
    assert not d.due(10.8)  # once per burst
    # a continuous stream of events still fires max_delay after the first
    for i in range(30):
        d.event(20.0 + i * 0.1)
    assert d.deadline() == pytest.approx(22.0)
    assert d.due(22.0)


MONITOR = """
import asyncio, sys
from tunnelmesh.netmon import NetworkMonitor
async def main():
    loop = asyncio.get_running_loop()
    m = NetworkMonitor(lambda: print("changed", flush=True), debounce=0.3, max_delay=1.0,
                       ignore_networks=["172.30.0.0/16"])
    await m.start()
    print("ready", flush=True)
    await asyncio.sleep(float(sys.argv[1]))
    print("fired", m.fired, flush=True)
    await m.aclose()
try:
    import uvloop  # the node runs on uvloop when it is installed: netlink must work there too
except ImportError:
    asyncio.run(main())
else:
    uvloop.run(main())
"""


@pytest.mark.lab
def test_an_address_change_fires_once_debounced(lab: Lab, tmp_path: Path) -> None:
    script = tmp_path / "monitor.py"
    script.write_text(MONITOR)
    host = lab.add_host("h")
    proc = host.popen(
        [sys.executable, str(script), "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for_line(proc, "ready", timeout=15)
    start = time.monotonic()
    # a burst: a new address, the old one removed (with its routes), the mesh's own address
    host.run(["ip", "addr", "add", "100.64.0.99/24", "dev", host.dev])
    host.run(["ip", "addr", "del", f"{host.address}/24", "dev", host.dev])
    host.run(["ip", "addr", "add", "172.30.9.9/16", "dev", "lo"])
    wait_for_line(proc, "changed", timeout=5)
    took = time.monotonic() - start
    assert took < 2.0
    out, _ = proc.communicate(timeout=15)
    assert "fired 1" in out, out


def test_closing_right_after_an_event_ends_the_monitor() -> None:
    """An event that arrives as the monitor is closed must not swallow the close.

    The exit client's stop removes its routes (netlink events) just before it closes the
    monitor; a ``wait_for`` on Python 3.11 returns the finished wait instead of raising the
    cancellation, and the monitor ran on, so the node's stop never ended.
    """
    import asyncio

    from tunnelmesh.netmon import NetworkMonitor

    async def main() -> bool:
        mon = NetworkMonitor(lambda: None, debounce=1.0, max_delay=2.0)

        async def no_netlink() -> None:
            await asyncio.Event().wait()

        mon._read = no_netlink  # type: ignore[method-assign]
        mon._ready.set()
        await mon.start()
        await asyncio.sleep(0)
        event = ("RTM_DELROUTE", {"table": 254, "index": 2}, {"RTA_DST": "100.64.0.3"})
        mon.feed(*event)  # a burst begins: the monitor now waits with a deadline
        await asyncio.sleep(0.01)
        mon.feed(*event)  # the next route goes away, and the node closes the monitor
        closing = asyncio.ensure_future(mon.aclose())
        done, _ = await asyncio.wait({closing}, timeout=3.0)
        if not done and mon._task is not None:
            mon._task.cancel()  # once more, so that this test itself ends
            await asyncio.wait({closing}, timeout=3.0)
        return bool(done)

    assert asyncio.run(main())
