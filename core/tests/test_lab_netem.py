"""The namespace lab's link impairment (``tc netem``, or its emulation without sch_netem)."""

from __future__ import annotations

import re

import pytest
from tunnelmesh.errors import LabError
from tunnelmesh.testing.lab import Host, ImpairmentUnsupported, Lab

pytestmark = pytest.mark.lab


def _received(src: Host, dst: Host, count: int) -> int:
    out = src.run(
        ["ping", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "1", dst.address],
        check=False,
        timeout=30,
    ).stdout
    m = re.search(r"(\d+) received", out)
    assert m, out
    return int(m[1])


def test_full_loss_blocks_and_clearing_restores(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    lab.netem(a, "loss 100%")
    assert _received(a, b, 3) == 0
    assert _received(b, a, 3) == 0  # the echo replies are what a sends
    lab.clear_netem(a)
    assert a.ping(b.address) and b.ping(a.address)


def test_partial_loss_drops_some_packets(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    lab.netem(a, "loss 50%")
    # 60 requests at 50% loss: all or none arriving has a chance of about 1e-18.
    assert 0 < _received(a, b, 60) < 60


def test_loss_only_affects_the_impaired_host(lab: Lab) -> None:
    a, b, c = (lab.add_host(n) for n in "abc")
    lab.netem(a, "loss 100%")
    assert b.ping(c.address)


def test_delay_is_applied_or_reported_unsupported(lab: Lab) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    try:
        lab.netem(a, "delay 200ms")
    except ImpairmentUnsupported as exc:
        assert "sch_netem" in str(exc)
        pytest.skip(str(exc))
    out = a.run(["ping", "-n", "-c", "1", "-W", "2", b.address]).stdout
    rtt = float(re.search(r"time=([\d.]+) ms", out)[1])  # type: ignore[index]
    assert rtt >= 200  # a lower bound set by the delay itself, not a speed check


def test_rate_limit_installs_a_shaper(lab: Lab) -> None:
    a = lab.add_host("a")
    lab.netem(a, "rate 1mbit")
    qdisc = a.run(["tc", "qdisc", "show", "dev", a.dev]).stdout
    assert ("netem" in qdisc or "tbf" in qdisc) and "1Mbit" in qdisc
    lab.clear_netem(a)
    assert "tbf" not in a.run(["tc", "qdisc", "show", "dev", a.dev]).stdout


def test_bad_netem_options_raise(lab: Lab) -> None:
    a = lab.add_host("a")
    with pytest.raises(LabError):
        lab.netem(a, "frobnicate 3")
