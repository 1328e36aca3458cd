"""A local GeoIP database as the map's second source of positions (``admin.geoip_db``).

The operator names a MaxMind DB file (GeoLite2-City, DB-IP's IP-to-City Lite, any
``.mmdb`` with ``location.latitude`` / ``location.longitude``) in server.yaml. For a peer that
gives no ``location:`` of its own, the map looks up the first public address among the
endpoints the peer reported in its heartbeats and shows the place as approximate ("GeoIP").

Nothing leaves the machine: the file is read with MaxMind's own reader (:mod:`maxminddb`), no
network call is ever made. Private, shared (CGNAT), unique-local, loopback, link-local,
multicast, reserved and mesh addresses are never looked up. Answers are cached per address in a
bounded LRU. A missing or unreadable database gives one warning at start and the map keeps
showing the locations peers configure.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import maxminddb
from tunnelmesh.control.messages import Location, location_problem

__all__ = ["CACHE_SIZE", "GeoLocator", "lookup_address", "open_geoip"]

log = logging.getLogger(__name__)

CACHE_SIZE = 4096
"""Addresses whose answer (a place or none) is kept; the least recently used goes first."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NOT_PUBLIC: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # RFC 6598 shared address space (carrier-grade NAT)
        "169.254.0.0/16",  # link-local
        "fc00::/7",  # RFC 4193 unique local
        "fe80::/10",  # link-local
    )
)


def lookup_address(endpoint: str, mesh: IPNetwork | None = None) -> IPAddress | None:
    """The address of ``endpoint`` (``IP:port`` or ``[IPv6]:port``) when it may be looked up.

    None for anything that is not an IP literal, and for addresses no database places:
    private (RFC 1918), shared (RFC 6598), unique-local, link-local, loopback, multicast,
    unspecified, reserved, or inside the mesh's own range ``mesh``.
    """
    host, sep, _port = endpoint.rpartition(":")
    if not sep:
        host = endpoint
    host = host.strip("[]")
    try:
        ip: IPAddress = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return None
    if ip.is_link_local or any(ip in net for net in _NOT_PUBLIC if net.version == ip.version):
        return None
    if mesh is not None and mesh.version == ip.version and ip in mesh:
        return None
    return ip


def _place(record: Any) -> Location | None:
    """A :class:`Location` from a City database record (None without a valid position)."""
    if not isinstance(record, dict):
        return None
    where = record.get("location")
    if not isinstance(where, dict):
        return None
    lat, lon = where.get("latitude"), where.get("longitude")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    city = ""
    names = record.get("city", {}).get("names") if isinstance(record.get("city"), dict) else None
    if isinstance(names, dict) and names:
        name = names.get("en", next(iter(names.values())))
        if isinstance(name, str):
            city = "".join(c for c in name if c.isprintable())[:64]
    loc = Location(lat=float(lat), lon=float(lon), city=city)
    if not (math.isfinite(loc.lat) and math.isfinite(loc.lon)) or location_problem(loc):
        return None
    return loc


class GeoLocator:
    """Places public addresses with an open MaxMind DB reader; answers cached per address.

    Args:
        reader: an open :class:`maxminddb.Reader` (:func:`open_geoip` opens one).
        path: the file, for messages.
        cache_size: how many addresses' answers are kept.
    """

    def __init__(self, reader: maxminddb.Reader, path: str, cache_size: int = CACHE_SIZE) -> None:
        self.reader = reader
        self.path = path
        self.cache_size = cache_size
        self._cache: OrderedDict[IPAddress, Location | None] = OrderedDict()
        self.lookups = 0
        """Database reads (cache misses)."""
        self.failed = 0
        """Reads the database could not answer (a damaged file); each answers no place."""

    def locate(self, ip: IPAddress) -> Location | None:
        """Where the database puts ``ip`` (None: not in it, or no position in its record)."""
        if ip in self._cache:
            self._cache.move_to_end(ip)
            return self._cache[ip]
        self.lookups += 1
        try:
            place = _place(self.reader.get(ip))
        except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("admin: GeoIP database %s cannot be read (%s)", self.path, exc)
            place = None
        self._cache[ip] = place
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return place

    def locate_endpoints(
        self, endpoints: Iterable[str], mesh: IPNetwork | None = None
    ) -> Location | None:
        """The place of the first public address among a peer's ``endpoints`` that has one."""
        for endpoint in endpoints:
            ip = lookup_address(endpoint, mesh)
            if ip is not None:
                place = self.locate(ip)
                if place is not None:
                    return place
        return None

    def close(self) -> None:
        self.reader.close()


def open_geoip(path: str, mode: int = maxminddb.MODE_AUTO) -> GeoLocator | None:
    """Open ``path``; None, with one warning saying why, when it is missing or not a database.

    ``mode``: :data:`maxminddb.MODE_AUTO` uses the C extension (libmaxminddb, memory-mapped)
    when it is installed and the pure-Python reader otherwise; both read the same files.
    """
    try:
        reader = maxminddb.open_database(path, mode)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        log.warning(
            "admin: GeoIP database %s cannot be used (%s); the map shows only the locations "
            "peers configure",
            path,
            exc,
        )
        return None
    return GeoLocator(reader, path)
