"""This host's IPv4 interface addresses (Linux ``SIOCGIFADDR``/``SIOCGIFNETMASK`` ioctls).

One place for what both ends need: a node publishes its interface addresses as endpoints
(:mod:`tunnelmesh.node.endpoints`), a coordinator names them in its certificate and its join
hints (:mod:`tunnelmesh.coordinator.server`), a joining client offers them to the coordinator
(:mod:`tunnelmesh.control.daemon`).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

__all__ = ["interface_networks", "local_addresses"]

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def interface_networks() -> list[ipaddress.IPv4Interface]:
    """Every IPv4 address of this host's interfaces with its prefix (loopback included)."""
    out: list[ipaddress.IPv4Interface] = []
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        return out
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            req = struct.pack("256s", name.encode()[:15])
            try:
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)[20:24])
                mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), _SIOCGIFNETMASK, req)[20:24])
            except OSError:
                continue
            out.append(ipaddress.IPv4Interface(f"{addr}/{mask}"))
    return out


def local_addresses() -> list[str]:
    """This host's IPv4 interface addresses, ``127.0.0.1`` first, each once (best effort)."""
    out = ["127.0.0.1"]
    for iface in interface_networks():
        addr = str(iface.ip)
        if addr not in out:
            out.append(addr)
    return out
