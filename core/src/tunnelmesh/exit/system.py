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
* an nftables table of its own, ``ip tunnelmesh_exit``, with

  - a ``forward`` chain that passes only what comes in on the TUN device from an allowed
    client's mesh IP (the whole mesh, or ``exit.allowed_peers``) and goes out another device,
    and the replies (conntrack) back to the mesh. Unless ``allow_lan``, destinations in
    :data:`BLOCKED_RANGES` (private, CGNAT, loopback, link-local including
    169.254.169.254, multicast, reserved) and the exit's own LAN prefixes (read again when
    the host's addresses change) are dropped. When the exit turned ``ip_forward`` on, the
    chain's policy is ``drop``: the host forwards nothing else (no host-wide side effect); a
    host that forwarded already keeps doing so;
  - unless ``allow_lan``, an ``input`` chain that drops packets from the TUN device to this
    host's non-mesh addresses (the exit's LAN address is not a way into the LAN either);
  - a ``postrouting`` NAT chain that masquerades packets from the mesh CIDR to anything
    outside it.

  Removing the table removes everything we added.

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

__all__ = [
    "BLOCKED_RANGES",
    "NFT_TABLE",
    "ROUTE_PROTO",
    "ExitGateway",
    "ExitNodeError",
    "ExitRoutes",
    "lan_prefixes",
]

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


BLOCKED_RANGES = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # CGNAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, with the cloud metadata address 169.254.169.254
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the broadcast address
)
"""Destinations an exit never forwards to unless ``allow_lan``: private, shared, loopback,
link-local, multicast and reserved IPv4 space (the exit's own LAN prefixes are added)."""


def lan_prefixes(run: Runner, *, exclude: Iterable[str] = ()) -> list[str]:
    """The IPv4 prefixes of this host's interfaces (``ip -j -4 addr show``), except the
    devices in ``exclude`` and loopback."""
    out = run(["ip", "-j", "-4", "addr", "show"], None)
    skip = set(exclude) | {"lo"}
    prefixes: dict[str, None] = {}
    for link in json.loads(out or "[]"):
        if link.get("ifname") in skip:
            continue
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and "local" in a:
                net = ipaddress.IPv4Network(f"{a['local']}/{a.get('prefixlen', 32)}", strict=False)
                prefixes[str(net)] = None
    return list(prefixes)


class ExitGateway:
    """The exit's forwarding, its forward filter and masquerade; see the module docstring.

    Args:
        mesh_cidr: the mesh's IPv4 network; its packets to elsewhere are masqueraded.
        tun: the mesh's TUN device: the only one whose packets are forwarded for clients.
        clients: the mesh IPs whose packets may leave through the exit; None: the whole mesh.
        allow_lan: also forward to private, link-local, loopback and the exit's own LAN
            destinations (:data:`BLOCKED_RANGES` and :func:`lan_prefixes`).
        state_dir: where the previous ``ip_forward`` value is kept while applied.
        proc_sys: the ``/proc/sys`` directory (a test can point it elsewhere).
        run: command runner ``(argv, stdin) -> stdout``.
    """

    def __init__(
        self,
        mesh_cidr: str,
        *,
        tun: str = "tun-mesh0",
        clients: Iterable[str] | None = None,
        allow_lan: bool = False,
        state_dir: str | os.PathLike[str] = "/run/tunnelmesh",
        proc_sys: str | os.PathLike[str] = "/proc/sys",
        run: Runner = run_command,
    ) -> None:
        self.mesh = ipaddress.IPv4Network(mesh_cidr, strict=False)
        self.tun = tun
        self.clients = None if clients is None else sorted(set(clients))
        self.allow_lan = allow_lan
        self.state = Path(state_dir) / "exit-gateway.json"
        self.ip_forward = Path(proc_sys) / "net/ipv4/ip_forward"
        self.run = run
        self.applied = False
        self.forward_policy = "drop"
        """``drop`` when the exit turned forwarding on (so it forwards nothing but its
        clients' traffic), ``accept`` when the host forwarded already (left as it was)."""
        self.blocked: list[str] = []

    def _blocked(self) -> list[str]:
        if self.allow_lan:
            return []
        nets = [ipaddress.IPv4Network(n) for n in BLOCKED_RANGES]
        try:
            lans = lan_prefixes(self.run, exclude=[self.tun])
        except (ExitNodeError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "cannot read this host's LAN prefixes (%s); private ranges still blocked", exc
            )
            lans = []
        nets += [ipaddress.IPv4Network(n) for n in lans]
        return [str(n) for n in ipaddress.collapse_addresses(nets)]

    def ruleset(self) -> str:
        """The nftables script (atomic: the table is replaced as a whole)."""
        net = str(self.mesh)
        tun = json.dumps(self.tun)  # a quoted nft string
        clients = net if self.clients is None else ", ".join(self.clients)
        lines = [
            f"table ip {NFT_TABLE} {{}}",
            f"delete table ip {NFT_TABLE}",
            f"table ip {NFT_TABLE} {{",
        ]
        if clients:
            lines += ["  set clients {", "    type ipv4_addr; flags interval;",
                      f"    elements = {{ {clients} }}", "  }"]  # fmt: skip
        if self.blocked:
            lines += ["  set blocked {", "    type ipv4_addr; flags interval;",
                      f"    elements = {{ {', '.join(self.blocked)} }}", "  }"]  # fmt: skip
        lines += [
            "  chain forward {",
            f"    type filter hook forward priority filter - 1; policy {self.forward_policy};",
            f"    iifname {tun} oifname {tun} drop",
        ]
        if self.blocked:
            lines.append(f"    iifname {tun} ip daddr @blocked drop")
        if clients:
            lines.append(f"    iifname {tun} ip saddr @clients accept")
        lines += [
            f"    iifname {tun} drop",
            f"    oifname {tun} ip daddr {net} ct state established,related accept",
            f"    oifname {tun} drop",
            "  }",
        ]
        if not self.allow_lan:
            lines += [
                "  chain input {",
                "    type filter hook input priority filter - 1; policy accept;",
                f"    iifname {tun} ip daddr != {net} drop",
                "  }",
            ]
        lines += [
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    ip saddr {net} ip daddr != {net} masquerade",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"

    def refresh_lan(self) -> bool:
        """Read this host's LAN prefixes again (its addresses changed); while applied, replace
        the table when the blocked destinations changed. Returns whether they did.

        Raises:
            ExitNodeError: nftables refused the new table (the old one stays).
        """
        blocked = self._blocked()
        if blocked == self.blocked:
            return False
        self.blocked = blocked
        if self.applied:
            self.run(["nft", "-f", "-"], self.ruleset())
        return True

    def set_clients(self, clients: Iterable[str] | None) -> bool:
        """Change the mesh IPs allowed out (None: the whole mesh); while applied the table is
        replaced at once (one nftables transaction). Returns whether anything changed.

        Raises:
            ExitNodeError: nftables refused the new table (the old one stays).
        """
        wanted = None if clients is None else sorted(set(clients))
        if wanted == self.clients:
            return False
        self.clients = wanted
        if self.applied:
            self.run(["nft", "-f", "-"], self.ruleset())
        return True

    def apply(self) -> None:
        """Enable forwarding and masquerading.

        Raises:
            ExitNodeError: nftables or the sysctl failed (what was done is undone).
        """
        self.recover()
        previous = self.ip_forward.read_text().strip()
        self.forward_policy = "accept" if previous == "1" else "drop"
        self.blocked = self._blocked()
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
        log.info(
            "exit gateway: forwarding and masquerading %s (%s)",
            "the whole mesh" if self.clients is None else ", ".join(self.clients) or "nobody",
            "LAN allowed" if self.allow_lan else f"not to {len(self.blocked)} private/LAN ranges",
        )

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
