"""Impairment of this node's mesh traffic to one peer, for chaos runs of ``tunnelmesh
benchmark``: packet loss with nftables, a bandwidth limit with tc's token bucket (tbf).

Both act on what this node sends into its TUN device (egress), nothing else:

* loss: a table of its own, ``inet tunnelmesh_bench``, whose output chain drops
  ``numgen random mod 10000 < PCT*100`` of the packets to the peer's mesh IP on the TUN device;
* bandwidth: ``tc qdisc replace dev <tun> root tbf rate RATE`` (the whole TUN device: tbf
  cannot select a peer without classes), removed again with ``tc qdisc del dev <tun> root``.

Delay is not offered: it needs the ``sch_netem`` qdisc, which this code does not use (a kernel
without it is common in containers; ``tc qdisc add ... netem delay`` is the tool for that).
:meth:`Impairment.restore` (and ``tunnelmesh cleanup`` after a crash) removes both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Sequence

from tunnelmesh.errors import TunnelmeshError

__all__ = ["NFT_TABLE", "Impairment", "ImpairmentError", "parse_rate"]

NFT_TABLE = "tunnelmesh_bench"
Runner = Callable[[Sequence[str], str | None], str]
_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


class ImpairmentError(TunnelmeshError):
    """The impairment cannot be applied (no permission, a qdisc of someone else, ...)."""


def parse_rate(text: str) -> int:
    """``20mbit``, ``500kbit``, ``1gbit`` (tc's units) -> bits per second.

    Raises:
        ValueError: not a rate.
    """
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)", text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a rate: {text!r} (examples: 20mbit, 500kbit, 1gbit)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _run(cmd: Sequence[str], stdin: str | None = None) -> str:
    from tunnelmesh.exit.system import ExitNodeError, run_command

    try:
        return run_command(cmd, stdin)
    except ExitNodeError as exc:
        raise ImpairmentError(str(exc)) from None


class Impairment:
    """Loss and/or a bandwidth limit on ``dev`` towards ``peer_ip``; a context manager."""

    def __init__(
        self,
        dev: str,
        peer_ip: str,
        *,
        loss_pct: float | None = None,
        bandwidth: str | None = None,
        run: Runner = _run,
    ) -> None:
        self.dev = dev
        self.peer = ipaddress.ip_address(peer_ip)
        if loss_pct is not None and not 0 <= loss_pct <= 100:
            raise ValueError("loss must be 0 to 100 %")
        self.loss_pct = loss_pct
        self.rate = parse_rate(bandwidth) if bandwidth else None
        self.run = run
        self._tc = False

    def ruleset(self) -> str:
        fam = "ip" if self.peer.version == 4 else "ip6"
        threshold = round((self.loss_pct or 0) * 100)
        return (
            f"table inet {NFT_TABLE} {{}}\n"
            f"delete table inet {NFT_TABLE}\n"
            f"table inet {NFT_TABLE} {{\n"
            "  chain output {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f'    oifname "{self.dev}" {fam} daddr {self.peer} numgen random mod 10000 < '
            f"{threshold} counter drop\n"
            "  }\n"
            "}\n"
        )

    def apply(self) -> None:
        """Raises: ImpairmentError (what was applied is removed again)."""
        try:
            if self.loss_pct:
                self.run(["nft", "-f", "-"], self.ruleset())
            if self.rate:
                current = self.run(["tc", "qdisc", "show", "dev", self.dev, "root"], None)
                if any(q in current for q in ("tbf", "htb", "netem", "hfsc", "cake")):
                    raise ImpairmentError(
                        f"{self.dev} already has a shaping qdisc ({current.strip()}); not replaced"
                    )
                burst = max(16_000, self.rate // 8 // 100)  # 10 ms at the rate, at least 16 kB
                self.run(
                    [
                        "tc",
                        "qdisc",
                        "replace",
                        "dev",
                        self.dev,
                        "root",
                        "tbf",
                        "rate",
                        str(self.rate),
                        "burst",
                        str(burst),
                        "latency",
                        "200ms",
                    ],
                    None,
                )
                self._tc = True
        except ImpairmentError:
            self.restore()
            raise

    def restore(self) -> None:
        """Remove the table and the qdisc. Idempotent."""
        if self.loss_pct:
            self.run(
                ["nft", "-f", "-"], f"table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
            )
        if self._tc:
            self._tc = False
            # the device may be gone (the node stopped): so is its qdisc then
            with contextlib.suppress(ImpairmentError):
                self.run(["tc", "qdisc", "del", "dev", self.dev, "root"], None)

    def describe(self) -> dict[str, object]:
        return {"loss_pct": self.loss_pct or 0.0, "bandwidth_bps": self.rate}

    def __enter__(self) -> Impairment:
        self.apply()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
