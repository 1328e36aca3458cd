"""Sans-IO allocation of mesh IPs and peer names.

IPs: a key's first choice is a hash of its public key into ``mesh_cidr``; when that address is
taken the allocator probes forward, wrapping around. The coordinator stores the result, so the
same key gets the same IP after any restart; the hash start also keeps it the same in the
common case where the state is rebuilt from scratch. The network and broadcast addresses (and
any reserved address) are never handed out. Deleting a peer frees its address.

With several coordinators on one database the in-memory set of used addresses can be stale, so
the state store decides: :meth:`IpAllocator.candidates` and :func:`name_candidates` give the
order to try, and :meth:`~tunnelmesh.coordinator.store.StateStore.claim_peer` takes the first
candidate the database does not hold, in one transaction whose UNIQUE constraints settle a race
between two coordinators.

Names: a name is one DNS label (lower-case letters, digits, '-', at most 63). Some names are
reserved because they have a meaning in the mesh domain (``this``) or in URLs. A name held by
another key is never taken over: the caller either gets :class:`NameTaken` or, when it asked for
one, the first free ``name-2``, ``name-3``, ... .
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator

from tunnelmesh.errors import CoordinatorError

__all__ = [
    "RESERVED_NAMES",
    "AllocationError",
    "IpAllocator",
    "NameTaken",
    "check_name",
    "name_candidates",
    "suffixed_name",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
"""One DNS label as peer names use them (lower case)."""

RESERVED_NAMES = frozenset(
    {
        "this",
        "admin",
        "administrator",
        "api",
        "assets",
        "coordinator",
        "health",
        "localhost",
        "peers",
        "static",
        "super",
        "supervisor",
        "tm",
        "tunnelmesh",
        "mesh",
        "www",
    }
)


class AllocationError(CoordinatorError):
    """The mesh range has no free address."""


class NameTaken(CoordinatorError):
    """The name belongs to another key."""


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be a peer name, or None when it can."""
    if not isinstance(name, str) or not LABEL.match(name):
        return (
            f"name {name!r} is not a DNS label (lower-case letters, digits and '-', "
            "1 to 63 characters, not starting or ending with '-')"
        )
    if name in RESERVED_NAMES:
        return f"name {name!r} is reserved; choose another"
    return None


def suffixed_name(name: str, is_free: Callable[[str], bool], limit: int = 10_000) -> str:
    """The first of ``name``, ``name-2``, ``name-3``, ... for which ``is_free`` is True.

    Raises:
        NameTaken: none of the first ``limit`` candidates is free.
    """
    if is_free(name):
        return name
    for n in range(2, limit + 2):
        suffix = f"-{n}"
        candidate = name[: 63 - len(suffix)].rstrip("-") + suffix
        if is_free(candidate):
            return candidate
    raise NameTaken(f"no free variant of name {name!r}")


def name_candidates(name: str, *, rename: bool, limit: int = 10_000) -> Iterator[str]:
    """``name``, then (when ``rename``) ``name-2``, ``name-3``, ... that are valid peer names.

    The order :func:`suffixed_name` tries, for a state store that decides which one is free.
    """
    yield name
    if not rename:
        return
    for n in range(2, limit + 2):
        suffix = f"-{n}"
        candidate = name[: 63 - len(suffix)].rstrip("-") + suffix
        if check_name(candidate) is None:
            yield candidate


class IpAllocator:
    """Hands out addresses of ``cidr``; knows which are in use.

    Args:
        cidr: the mesh range, e.g. ``172.30.0.0/16``.
        used: addresses already held (from the state store).
        reserved: addresses never to hand out.
    """

    def __init__(self, cidr: str, used: Iterable[str] = (), reserved: Iterable[str] = ()) -> None:
        self.network = ipaddress.ip_network(cidr, strict=False)
        self._base = int(self.network.network_address)
        size = self.network.num_addresses
        # Skip the network and broadcast addresses where the range has them.
        self._first = 1 if size > 2 else 0
        self._count = size - 2 if size > 2 else size
        self._used: set[int] = set()
        self._reserved = {int(ipaddress.ip_address(a)) for a in reserved}
        for addr in used:
            self.mark_used(addr)

    @property
    def capacity(self) -> int:
        """How many addresses the range can hand out."""
        return self._count - len(self._reserved)

    def __len__(self) -> int:
        return len(self._used)

    def preferred(self, key: bytes) -> IPAddress:
        """The first address tried for ``key`` (a hash of it into the range)."""
        offset = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % self._count
        return ipaddress.ip_address(self._base + self._first + offset)

    def allocate(self, key: bytes) -> IPAddress:
        """Take the first free address from ``key``'s preferred one onwards.

        Raises:
            AllocationError: every address is in use.
        """
        start = int(self.preferred(key)) - self._base - self._first
        for i in range(self._count):
            value = self._base + self._first + (start + i) % self._count
            if value not in self._used and value not in self._reserved:
                self._used.add(value)
                return ipaddress.ip_address(value)
        raise AllocationError(f"mesh range {self.network} is full")

    def candidates(self, key: bytes) -> Iterator[str]:
        """Every address of the range in the order :meth:`allocate` tries them for ``key``
        (free or not: the state store knows which are held), reserved ones left out."""
        start = int(self.preferred(key)) - self._base - self._first
        for i in range(self._count):
            value = self._base + self._first + (start + i) % self._count
            if value not in self._reserved:
                yield str(ipaddress.ip_address(value))

    def mark_used(self, addr: str) -> None:
        """Record that ``addr`` is held (loading state). Ignores addresses outside the range."""
        ip = ipaddress.ip_address(addr)
        if ip in self.network:
            self._used.add(int(ip))

    def release(self, addr: str) -> None:
        """Free ``addr``; freeing a free address is not an error."""
        self._used.discard(int(ipaddress.ip_address(addr)))

    def is_used(self, addr: str) -> bool:
        return int(ipaddress.ip_address(addr)) in self._used

    def contains(self, addr: str) -> bool:
        """True when ``addr`` is an address this allocator could hand out."""
        ip = ipaddress.ip_address(addr)
        if ip not in self.network:
            return False
        off = int(ip) - self._base
        return self._first <= off < self._first + self._count
