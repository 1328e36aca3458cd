"""The coordinator-backed DNS backend: mesh names from the coordinator's peer records.

The control plane feeds it; the resolver reads it. Feeding API (all of it cheap, call it from
the event loop):

* :meth:`CoordinatorBackend.apply_push`: give it every push-channel message as it arrives
  (``Snapshot`` replaces every record, ``PeerUpserted`` adds or changes one peer, ``PeerGone``
  removes one; other messages are ignored). Messages are read by attribute (``peers``,
  ``peer.name``, ``peer.peer_id``, ``peer.mesh_ip``, optional ``peer.mesh_ip6``,
  ``peer.is_coordinator`` and ``peer.aliases``), so this module does not import the control
  package. A peer's aliases answer its addresses, except where the name is already a record
  (a peer's name, or another peer's alias): an alias never takes a name over. A ``Clients``
  message (attribute ``clients``: ``name``, ``mesh_ip``, ``active``) replaces the clients'
  names (concentrator clients, e.g. ``phone``): the active ones answer their mesh IP; a peer's
  name is never taken over by a client's.
* :meth:`~CoordinatorBackend.update`: replace every record at once, ``{name: [ip, ...]}``
  (e.g. from ``GET /api/v1/dns``), optionally with the coordinators' IPs for ``this``.
* :meth:`~CoordinatorBackend.set` / :meth:`~CoordinatorBackend.remove`: one name.

Names are stored relative to the mesh domain and lower-cased: ``alpha``, or ``www.alpha`` for
an alias; a name given as ``alpha.tunnelmesh`` (or ``.tm``/``.mesh``) is stored as ``alpha``.
``this`` answers the coordinators' IPs (the local coordinator first when it is one).

Lookup contract (the resolver's side, :meth:`lookup`): ``qname`` is the name relative to the
mesh domain for ``A``/``AAAA``, and an IP address in text form for ``PTR`` (the answer is the
relative names owning it). ``None`` means "not mine", ``[]`` "mine, no such record".

:attr:`version` grows on every change; the resolver caches answers per version.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from tunnelmesh.abc import DnsBackend

__all__ = ["DEFAULT_DOMAINS", "CoordinatorBackend"]

DEFAULT_DOMAINS = ("tunnelmesh", "tm", "mesh")
THIS = "this"


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text.split("%", 1)[0]))


class CoordinatorBackend(DnsBackend):
    """Mesh names from the coordinator; see the module docstring.

    Args:
        records: initial records, name to IPs.
        coordinators: the coordinators' mesh IPs (the ``this`` name).
        networks: mesh CIDRs whose reverse names are ours even without a record (an unknown
            mesh IP answers NXDOMAIN instead of being forwarded upstream).
        domains: suffixes stripped from names given to :meth:`set` and :meth:`update`.
        local_name: this peer's name: when it is a coordinator, ``this`` lists it first.
    """

    name: ClassVar[str] = "coordinator"

    def __init__(
        self,
        records: Mapping[str, Iterable[str]] | None = None,
        *,
        coordinators: Iterable[str] = (),
        networks: Iterable[str] = (),
        domains: Iterable[str] = DEFAULT_DOMAINS,
        local_name: str = "",
    ) -> None:
        self.domains = tuple(d.strip(".").lower() for d in domains)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.local_name = local_name
        self.version = 0
        self._names: dict[str, list[str]] = {}
        self._reverse: dict[str, list[str]] = {}
        self._coordinators: list[str] = []
        self._ids: dict[str, str] = {}  # peer_id -> name, to follow renames
        self._aliases: dict[str, list[str]] = {}  # peer_id -> its aliases (relative names)
        self._coordinator_names: set[str] = set()
        self._clients: dict[str, list[str]] = {}  # relative client name -> its IPs
        if records:
            self.update(records, coordinators)
        elif coordinators:
            self.set_coordinators(coordinators)

    # --- feeding ---------------------------------------------------------------------------

    def relative(self, name: str) -> str:
        """``Alpha.tunnelmesh.`` -> ``alpha``."""
        name = name.strip().rstrip(".").lower()
        for domain in self.domains:
            if name.endswith("." + domain):
                return name[: -len(domain) - 1]
        return name

    def _rebuild_reverse(self) -> None:
        reverse: dict[str, list[str]] = {}
        for name, ips in itertools.chain(self._names.items(), self._clients.items()):
            for ip in ips:
                reverse.setdefault(ip, []).append(name)
        self._reverse = reverse
        self.version += 1

    def update(
        self, records: Mapping[str, Iterable[str]], coordinators: Iterable[str] | None = None
    ) -> None:
        """Replace every record (and the coordinators, when given)."""
        self._names = {self.relative(n): [_ip(ip) for ip in ips] for n, ips in records.items()}
        if coordinators is not None:
            self._coordinators = [_ip(ip) for ip in coordinators]
        self._rebuild_reverse()

    def set(self, name: str, ips: Iterable[str], *, coordinator: bool = False) -> None:
        """Add or replace one name's addresses; ``coordinator``: it is a coordinator's peer
        (its addresses join ``this``; the node sets its own record so when it is one)."""
        self._names[self.relative(name)] = [_ip(ip) for ip in ips]
        if coordinator:
            self._coordinator_names.add(name)
            self._coordinators = self._coordinator_ips(self._names)
        self._rebuild_reverse()

    def remove(self, name: str) -> bool:
        """Remove one name; return whether it existed."""
        if self._names.pop(self.relative(name), None) is None:
            return False
        self._rebuild_reverse()
        return True

    def set_coordinators(self, ips: Iterable[str]) -> None:
        """Set the addresses ``this`` answers."""
        self._coordinators = [_ip(ip) for ip in ips]
        self.version += 1

    def set_clients(self, clients: Iterable[Any]) -> None:
        """Replace the clients' names: each active client (``name``, ``mesh_ip``) answers."""
        self._clients = {
            self.relative(c.name): [_ip(c.mesh_ip)]
            for c in clients
            if getattr(c, "active", True) and getattr(c, "mesh_ip", "")
        }
        self._rebuild_reverse()

    def apply_push(self, message: Any) -> None:
        """Apply one push-channel message (Snapshot, PeerUpserted, PeerGone, Clients); ignore
        others."""
        clients = getattr(message, "clients", None)
        if clients is not None:
            self.set_clients(clients)
            return
        peers = getattr(message, "peers", None)
        if peers is not None:
            self._ids = {}
            self._aliases = {}
            self._coordinator_names = set()
            records: dict[str, list[str]] = {}
            for peer in peers:
                records[peer.name] = _peer_ips(peer)
                self._note_peer(peer)
            for peer in peers:
                self._add_aliases(peer, records)
            self.update(records, self._coordinator_ips(records))
            return
        peer = getattr(message, "peer", None)
        if peer is not None and hasattr(peer, "mesh_ip"):
            old = self._ids.get(getattr(peer, "peer_id", ""), peer.name)
            self._drop_aliases(getattr(peer, "peer_id", ""))
            if old != peer.name:
                self._names.pop(self.relative(old), None)
                self._coordinator_names.discard(old)
            self._note_peer(peer)
            rel = self.relative(peer.name)
            for held in self._aliases.values():  # a peer's name wins over an alias
                if rel in held:
                    held.remove(rel)
            self._names[rel] = _peer_ips(peer)
            self._add_aliases(peer, self._names)
            self._coordinators = self._coordinator_ips(self._names)
            self._rebuild_reverse()
            return
        name = getattr(message, "name", None)
        if name is not None and hasattr(message, "peer_id") and hasattr(message, "revision"):
            self._drop_aliases(message.peer_id)
            self._ids.pop(message.peer_id, None)
            self._coordinator_names.discard(name)
            self._names.pop(self.relative(name), None)
            self._coordinators = self._coordinator_ips(self._names)
            self._rebuild_reverse()

    def _add_aliases(self, peer: Any, records: dict[str, list[str]]) -> None:
        """Point ``peer.aliases`` at its addresses; a name that is another record (a peer's
        name, or an alias someone holds) is never taken over."""
        pid = getattr(peer, "peer_id", "")
        held: list[str] = []
        for alias in getattr(peer, "aliases", ()) or ():
            rel = self.relative(alias)
            if not rel or rel in records or rel == THIS:
                continue
            records[rel] = _peer_ips(peer)
            held.append(rel)
        if pid and held:
            self._aliases[pid] = held

    def _drop_aliases(self, peer_id: str) -> None:
        for rel in self._aliases.pop(peer_id, []) if peer_id else []:
            self._names.pop(rel, None)

    def _note_peer(self, peer: Any) -> None:
        if getattr(peer, "peer_id", ""):
            self._ids[peer.peer_id] = peer.name
        if getattr(peer, "is_coordinator", False):
            self._coordinator_names.add(peer.name)
        else:
            self._coordinator_names.discard(peer.name)

    def _coordinator_ips(self, records: Mapping[str, list[str]]) -> list[str]:
        names = sorted(self._coordinator_names, key=lambda n: (n != self.local_name, n))
        return [ip for n in names for ip in records.get(self.relative(n), [])]

    # --- lookups ---------------------------------------------------------------------------

    def names(self) -> dict[str, list[str]]:
        """Every record, name to IPs (a copy; a peer's name wins over a client's)."""
        out = {n: list(ips) for n, ips in self._clients.items()}
        out.update((n, list(ips)) for n, ips in self._names.items())
        return out

    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        if qtype == "PTR":
            names = self._reverse.get(qname)
            if names is not None:
                return list(names)
            if self._coordinators and qname in self._coordinators:
                return [THIS]
            if self.networks:
                try:
                    addr = ipaddress.ip_address(qname)
                except ValueError:
                    return None
                if any(addr in net for net in self.networks):
                    return []
            return None
        if qname == THIS and self._coordinators:
            ips = self._coordinators
        else:
            found = self._names.get(qname)
            if found is None:
                found = self._clients.get(qname)
            if found is None:
                return None
            ips = found
        if qtype == "A":
            return [ip for ip in ips if ":" not in ip]
        if qtype == "AAAA":
            return [ip for ip in ips if ":" in ip]
        return []


def _peer_ips(peer: Any) -> list[str]:
    ips = [peer.mesh_ip] if getattr(peer, "mesh_ip", "") else []
    ip6 = getattr(peer, "mesh_ip6", "")
    if ip6:
        ips.append(ip6)
    return ips
