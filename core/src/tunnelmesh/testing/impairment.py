"""Link impairment for the lab: ``tc netem`` on a host's interface, and what the lab can emulate
where the kernel has no ``sch_netem`` (``loss N%`` as an nftables rule where the host's link
enters its switch, ``rate R`` with ``tbf``).

Use it through :meth:`Lab.netem <tunnelmesh.testing.lab.Lab.netem>` and
:meth:`Lab.clear_netem <tunnelmesh.testing.lab.Lab.clear_netem>`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tunnelmesh.errors import LabError
from tunnelmesh.testing import _netns

if TYPE_CHECKING:
    from tunnelmesh.testing.topology import Host

__all__ = ["ImpairmentUnsupported", "clear_netem", "netem"]


class ImpairmentUnsupported(LabError):
    """The requested ``tc netem`` option cannot be applied on this kernel."""


def netem(host: Host, spec: str, dev: str | None = None) -> None:
    """Impair what ``host`` sends on ``dev`` (default: its lab interface) with ``tc netem``.

    Args:
        spec: netem options, e.g. ``"loss 40%"``, ``"delay 50ms 10ms"``, ``"rate 1mbit"``.

    Raises:
        ImpairmentUnsupported: the kernel has no ``sch_netem`` and ``spec`` is not a plain
            ``loss N%`` or ``rate R`` that the lab can emulate otherwise.
    """
    dev = dev or host.dev
    clear_netem(host, dev)
    proc = host.run(["tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split()],
                    check=False)  # fmt: skip
    if proc.returncode == 0:
        return
    if "qdisc kind is unknown" not in proc.stderr:
        raise LabError(f"tc netem {spec!r} on {host.name}/{dev} failed: {proc.stderr.strip()}")
    _emulate_netem(host, dev, spec)


def clear_netem(host: Host, dev: str | None = None) -> None:
    """Remove the impairment set by :func:`netem` from ``host``'s ``dev``."""
    dev = dev or host.dev
    host.run(["tc", "qdisc", "del", "dev", dev, "root"], check=False)
    if dev in host.ports:
        switch, port = host.ports[dev]
        _netns.run_command(
            ["ip", "netns", "exec", switch.ns, "nft", "delete", "table", "netdev",
             f"tmlimpair_{port}"],
            check=False,
        )  # fmt: skip


def _emulate_netem(host: Host, dev: str, spec: str) -> None:
    """Apply ``loss N%`` / ``rate R`` without sch_netem (nftables on the switch port, tbf)."""
    loss = re.fullmatch(r"loss (?:random )?(\d+(?:\.\d+)?)%", spec.strip())
    rate = re.fullmatch(r"rate (\S+)", spec.strip())
    if loss:
        if dev not in host.ports:
            raise ImpairmentUnsupported(f"{host.name}/{dev} is not plugged into a lab switch")
        # Dropped where the link arrives at the switch (the port's ingress): like a lossy
        # wire, the sender sees no error (an egress drop inside the host would give
        # ENOBUFS to senders). Only IP packets are dropped, so ARP keeps the link usable.
        switch, port = host.ports[dev]
        per_million = min(round(float(loss[1]) * 10_000), 1_000_000)
        match = "" if per_million == 1_000_000 else f"numgen random mod 1000000 < {per_million} "
        rules = (
            f"table netdev tmlimpair_{port} {{\n"
            f'  chain ingress {{ type filter hook ingress device "{port}" priority 0;\n'
            f"    meta protocol {{ ip, ip6 }} {match}drop\n  }}\n}}\n"
        )
        _netns.run_command(["ip", "netns", "exec", switch.ns, "nft", "-f", "-"], input=rules)
    elif rate:
        host.run(["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate[1],
                  "burst", "32kbit", "latency", "400ms"])  # fmt: skip
    else:
        raise ImpairmentUnsupported(
            f"this kernel has no sch_netem (tc netem); the lab can only emulate 'loss N%' and "
            f"'rate R' without it, not {spec!r}"
        )
