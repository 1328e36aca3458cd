"""Lab helpers: Debian's wireguard-go and ``wg`` as "the phone", set up from the wg-quick config
``tunnelmesh wg add`` prints, as a user would (``wg-quick strip`` + ``wg setconf``).

They work with any host object that has ``run``, ``popen`` and ``ns`` like
:class:`tunnelmesh.testing.lab.Host`. The lab test and the benchmark share them. Safety: the
config's AllowedIPs are routed into the phone's interface inside its namespace; a full-tunnel
config (``0.0.0.0/0``) is refused unless the caller asks for it (``full_tunnel=True``), and
then its default route goes into the phone's WireGuard interface, inside the phone's own lab
namespace only (never the root namespace), and only while the concentrator's endpoint keeps
its own, more specific route on the lab link (else WireGuard's packets would loop).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunnelmesh.errors import LabError
from tunnelmesh.testing.wireguard import launch_wireguard_go, stop_process

__all__ = ["NETNS_ETC", "Phone", "parse_config", "start_phone"]

NETNS_ETC = Path("/etc/netns")


def parse_config(text: str) -> dict[str, list[str]]:
    """The keys of a wg-quick config (``Address``, ``DNS``, ``AllowedIPs``...), each with its
    comma-separated values in order (both sections together)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).extend(v.strip() for v in value.split(",") if v.strip())
    return out


@dataclass
class Phone:
    """wireguard-go running in a lab host with a client config."""

    host: Any
    ifname: str
    proc: subprocess.Popen[str]
    address: str
    dns: str
    resolv_dir: Path | None = None
    routes: list[str] = field(default_factory=list)

    def latest_handshake(self) -> int:
        """Unix seconds of the last handshake with the concentrator (0: none yet)."""
        out = self.host.run(["wg", "show", self.ifname, "latest-handshakes"]).stdout.split()
        return int(out[1]) if len(out) > 1 else 0

    def stop(self) -> None:
        """Stop wireguard-go (its interface goes with it) and remove the resolv.conf."""
        stop_process(self.proc)
        if self.resolv_dir is not None:
            shutil.rmtree(self.resolv_dir, ignore_errors=True)
            self.resolv_dir = None


def start_phone(
    host: Any,
    workdir: Path,
    *,
    ifname: str,
    config: str,
    domain: str = "tunnelmesh",
    full_tunnel: bool = False,
) -> Phone:
    """Start wireguard-go as interface ``ifname`` in ``host`` and configure it from ``config``.

    The config goes in through ``wg-quick strip`` and ``wg setconf``; then what wg-quick would
    do for the rest: the Address on the interface, the AllowedIPs routed into it, and DNS as
    the namespace's resolver (``/etc/netns/<namespace>/resolv.conf``, which ``ip netns exec``
    mounts over /etc/resolv.conf). ``ifname`` must be unique on the machine (wireguard-go's
    UAPI sockets in /var/run/wireguard are shared by every namespace).
    ``full_tunnel``: a config with ``0.0.0.0/0`` is accepted; see the module docstring.

    Raises:
        LabError: wireguard-go did not start, or the config routes everything (0.0.0.0/0)
            without ``full_tunnel``, or with it outside a lab namespace or with an endpoint
            that is not on a lab link of its own.
    """
    keys = parse_config(config)
    allowed = keys.get("AllowedIPs", [])
    endpoint = keys["Endpoint"][0].rpartition(":")[0].strip("[]")
    default = any(ipaddress.ip_network(a, strict=False).prefixlen == 0 for a in allowed)
    if default:
        if not full_tunnel:
            raise LabError("a full-tunnel config would install a default route; not in the lab")
        if not getattr(host, "ns", ""):
            raise LabError("a full-tunnel phone needs its own lab namespace")
        if not host.route_get(endpoint):
            raise LabError(f"the phone has no route of its own to the endpoint {endpoint}")
    proc = launch_wireguard_go(host, ifname)
    phone = Phone(host, ifname, proc, keys["Address"][0], (keys.get("DNS") or [""])[0])
    try:
        path = workdir / f"{ifname}.conf"  # wg-quick takes the interface name from the file
        path.write_text(config)
        path.chmod(0o600)
        stripped = workdir / f"{ifname}.setconf"
        stripped.write_text(host.run(["wg-quick", "strip", str(path)]).stdout)
        stripped.chmod(0o600)
        host.run(["wg", "setconf", ifname, str(stripped)])
        host.run(["ip", "addr", "add", phone.address, "dev", ifname])
        host.run(["ip", "link", "set", ifname, "up"])
        for prefix in allowed:
            host.run(["ip", "route", "add", prefix, "dev", ifname])
            phone.routes.append(prefix)
        if default and f"dev {ifname}" in (host.route_get(endpoint) or ""):
            raise LabError(f"the endpoint {endpoint} would be routed into {ifname}")
        if phone.dns:
            NETNS_ETC.mkdir(mode=0o755, exist_ok=True)
            phone.resolv_dir = NETNS_ETC / host.ns
            phone.resolv_dir.mkdir(exist_ok=True)
            (phone.resolv_dir / "resolv.conf").write_text(
                f"nameserver {phone.dns}\nsearch {domain}\noptions timeout:1 attempts:2\n"
            )
    except BaseException:
        phone.stop()
        raise
    return phone
