"""The lab's topology: hosts (network namespaces), switches (a bridge in a namespace of its own),
NAT routers and the internet host, and :func:`wait_for_line` for processes started in them.

:class:`~tunnelmesh.testing.lab.Lab` builds and tears these down (``lab.add_host``,
``lab.add_switch``, ``lab.add_nat``, ``lab.add_internet``); import them from
:mod:`tunnelmesh.testing.lab`, which re-exports every public name.
"""

from __future__ import annotations

import ipaddress
import os
import select
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from tunnelmesh.errors import LabError
from tunnelmesh.testing import _netns

if TYPE_CHECKING:
    from tunnelmesh.testing.lab import Lab

__all__ = [
    "INSIDE_CIDR_FORMAT",
    "INTERNET_PAGE",
    "SWITCH_CIDR_FORMAT",
    "WAN_CIDR",
    "WEB_SERVER",
    "Host",
    "Internet",
    "Nat",
    "NatKind",
    "Switch",
    "nat_ruleset",
    "wait_for_line",
]

WAN_CIDR = "100.64.0.0/24"
"""The default switch's network (shared address space, never routed on the real internet)."""
INSIDE_CIDR_FORMAT = "10.77.{}.0/24"
"""Inside networks of NATs, numbered from 1 (the mesh's own default, 10.42.0.0/16, stays free)."""
SWITCH_CIDR_FORMAT = "10.78.{}.0/24"
"""Networks of extra switches added without a CIDR."""
INTERNET_PAGE = "tunnelmesh lab internet: hello\n"
"""The body the internet host serves on every path."""

NatKind = Literal["full-cone", "symmetric"]
_pending: weakref.WeakKeyDictionary[subprocess.Popen[str], bytearray] = weakref.WeakKeyDictionary()


class Switch:
    """A Linux bridge (``br0``) in a namespace of its own; hosts plug in with veth pairs."""

    def __init__(self, lab: Lab, name: str, ns: str, cidr: ipaddress.IPv4Network) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.cidr = cidr
        self.bridge = "br0"
        self.routes: list[tuple[ipaddress.IPv4Network, str]] = []
        """Routes ``(cidr, via)`` every host plugged into this switch gets (set by NATs)."""
        self._used: set[ipaddress.IPv4Address] = {next(cidr.hosts())}  # .1 stays for a router
        self._ports = 0

    def __repr__(self) -> str:
        return f"<Switch {self.name} {self.cidr} ns={self.ns}>"

    def allocate(self, address: str | None = None) -> str:
        """Reserve ``address`` (or the next free one) on this switch and return it."""
        if address is not None:
            addr = ipaddress.IPv4Address(address)
            if addr not in self.cidr or addr in (
                self.cidr.network_address,
                self.cidr.broadcast_address,
            ):
                raise LabError(
                    f"{address} is not a host address of switch {self.name} ({self.cidr})"
                )
            if addr in self._used and addr != next(self.cidr.hosts()):
                raise LabError(f"{address} is already used on switch {self.name}")
            self._used.add(addr)
            return str(addr)
        for addr in self.cidr.hosts():
            if addr not in self._used:
                self._used.add(addr)
                return str(addr)
        raise LabError(f"switch {self.name} ({self.cidr}) has no free address")

    def _next_port(self) -> str:
        self._ports += 1
        return f"p{self._ports}"


class Host:
    """A network namespace plugged into a switch. Run commands and processes inside it."""

    def __init__(self, lab: Lab, name: str, ns: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.address: str = ""
        """The host's address on its (first) switch."""
        self.dev: str = "eth0"
        """The host's interface on its (first) switch."""
        self.switch: Switch | None = None
        self.addresses: dict[str, str] = {}
        """Address per interface, e.g. ``{"eth0": "100.64.0.2"}``."""
        self.ports: dict[str, tuple[Switch, str]] = {}
        """The switch and switch port at the other end of each interface."""
        self._devs = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.address} ns={self.ns}>"

    @property
    def exec_prefix(self) -> list[str]:
        """The command prefix that runs a program inside this host: ``ip netns exec <ns>``."""
        return ["ip", "netns", "exec", self.ns]

    def _command(self, cmd: Sequence[str] | str) -> list[str]:
        if isinstance(cmd, str):
            return [*self.exec_prefix, "sh", "-c", cmd]
        return [*self.exec_prefix, *cmd]

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        check: bool = True,
        timeout: float | None = 30,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (an argument list, or a string for ``sh -c``) inside the host.

        Returns:
            The completed process with text ``stdout`` and ``stderr``.

        Raises:
            LabError: it failed (with ``check``) or timed out; the message holds its stderr.
        """
        self.lab._check_open()
        return _netns.run_command(
            self._command(cmd), check=check, timeout=timeout, env=env, input=input
        )

    def popen(self, cmd: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``cmd`` inside the host in a new session; the lab kills it at teardown.

        Keyword arguments go to :class:`subprocess.Popen` (``text=True`` is the default; pass
        ``stdout=subprocess.PIPE`` to read its output, e.g. with :func:`wait_for_line`).
        """
        self.lab._check_open()
        kwargs.setdefault("text", True)
        kwargs["start_new_session"] = True
        try:
            proc: subprocess.Popen[str] = subprocess.Popen(self._command(cmd), **kwargs)
        except OSError as exc:
            raise LabError(f"cannot start {cmd!r} in {self.name}: {exc}") from exc
        self.lab._procs.append(proc)
        return proc

    def python(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        """Start the current Python interpreter inside the host: ``host.python("-c", code)``.

        ``PYTHONUNBUFFERED=1`` is set so readiness lines arrive at once.
        """
        env = dict(kwargs.pop("env", None) or os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return self.popen([sys.executable, *args], env=env, **kwargs)

    def wait_listening(self, address: str, port: int, timeout: float = 10.0) -> None:
        """Wait until a TCP socket in this host listens on ``address``:``port`` (``ss -ltn``).

        A server started with :meth:`popen` is not listening yet when ``popen`` returns; a
        client started at once can be refused, above all on a loaded machine.

        Raises:
            LabError: nothing listens there within ``timeout`` seconds.
        """
        want = f"{address}:{port}"
        deadline = time.monotonic() + timeout
        while True:
            listening = self.run(["ss", "-ltnH"], check=False).stdout.split()
            if want in listening:
                return
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: nothing listens on {want} after {timeout} s")
            time.sleep(0.05)

    def ping(self, address: str, count: int = 1, timeout: float = 1.0) -> bool:
        """Whether ``address`` answers ``count`` pings (ICMP echo), each waited for ``timeout``."""
        wait = max(1, round(timeout))
        proc = self.run(
            ["ping", "-n", "-q", "-c", str(count), "-i", "0.1", "-W", str(wait), address],
            check=False,
            timeout=count * (wait + 0.2) + 5,
        )
        return proc.returncode == 0

    def route_get(self, address: str) -> str | None:
        """The route this host would use to reach ``address`` (``ip route get``), or None."""
        proc = self.run(["ip", "route", "get", address], check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def _next_dev(self) -> str:
        dev = f"eth{self._devs}"
        self._devs += 1
        return dev


class Nat(Host):
    """A NAT router: ``outside`` leg on a switch, ``inside`` switch for the hosts behind it."""

    def __init__(self, lab: Lab, name: str, ns: str, kind: NatKind) -> None:
        super().__init__(lab, name, ns)
        self.kind: NatKind = kind
        self.outside: Switch
        self.inside: Switch
        self.outside_address = ""
        self.inside_address = ""
        self.inside_dev = ""

    def ruleset(self) -> str:
        """The NAT's current nftables ruleset (``nft list ruleset`` inside it)."""
        return self.run(["nft", "list", "ruleset"]).stdout


class Internet(Host):
    """The "internet" host: on the wan, serving :data:`INTERNET_PAGE` over HTTP on port 80."""

    url: str = ""
    """``http://<address>/``."""


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 10.0) -> str:
    """Read ``proc.stdout`` (a pipe) until a line contains ``text``; return that line.

    Lines before it are consumed. It reads the pipe's file descriptor directly (so ``select``
    sees every byte) and keeps a partial line for the next call: once you use it on a process,
    read that process's output only through it. A process that keeps writing to a pipe nobody
    reads stops when the pipe fills (64 KiB): let chatty processes log to a file instead.

    Raises:
        LabError: the process closed its output or ``timeout`` passed first (the message shows
            the last lines read).
    """
    if proc.stdout is None:
        raise LabError("wait_for_line needs a process started with stdout=subprocess.PIPE")
    fd = proc.stdout.fileno()
    buf = _pending.setdefault(proc, bytearray())
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in buf:
            raw, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            line = raw.decode(errors="replace")
            if text in line:
                return line + "\n"
            seen.append(line)
        left = deadline - time.monotonic()
        if left <= 0:
            raise LabError(f"no line with {text!r} after {timeout}s; last lines {seen[-5:]!r}")
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise LabError(
                f"output closed (exit code {proc.poll()}) before a line with {text!r}; "
                f"last lines {seen[-5:]!r}"
            )
        buf += chunk


def nat_ruleset(nat: Nat, out_dev: str, in_dev: str) -> str:
    """The nftables ruleset of ``nat`` (loaded inside the NAT namespace only)."""
    filt = (
        "  chain filter_forward { type filter hook forward priority filter; policy drop;\n"
        "@FULLCONE@"
        "    ct state established,related accept\n"
        f'    iifname "{in_dev}" oifname "{out_dev}" accept\n'
        "@INBOUND@"
        "  }\n"
    )
    if nat.kind == "symmetric":
        body = filt.replace("@FULLCONE@", "").replace("@INBOUND@", "") + (
            "  chain nat_postrouting { type nat hook postrouting priority srcnat;\n"
            f'    oifname "{out_dev}" masquerade random\n  }}\n'
        )
    else:
        # Endpoint-independent mapping: SNAT keeps the source port when it is free, so the
        # mapping is the same for every destination. Endpoint-independent filtering: outbound
        # packets record port -> inside address in a dynamic map, and any inbound packet to
        # a recorded port is DNATed back to that inside host.
        maps = "".join(
            f"  map fc_{proto} {{ type inet_service : ipv4_addr; flags dynamic,timeout; "
            "timeout 300s; }\n"
            for proto in ("udp", "tcp")
        )
        record = "".join(
            f'    iifname "{in_dev}" oifname "{out_dev}" meta l4proto {proto} '
            f"update @fc_{proto} {{ {proto} sport : ip saddr }}\n"
            for proto in ("udp", "tcp")
        )
        body = (
            maps
            + filt.replace("@FULLCONE@", record).replace("@INBOUND@", "    ct status dnat accept\n")
            + "  chain nat_prerouting { type nat hook prerouting priority dstnat;\n"
            f'    iifname "{out_dev}" dnat ip to udp dport map @fc_udp\n'
            f'    iifname "{out_dev}" dnat ip to tcp dport map @fc_tcp\n  }}\n'
            "  chain nat_postrouting { type nat hook postrouting priority srcnat;\n"
            f'    oifname "{out_dev}" snat ip to {nat.outside_address}\n  }}\n'
        )
    return f"table ip tmlnat {{\n{body}}}\n"


WEB_SERVER = r"""
import http.server, sys
PAGE = sys.argv[3].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
srv.serve_forever()
"""
"""The internet host's web server: ``python -c WEB_SERVER ADDRESS PORT PAGE``."""
