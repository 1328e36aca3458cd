"""Exit nodes on Linux: the client's split default routes and the exit's masquerade, undone on exit.

Client (``exit_node: <peer>``), :class:`ExitRoutes`:

* a bypass route for each underlay address that must not go into the tunnel (the exit peer's
  and the other peers' endpoints, the coordinator): ``<addr>/32`` via the route it had
  before, so tunnel traffic never loops into the tunnel (the original installed none). An
  address with no route outside the tunnel is skipped (there is nothing to keep);
* ``0.0.0.0/1`` and ``128.0.0.0/1`` into the TUN device: they beat the default route without
  replacing it. The forwarder sends what arrives there to the exit peer (its routing-table
  entry includes ``0.0.0.0/0``).

Every route is added with the routing protocol number :data:`ROUTE_PROTO`, so
``ip route flush proto 211`` removes exactly ours: that is how :meth:`ExitRoutes.restore`
undoes them, and how :meth:`ExitRoutes.recover` cleans up after a crash. IPv6 is not routed
to the exit (as in the original).

Exit (``allow_exit_traffic: true``), :class:`ExitGateway`:

* ``net.ipv4.ip_forward = 1`` (the previous value is kept in a state file);
* an nftables table of its own, ``ip tunnelmesh_exit``, that masquerades packets from the mesh
  CIDR to anything outside it. Removing the table removes everything we added.

:meth:`ExitGateway.restore` deletes the table and puts ``ip_forward`` back;
:meth:`ExitGateway.recover` does the same from the state file a crashed daemon left. Both
classes are idempotent, take a command runner and paths as parameters, and are meant to be
used as context managers (``with ExitGateway(...): ...``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tunnelmesh.errors import TunnelmeshError

__all__ = ["NFT_TABLE", "ROUTE_PROTO", "ExitGateway", "ExitNodeError", "ExitRoutes"]

log = logging.getLogger(__name__)

ROUTE_PROTO = 211
"""The routing protocol number marking the routes tunnelmesh adds (``ip route ... proto 211``)."""
NFT_TABLE = "tunnelmesh_exit"
SPLIT_ROUTES = ("0.0.0.0/1", "128.0.0.0/1")

Runner = Callable[[Sequence[str], str | None], str]


class ExitNodeError(TunnelmeshError):
    """Routes or NAT for an exit node could not be set up."""


def run_command(cmd: Sequence[str], stdin: str | None = None) -> str:
    """Run a command; return its stdout. Raises :class:`ExitNodeError` when it fails."""
    try:
        done = subprocess.run(
            list(cmd), input=stdin, capture_output=True, text=True, timeout=30, check=True
        )
    except subprocess.CalledProcessError as exc:
        raise ExitNodeError(f"{' '.join(cmd)}: {exc.stderr.strip() or exc}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExitNodeError(f"{' '.join(cmd)}: {exc}") from None
    return done.stdout


class ExitRoutes:
    """The client's routes into the exit; see the module docstring.

    Args:
        tun: the TUN device.
        bypass: underlay addresses that keep their current route.
        run: command runner ``(argv, stdin) -> stdout``.
    """

    def __init__(self, tun: str, *, bypass: Iterable[str] = (), run: Runner = run_command) -> None:
        self.tun = tun
        self.run = run
        self.bypass: dict[str, list[str]] = {}
        self._wanted = [str(ipaddress.IPv4Address(a)) for a in bypass]
        self.applied = False

    def _route_to(self, address: str) -> list[str]:
        """``via GW dev DEV`` (or ``dev DEV``) of the route ``address`` takes outside the tunnel."""
        out = self.run(["ip", "-j", "route", "get", address], None)
        route = (json.loads(out) or [{}])[0]
        if route.get("type") == "local":
            raise ExitNodeError(f"{address} is an address of this host")
        if route.get("dev") == self.tun or route.get("type") in ("unreachable", "prohibit"):
            # Already into the tunnel (split routes in place): use the main default route.
            out = self.run(["ip", "-j", "route", "show", "default"], None)
            defaults = [r for r in json.loads(out or "[]") if r.get("dev") != self.tun]
            if not defaults:
                raise ExitNodeError(f"no route to {address} outside the tunnel")
            route = defaults[0]
        spec = ["dev", route["dev"]]
        if route.get("gateway"):
            spec = ["via", route["gateway"], *spec]
        return spec

    def _add_bypass(self, address: str) -> None:
        try:
            spec = self._route_to(address)
        except (ExitNodeError, ValueError, KeyError, IndexError) as exc:
            # Unreachable outside the tunnel (e.g. a peer's address on another private
            # network): there is nothing to keep; its packets may go through the exit.
            log.debug("no bypass for %s: %s", address, exc)
            return
        self.run(
            ["ip", "route", "replace", f"{address}/32", *spec, "proto", str(ROUTE_PROTO)], None
        )
        self.bypass[address] = spec

    def apply(self) -> None:
        """Add the bypass routes, then the split routes into the TUN device.

        Raises:
            ExitNodeError: a route could not be added (what was added is removed again).
        """
        self.recover()
        try:
            for address in self._wanted:
                self._add_bypass(address)
            for net in SPLIT_ROUTES:
                self.run(
                    ["ip", "route", "replace", net, "dev", self.tun, "proto", str(ROUTE_PROTO)],
                    None,
                )
        except ExitNodeError:
            self.restore()
            raise
        self.applied = True
        log.info("exit routes via %s, bypassing %s", self.tun, ", ".join(self.bypass) or "nothing")

    @property
    def wanted(self) -> list[str]:
        """The addresses to bypass (whether or not a route could be added for each)."""
        return list(self._wanted)

    def set_bypass(self, addresses: Iterable[str]) -> None:
        """Change the bypassed addresses (peers' endpoints move) while applied."""
        wanted = [str(ipaddress.IPv4Address(a)) for a in addresses]
        self._wanted = wanted
        if not self.applied:
            return
        for address in [a for a in self.bypass if a not in wanted]:
            self.run(["ip", "route", "del", f"{address}/32", "proto", str(ROUTE_PROTO)], None)
            del self.bypass[address]
        for address in wanted:
            if address not in self.bypass:
                self._add_bypass(address)

    def restore(self) -> None:
        """Remove every route tunnelmesh added (``proto 211``). Idempotent."""
        self.run(["ip", "-4", "route", "flush", "proto", str(ROUTE_PROTO)], None)
        self.bypass.clear()
        self.applied = False

    recover = restore
    """After a crash: the same as :meth:`restore` (the marked routes are all ours)."""

    def __enter__(self) -> ExitRoutes:
        self.apply()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


class ExitGateway:
    """The exit's forwarding and masquerade; see the module docstring.

    Args:
        mesh_cidr: the mesh's IPv4 network; its packets to elsewhere are masqueraded.
        state_dir: where the previous ``ip_forward`` value is kept while applied.
        proc_sys: the ``/proc/sys`` directory (a test can point it elsewhere).
        run: command runner ``(argv, stdin) -> stdout``.
    """

    def __init__(
        self,
        mesh_cidr: str,
        *,
        state_dir: str | os.PathLike[str] = "/run/tunnelmesh",
        proc_sys: str | os.PathLike[str] = "/proc/sys",
        run: Runner = run_command,
    ) -> None:
        self.mesh = ipaddress.IPv4Network(mesh_cidr, strict=False)
        self.state = Path(state_dir) / "exit-gateway.json"
        self.ip_forward = Path(proc_sys) / "net/ipv4/ip_forward"
        self.run = run
        self.applied = False

    def ruleset(self) -> str:
        net = str(self.mesh)
        return (
            f"table ip {NFT_TABLE} {{}}\n"
            f"delete table ip {NFT_TABLE}\n"
            f"table ip {NFT_TABLE} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip saddr {net} ip daddr != {net} masquerade\n"
            "  }\n"
            "}\n"
        )

    def apply(self) -> None:
        """Enable forwarding and masquerading.

        Raises:
            ExitNodeError: nftables or the sysctl failed (what was done is undone).
        """
        self.recover()
        previous = self.ip_forward.read_text().strip()
        self.state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ip_forward": previous}))
        os.replace(tmp, self.state)
        try:
            self.run(["nft", "-f", "-"], self.ruleset())
            self.ip_forward.write_text("1\n")
        except (ExitNodeError, OSError) as exc:
            self.recover()
            raise ExitNodeError(f"cannot set up the exit: {exc}") from None
        self.applied = True
        log.info("exit gateway: forwarding and masquerading %s", self.mesh)

    def restore(self) -> None:
        """Remove the table and put ``ip_forward`` back. Idempotent."""
        self.recover()
        self.applied = False

    def recover(self) -> bool:
        """Undo what a (crashed) exit left: the table, and ``ip_forward`` from the state file.

        Returns:
            Whether a state file was found.
        """
        # "add" then "delete": no error whether the table exists or not.
        self.run(["nft", "-f", "-"], f"table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n")
        try:
            previous = json.loads(self.state.read_text())["ip_forward"]
        except FileNotFoundError:
            return False
        except (ValueError, KeyError):
            previous = None
        if previous in ("0", "1"):
            self.ip_forward.write_text(previous + "\n")
        self.state.unlink(missing_ok=True)
        return True

    def __enter__(self) -> ExitGateway:
        self.apply()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
