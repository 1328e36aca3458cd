"""The resolver's logic, sans-IO: query bytes in, a decision out (answer, forward or drop).

:meth:`MeshResolver.handle` takes one DNS message as received and returns a :class:`Result`:

* ``ANSWER`` with the response bytes: names under a mesh domain (``tunnelmesh``, ``tm`` and
  ``mesh`` by default), ``this.<domain>``, PTR for mesh IPs, and error responses;
* ``FORWARD``: not a mesh name; the driver relays the query to the upstream resolvers (it calls
  :meth:`~MeshResolver.servfail` when they all fail);
* ``DROP``: not worth an answer (shorter than a DNS header, a response rather than a query, or
  larger than ``max_size`` bytes).

Answers (RFC 1034/2308 behaviour, unlike the original's NXDOMAIN-for-everything):

* a known name: its A or AAAA records with TTL ``ttl``; NOERROR with no records (NODATA) for a
  type it lacks, including AAAA on an IPv4-only mesh;
* an unknown name under a mesh domain: NXDOMAIN;
* negative answers carry the zone's SOA with a short minimum (``negative_ttl``, 1 s by default),
  so a peer that joins is resolvable almost at once even through caching stub resolvers;
* a message dnslib cannot parse, or with other than one question: FORMERR; an opcode other
  than QUERY: NOTIMP.

Answers for mesh names are cached per exact query (minus its ID) while the backend's
``version`` stays the same (backends without a ``version`` attribute are not cached).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from typing import NamedTuple

from dnslib import (  # type: ignore[import-untyped]
    AAAA,
    EDNS0,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from tunnelmesh.abc import DnsBackend
from tunnelmesh.dns.backend import DEFAULT_DOMAINS

__all__ = ["MAX_QUERY", "Action", "MeshResolver", "Result"]

MAX_QUERY = 1232
"""Largest query accepted (bytes); a real query is a few hundred bytes at most."""
_CACHE_MAX = 4096
_EDNS_SIZE = 1232


class Action(enum.Enum):
    ANSWER = "answer"
    FORWARD = "forward"
    DROP = "drop"


class Result(NamedTuple):
    action: Action
    data: bytes = b""


_DROP = Result(Action.DROP)
_FORWARD = Result(Action.FORWARD)


class MeshResolver:
    """Answers mesh names from a :class:`~tunnelmesh.abc.DnsBackend`; see the module docstring.

    Args:
        backend: where the records come from.
        domains: the mesh domains; the first is the canonical one (PTR answers use it).
        ttl: TTL of positive answers, seconds.
        negative_ttl: SOA minimum, i.e. how long NXDOMAIN/NODATA may be cached.
        forward: forward other names (else REFUSED).
        max_size: queries larger than this are dropped.
    """

    def __init__(
        self,
        backend: DnsBackend,
        *,
        domains: Iterable[str] = DEFAULT_DOMAINS,
        ttl: int = 300,
        negative_ttl: int = 1,
        forward: bool = True,
        max_size: int = MAX_QUERY,
    ) -> None:
        self.backend = backend
        self.domains = tuple(d.strip(".").lower() for d in domains)
        if not self.domains:
            raise ValueError("at least one mesh domain is needed")
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.forward = forward
        self.max_size = max_size
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "queries",
                "answered",
                "nxdomain",
                "forwarded",
                "formerr",
                "dropped",
                "refused",
                "cache_hits",
            ),
            0,
        )
        self._cache: dict[bytes, bytes] = {}
        self._cache_version: object = None

    # --- entry point -----------------------------------------------------------------------

    def handle(self, data: bytes) -> Result:
        """Decide what to do with one received message. Never raises."""
        stats = self.stats
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        if n < 12 or data[2] & 0x80 or n > self.max_size:
            stats["dropped"] += 1
            return _DROP
        stats["queries"] += 1
        version = getattr(self.backend, "version", None)
        if version is not None:
            if version != self._cache_version:
                self._cache.clear()
                self._cache_version = version
            cached = self._cache.get(data[2:])
            if cached is not None:
                stats["cache_hits"] += 1
                stats["answered"] += 1
                return Result(Action.ANSWER, data[:2] + cached)
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises DNSError, but also IndexError etc. on garbage
            stats["formerr"] += 1
            return Result(Action.ANSWER, _header_only(data, RCODE.FORMERR))
        try:
            result, cacheable = self._answer(query)
        except Exception:  # a bad name or a backend bug must not stop the server
            stats["formerr"] += 1
            return Result(Action.ANSWER, _header_only(data, RCODE.FORMERR))
        if cacheable and version is not None and result.action is Action.ANSWER:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[data[2:]] = result.data[2:]
        return result

    def servfail(self, data: bytes) -> bytes:
        """The SERVFAIL response to a query that could not be forwarded."""
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return _header_only(data, RCODE.SERVFAIL)
        reply = query.reply()
        reply.header.aa = 0
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())

    # --- answers ---------------------------------------------------------------------------

    def _answer(self, query: DNSRecord) -> tuple[Result, bool]:
        header = query.header
        if header.opcode != 0:
            return self._error(query, RCODE.NOTIMP), False
        if len(query.questions) != 1:
            self.stats["formerr"] += 1
            return self._error(query, RCODE.FORMERR), False
        q = query.questions[0]
        qname = str(q.qname).rstrip(".").lower()
        qtype = QTYPE.get(q.qtype)
        for domain in self.domains:
            if qname == domain or qname.endswith("." + domain):
                rel = qname[: -len(domain) - 1] if qname != domain else ""
                return self._mesh(query, q, rel, domain, qtype), True
        if qname.endswith(".in-addr.arpa") or qname.endswith(".ip6.arpa"):
            ip = _reverse_ip(qname)
            if ip is not None and q.qtype in (QTYPE.PTR, QTYPE.ANY):
                names = self.backend.lookup(ip, "PTR")
                if names is not None:
                    reply = self._reply(query)
                    if not names:
                        return self._negative(reply, qname, self.domains[0], nx=True), True
                    for rel in names:
                        target = f"{rel}.{self.domains[0]}."
                        reply.add_answer(RR(q.qname, QTYPE.PTR, ttl=self.ttl, rdata=PTR(target)))
                    self.stats["answered"] += 1
                    return Result(Action.ANSWER, bytes(reply.pack())), True
        if not self.forward:
            self.stats["refused"] += 1
            return self._error(query, RCODE.REFUSED), False
        self.stats["forwarded"] += 1
        return _FORWARD, False

    def _mesh(self, query: DNSRecord, q: DNSQuestion, rel: str, domain: str, qtype: str) -> Result:
        reply = self._reply(query)
        if not rel:  # the zone apex: only SOA
            if q.qtype in (QTYPE.SOA, QTYPE.ANY):
                reply.add_answer(self._soa(domain))
                self.stats["answered"] += 1
                return Result(Action.ANSWER, bytes(reply.pack()))
            return self._negative(reply, domain, domain, nx=False)
        lookup = self.backend.lookup
        v4 = lookup(rel, "A")
        v6 = lookup(rel, "AAAA")
        if v4 is None and v6 is None:
            return self._negative(reply, rel, domain, nx=True)
        if q.qtype in (QTYPE.A, QTYPE.ANY):
            for ip in v4 or ():
                reply.add_answer(RR(q.qname, QTYPE.A, ttl=self.ttl, rdata=A(ip)))
        if q.qtype in (QTYPE.AAAA, QTYPE.ANY):
            for ip in v6 or ():
                reply.add_answer(RR(q.qname, QTYPE.AAAA, ttl=self.ttl, rdata=AAAA(ip)))
        if not reply.rr:
            return self._negative(reply, rel, domain, nx=False)
        self.stats["answered"] += 1
        return Result(Action.ANSWER, bytes(reply.pack()))

    def _reply(self, query: DNSRecord) -> DNSRecord:
        reply = DNSRecord(
            DNSHeader(id=query.header.id, qr=1, aa=1, ra=1, rd=query.header.rd),
            q=query.q,
        )
        if any(rr.rtype == QTYPE.OPT for rr in query.ar):
            reply.add_ar(EDNS0(udp_len=_EDNS_SIZE))
        return reply

    def _soa(self, domain: str) -> RR:
        return RR(
            f"{domain}.",
            QTYPE.SOA,
            ttl=self.negative_ttl,
            rdata=SOA(
                DNSLabel(f"ns.{domain}."),
                DNSLabel(f"hostmaster.{domain}."),
                (1, 60, 30, 3600, self.negative_ttl),
            ),
        )

    def _negative(self, reply: DNSRecord, name: str, domain: str, *, nx: bool) -> Result:
        if nx:
            reply.header.rcode = RCODE.NXDOMAIN
            self.stats["nxdomain"] += 1
        else:
            self.stats["answered"] += 1
        reply.add_auth(self._soa(domain))
        return Result(Action.ANSWER, bytes(reply.pack()))

    def _error(self, query: DNSRecord, rcode: int) -> Result:
        reply = self._reply(query)
        reply.header.aa = 0
        reply.header.rcode = rcode
        return Result(Action.ANSWER, bytes(reply.pack()))


def _header_only(data: bytes, rcode: int) -> bytes:
    """A bare response header (no sections) echoing the query's ID, opcode and RD bit."""
    qid = data[:2]
    flags = 0x8000 | (data[2] & 0x79) << 8 | 0x80 | rcode  # QR, opcode+RD, RA, RCODE
    return qid + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


def _reverse_ip(qname: str) -> str | None:
    """``4.0.42.10.in-addr.arpa`` -> ``10.42.0.4``; None unless a complete address."""
    try:
        if qname.endswith(".in-addr.arpa"):
            parts = qname[: -len(".in-addr.arpa")].split(".")
            if len(parts) != 4:
                return None
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        nibbles = qname[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
            return None
        hexed = "".join(reversed(nibbles))
        return str(ipaddress.IPv6Address(int(hexed, 16)))
    except ValueError:
        return None
