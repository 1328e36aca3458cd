"""The namespace lab: throw-away networks of Linux network namespaces for end-to-end tests.

A :class:`Lab` builds *hosts* (network namespaces) joined through *switches* (a Linux bridge
inside a namespace of its own), *NAT routers* (nftables inside their own namespace), an
*internet* host serving a web page, and link impairment. Tests run commands and Python
processes inside the hosts. It needs root, ``/dev/net/tun`` and iproute2; NATs need nftables
(Debian packages ``iproute2 nftables iputils-ping``).

Use the ``lab`` fixture of the tunnelmesh pytest plugin (loaded automatically wherever
tunnelmesh is installed) and mark the test ``@pytest.mark.lab`` so it is skipped, with the
reason, where the lab cannot run::

    import pytest

    @pytest.mark.lab
    def test_ping_across_nat(lab):
        nat = lab.add_nat("nat", kind="symmetric")
        a = lab.add_host("a", switch=nat.inside)     # 10.77.1.2 behind the NAT
        b = lab.add_host("b")                        # 100.64.0.3 on the "wan" switch
        assert a.ping(b.address)
        server = b.python("-m", "http.server", "--bind", b.address, "8000")
        ...

Outside pytest, use :class:`Lab` as a context manager: ``with Lab() as lab: ...``.

Topology
    ``lab.wan`` is the default switch (``100.64.0.0/24``), created on first use.
    ``lab.add_switch(name, cidr)`` adds another one. ``lab.add_host(name, switch=...)`` plugs a
    new namespace into a switch with a veth pair; its address comes from the switch's CIDR
    (``.1`` stays free for a router), or pass ``address=``. Inside each host the lab interface
    is ``eth0`` (``host.dev``), further legs are ``eth1``...

Addresses and routes (safety)
    Namespaces get **no default route** and no link to the machine's own network: veth pairs
    are created directly inside lab namespaces, nothing is added to the root namespace, and
    forwarding is only switched on inside NAT namespaces. A host behind a NAT gets routes for
    the CIDRs the NAT can reach (the wan, and what lies beyond it) via the NAT's inside address,
    nothing else. :meth:`Lab.check_isolation` proves that no lab namespace has a route to the
    machine's own addresses or to public addresses such as 1.1.1.1 (by route lookup only;
    nothing is sent).

NATs
    ``lab.add_nat(name, kind)`` makes a router namespace with its outside leg on a switch (the
    wan by default) and a new inside switch ``nat.inside`` (``10.77.<n>.0/24``; the NAT is
    ``.1``). ``kind="symmetric"`` uses ``masquerade random``: every new destination gets a new
    random outside port (endpoint-dependent mapping), unsolicited inbound packets are dropped.
    ``kind="full-cone"`` maps an inside UDP/TCP port to the same outside port for every
    destination (endpoint-independent mapping) and forwards *any* outside packet to that port
    back to the inside host (endpoint-independent filtering), through a dynamic nftables map
    filled by outbound packets. (Port preservation can fail when two inside hosts use the same
    source port at once; tests use ephemeral ports, so this does not happen in practice.)
    Neither kind hairpins: inside hosts reach each other by their inside addresses.

Processes
    ``host.run(cmd)`` runs a command and returns the completed process (raises
    :class:`~tunnelmesh.errors.LabError` with stderr when it fails). ``host.popen(cmd)`` and
    ``host.python(*args)`` start background processes (``python`` runs the current interpreter,
    so the test's virtual environment is there) in a new session; :meth:`Lab.close` kills each
    one's process group, then every process left inside a lab namespace, all by PID.
    :func:`wait_for_line` waits, bounded, for a readiness line on a process's stdout.
    ``python -m tunnelmesh.testing.natprobe`` has small UDP tools to observe NAT mappings.

Impairment
    ``lab.netem(host, "loss 40%")`` impairs what ``host`` sends on its lab interface with
    ``tc netem``; ``lab.clear_netem(host)`` removes it. Kernels built without ``sch_netem``
    still get ``loss N%`` (an nftables rule dropping that share of the host's IP packets where
    its link enters the switch, so senders see a lossy wire and no error) and ``rate R``
    (``tbf``); other options raise :class:`ImpairmentUnsupported` so a test can skip.

Cleanup
    :meth:`Lab.close` (also on test failure, via the fixture or the ``with`` block) kills the
    processes and deletes every namespace of the run. Namespaces are named
    ``tml-<pid>-<seq>-<node>``; each lab records its creating process under
    ``/run/tunnelmesh-lab/``, and every new lab first reaps namespaces whose creator has died
    (a crashed or killed test run), see :func:`tunnelmesh.testing._netns.reap_stale`.

Where the code lives: :mod:`tunnelmesh.testing.topology` (hosts, switches, NATs, the internet
host, :func:`wait_for_line`), :mod:`tunnelmesh.testing.impairment` (netem and its emulation),
this module (:class:`Lab`: building, isolation checks, cleanup). Import every name from here.

More in ``docs/lab.md``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from tunnelmesh.errors import LabError
from tunnelmesh.testing import _netns, impairment
from tunnelmesh.testing.impairment import ImpairmentUnsupported
from tunnelmesh.testing.topology import (
    INSIDE_CIDR_FORMAT,
    INTERNET_PAGE,
    SWITCH_CIDR_FORMAT,
    WAN_CIDR,
    WEB_SERVER,
    Host,
    Internet,
    Nat,
    NatKind,
    Switch,
    nat_ruleset,
    wait_for_line,
)

__all__ = [
    "INTERNET_PAGE",
    "WAN_CIDR",
    "Host",
    "ImpairmentUnsupported",
    "Internet",
    "Lab",
    "LabError",
    "Nat",
    "Switch",
    "wait_for_line",
]

NETNS_ETC = Path("/etc/netns")
"""``ip netns exec NS`` bind-mounts each file of ``/etc/netns/NS/`` over the one in ``/etc``."""
LAB_RESOLV_CONF = "# a tunnelmesh lab namespace's own resolver config\nnameserver 127.0.0.1\n"
"""The ``resolv.conf`` each lab namespace gets (its own, not the machine's)."""
PUBLIC_PROBES = ("1.1.1.1", "8.8.8.8", "9.9.9.9", "2606:4700:4700::1111", "2001:4860:4860::8888")
"""Public addresses no lab namespace may have a route to."""

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


class Lab:
    """A set of network namespaces built for one test; :meth:`close` removes all of it.

    Args:
        prefix: first part of every namespace name (``<prefix>-<pid>-<seq>-<node>``).
        reap: remove namespaces left by dead lab runs before building anything.

    Raises:
        LabError: the lab cannot run here (no root, no ``ip``, ...).
    """

    def __init__(self, *, prefix: str = _netns.DEFAULT_PREFIX, reap: bool = True) -> None:
        from tunnelmesh.testing import lab_unavailable_reason

        reason = lab_unavailable_reason()
        if reason is not None:
            raise LabError(reason)
        self.prefix = prefix
        self.run_id = _netns.new_run_id()
        self.switches: dict[str, Switch] = {}
        self.hosts: dict[str, Host] = {}
        """Every namespace with an address: hosts, NATs and the internet host, by name."""
        self.nats: dict[str, Nat] = {}
        self.reaped: list[str] = []
        """Stale namespaces this lab removed when it started."""
        self._procs: list[subprocess.Popen[str]] = []
        self._namespaces: list[str] = []
        self._internet: Internet | None = None
        self._closed = False
        self._registry = _netns.register_run(self.run_id)
        if reap:
            self.reaped = _netns.reap_stale(prefix)
        _open_labs.add(self)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lab {self.prefix}-{self.run_id} {len(self._namespaces)} namespaces>"

    @property
    def namespaces(self) -> list[str]:
        """Names of the namespaces this lab created and has not removed yet."""
        return list(self._namespaces)

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"{self!r} is closed")

    def close(self) -> None:
        """Kill the lab's processes (by PID, whole process group) and delete its namespaces.

        Safe to call twice.

        Raises:
            LabError: a namespace could not be deleted.
        """
        if self._closed:
            return
        self._closed = True
        _open_labs.discard(self)
        problems: list[str] = []
        try:
            _terminate_all(self._procs)
        except Exception as exc:  # keep tearing down; report at the end
            problems.append(f"stopping processes: {exc!r}")
        for ns in reversed(self._namespaces):
            try:
                _netns.remove_namespace(ns)
            except Exception as exc:
                problems.append(f"removing {ns}: {exc!r}")
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only when empty: nothing else uses it then
        left = set(self._namespaces) & set(_netns.list_namespaces())
        self._namespaces = sorted(left)
        if left:
            problems.append(f"namespaces still present: {sorted(left)}")
        else:
            self._registry.unlink(missing_ok=True)
        if problems:
            raise LabError("lab teardown failed: " + "; ".join(problems))

    # -- building --------------------------------------------------------------------------

    def _new_namespace(self, name: str) -> str:
        self._check_open()
        if not _NAME_RE.match(name):
            raise LabError(f"lab node name {name!r} must match {_NAME_RE.pattern}")
        if name in self.hosts or name in self.switches:
            raise LabError(f"the lab already has a node named {name!r}")
        ns = f"{self.prefix}-{self.run_id}-{name}"
        _netns.run_command(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        _netns.run_command(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Its own /etc/resolv.conf (`ip netns exec` mounts this file over it): a program in the
        # lab that points the system resolver somewhere (a node's dns.system) changes this
        # file, never the machine's.
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(LAB_RESOLV_CONF)
        return ns

    def add_switch(self, name: str, cidr: str | None = None) -> Switch:
        """Add a switch (a bridge in its own namespace) for the IPv4 network ``cidr``.

        Without ``cidr`` the first free ``10.78.<n>.0/24`` is used.
        """
        if cidr is None:
            cidr = self._free_cidr(SWITCH_CIDR_FORMAT)
        net = ipaddress.IPv4Network(cidr)
        for other in self.switches.values():
            if other.cidr.overlaps(net):
                raise LabError(f"{cidr} overlaps switch {other.name} ({other.cidr})")
        ns = self._new_namespace(name)
        switch = Switch(self, name, ns, net)
        _netns.run_command(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        _netns.run_command(["ip", "-n", ns, "link", "set", "br0", "up"])
        self.switches[name] = switch
        return switch

    def _free_cidr(self, fmt: str) -> str:
        """The first ``fmt.format(n)`` (n = 1, 2, ...) that no switch overlaps."""
        for n in range(1, 255):
            net = ipaddress.IPv4Network(fmt.format(n))
            if not any(sw.cidr.overlaps(net) for sw in self.switches.values()):
                return str(net)
        raise LabError(f"no free network left for {fmt}")

    @property
    def wan(self) -> Switch:
        """The default switch ``wan`` (:data:`WAN_CIDR`), created on first use."""
        if "wan" not in self.switches:
            self.add_switch("wan", WAN_CIDR)
        return self.switches["wan"]

    def connect(self, host: Host, switch: Switch, address: str | None = None) -> str:
        """Plug ``host`` into one more switch (a multi-homed host); return the new device.

        The host gets the switch's routes too (a host can route through one NAT only).
        """
        self._check_open()
        return self._plug(host, switch, address)

    def _plug(self, host: Host, switch: Switch, address: str | None) -> str:
        """Connect ``host`` to ``switch`` with a new veth pair; return the host's device."""
        addr = switch.allocate(address)
        dev = host._next_dev()
        port = switch._next_port()
        # Both ends are created directly inside lab namespaces: nothing touches the root one.
        _netns.run_command(
            ["ip", "link", "add", dev, "netns", host.ns, "type", "veth",
             "peer", "name", port, "netns", switch.ns]
        )  # fmt: skip
        _netns.run_command(["ip", "-n", switch.ns, "link", "set", port, "master", "br0", "up"])
        _netns.run_command(
            ["ip", "-n", host.ns, "addr", "add", f"{addr}/{switch.cidr.prefixlen}", "dev", dev]
        )
        _netns.run_command(["ip", "-n", host.ns, "link", "set", dev, "up"])
        host.addresses[dev] = addr
        host.ports[dev] = (switch, port)
        if host.switch is None:
            host.switch, host.address, host.dev = switch, addr, dev
        for net, via in switch.routes:
            _netns.run_command(["ip", "-n", host.ns, "route", "add", str(net), "via", via])
        return dev

    def add_host(
        self, name: str, *, switch: Switch | None = None, address: str | None = None
    ) -> Host:
        """Add a host namespace plugged into ``switch`` (default: the wan).

        Args:
            name: short node name (lowercase letters and digits, at most 16).
            switch: the switch to plug into; a NAT's ``nat.inside`` puts the host behind it.
            address: the host's IPv4 address; default: the next free one of the switch.
        """
        sw = switch if switch is not None else self.wan
        host = Host(self, name, self._new_namespace(name))
        self.hosts[name] = host
        self._plug(host, sw, address)
        return host

    def add_nat(
        self,
        name: str,
        kind: NatKind = "full-cone",
        *,
        outside: Switch | None = None,
        inside_cidr: str | None = None,
    ) -> Nat:
        """Add a NAT router between ``outside`` (default: the wan) and a new inside switch.

        The inside switch is ``nat.inside``, named ``<name>in``, for ``inside_cidr`` (default
        ``10.77.<n>.0/24``, the first free n); the NAT is its ``.1`` and hosts plugged in route the outside's
        reachable networks through it.

        Raises:
            LabError: unknown ``kind``, or nftables is missing.
        """
        if kind not in ("full-cone", "symmetric"):
            raise LabError(f"unknown NAT kind {kind!r}: use 'full-cone' or 'symmetric'")
        out_sw = outside if outside is not None else self.wan
        if inside_cidr is None:
            inside_cidr = self._free_cidr(INSIDE_CIDR_FORMAT)
        nat = Nat(self, name, self._new_namespace(name), kind)
        self.hosts[name] = nat
        self.nats[name] = nat
        out_dev = self._plug(nat, out_sw, None)
        inside = self.add_switch(f"{name}in", inside_cidr)
        in_addr = str(next(inside.cidr.hosts()))
        in_dev = self._plug(nat, inside, in_addr)
        nat.outside, nat.inside = out_sw, inside
        nat.outside_address, nat.inside_address, nat.inside_dev = nat.address, in_addr, in_dev
        inside.routes = [(out_sw.cidr, in_addr)] + [(net, in_addr) for net, _ in out_sw.routes]
        nat.run("echo 1 > /proc/sys/net/ipv4/ip_forward")  # this namespace only
        try:
            nat.run(["nft", "-f", "-"], input=nat_ruleset(nat, out_dev, in_dev))
        except LabError as exc:
            if "nft" in str(exc) and "could not start" in str(exc):
                raise LabError("NATs need nftables (apt-get install nftables)") from exc
            raise
        return nat

    def add_internet(self, *, switch: Switch | None = None) -> Internet:
        """Add the ``internet`` host on ``switch`` (default: the wan) with a web server.

        It serves :data:`INTERNET_PAGE` with status 200 on every path at ``lab.internet.url``.
        """
        if self._internet is not None:
            raise LabError("the lab already has an internet host")
        sw = switch if switch is not None else self.wan
        host = Internet(self, "internet", self._new_namespace("internet"))
        self.hosts["internet"] = host
        self._plug(host, sw, None)
        host.url = f"http://{host.address}/"
        proc = host.python(
            "-c", WEB_SERVER, host.address, "80", INTERNET_PAGE, stdout=subprocess.PIPE
        )
        wait_for_line(proc, "ready", timeout=15)
        self._internet = host
        return host

    @property
    def internet(self) -> Internet:
        """The internet host (created by :meth:`add_internet` on first use)."""
        return self._internet if self._internet is not None else self.add_internet()

    # -- impairment ------------------------------------------------------------------------

    def netem(self, host: Host, spec: str, dev: str | None = None) -> None:
        """Impair what ``host`` sends on ``dev`` (default: its lab interface) with ``tc netem``.

        See :func:`tunnelmesh.testing.impairment.netem` (``spec`` e.g. ``"loss 40%"``,
        ``"delay 50ms 10ms"``; raises :class:`ImpairmentUnsupported` for what this kernel can
        neither apply nor emulate).
        """
        impairment.netem(host, spec, dev)

    def clear_netem(self, host: Host, dev: str | None = None) -> None:
        """Remove the impairment set by :meth:`netem` from ``host``'s ``dev``."""
        impairment.clear_netem(host, dev)

    # -- safety ----------------------------------------------------------------------------

    def escapes(self, targets: Sequence[str] | None = None) -> list[str]:
        """Routes from lab namespaces to the machine's network or the internet (should be none).

        Checks, without sending a packet, that no lab namespace has a route to ``targets``
        (default: every global address of the root namespace and :data:`PUBLIC_PROBES`), and
        that no interface of the root namespace is linked to a lab namespace.

        Returns:
            One line per problem found; empty when the lab is isolated.
        """
        self._check_open()
        probes = list(targets) if targets is not None else [*host_addresses(), *PUBLIC_PROBES]
        problems: list[str] = []
        for ns in self._namespaces:
            for target in probes:
                family = "-6" if ":" in target else "-4"
                proc = _netns.run_command(
                    ["ip", "-n", ns, family, "route", "get", target], check=False
                )
                if proc.returncode == 0:
                    problems.append(f"{ns} has a route to {target}: {proc.stdout.strip()}")
        ids = _namespace_ids()
        ours = {ids[ns] for ns in self._namespaces if ns in ids}
        links = json.loads(_netns.run_command(["ip", "-j", "link", "show"]).stdout or "[]")
        for link in links:
            if link.get("link_netnsid") in ours:
                problems.append(f"root namespace interface {link['ifname']} leads into the lab")
        return problems

    def check_isolation(self, targets: Sequence[str] | None = None) -> None:
        """Raise :class:`LabError` listing every :meth:`escapes` problem, if any."""
        problems = self.escapes(targets)
        if problems:
            raise LabError("lab is not isolated:\n" + "\n".join(problems))


def host_addresses() -> list[str]:
    """Global (not loopback, not link-local) addresses of the root namespace's interfaces."""
    data = json.loads(_netns.run_command(["ip", "-j", "addr", "show"]).stdout or "[]")
    found: list[str] = []
    for link in data:
        for info in link.get("addr_info", []):
            addr = ipaddress.ip_address(info["local"])
            if not (addr.is_loopback or addr.is_link_local):
                found.append(str(addr))
    return found


def _namespace_ids() -> dict[str, int]:
    """Namespace name -> netns id as seen from the root namespace (only those with an id)."""
    out = _netns.run_command(["ip", "netns", "list"]).stdout
    ids: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"^(\S+) \(id: (\d+)\)", line)
        if m:
            ids[m[1]] = int(m[2])
    return ids


def _terminate_all(procs: Sequence[subprocess.Popen[str]], grace: float = 2.0) -> None:
    """Stop each process's group: TERM to all, wait up to ``grace`` in total, then KILL."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The group of a leader that had already exited is not signalled (its id may be reused);
    # whatever it left behind is killed with the other processes inside lab namespaces.
    for proc in procs:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _close_open_labs() -> None:
    for lab in list(_open_labs):
        with contextlib.suppress(Exception):
            lab.close()


def _install_atexit() -> None:
    import atexit

    atexit.register(_close_open_labs)


_install_atexit()
