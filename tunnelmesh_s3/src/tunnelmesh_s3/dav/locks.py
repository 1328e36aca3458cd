"""WebDAV write locks (RFC 4918 class 2) and the ``If`` header, sans-IO.

:class:`LockTable` keeps the locks of one server in memory (a restart drops them, as their
timeouts would) and never reads the clock: every call takes ``now``. A lock covers its root
and, at depth infinity, everything under it. Paths are ``share/dir/file`` without leading or
trailing ``/``.

Rules kept here:

* an exclusive lock conflicts with any other lock whose scope overlaps it; shared locks
  overlap each other freely;
* a lock belongs to the principal who took it (by key): its token counts only when that
  principal submits it (RFC 4918 6.4), and only its owner may refresh or remove it;
* timeouts are bounded (:data:`MAX_TIMEOUT`; ``Infinite`` is taken as the bound) and so is
  the table (:data:`MAX_LOCKS` in all, :data:`MAX_PER_OWNER` per principal), so no client can
  grow it without limit.

:func:`parse_if` reads an ``If`` header into lists of conditions; the server evaluates them
against resources (:func:`evaluate_if`) and takes every state token it names as submitted.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tunnelmesh.errors import RemoteProtocolError

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "Condition",
    "IfHeaderError",
    "IfList",
    "Lock",
    "LockConflict",
    "LockTable",
    "evaluate_if",
    "parse_if",
    "parse_timeout",
]

DEFAULT_TIMEOUT = 600
MAX_TIMEOUT = 3600
MAX_LOCKS = 10_000
MAX_PER_OWNER = 1_000
TOKEN_PREFIX = "opaquelocktoken:"


class IfHeaderError(RemoteProtocolError):
    """An ``If`` header that does not follow RFC 4918 10.4's grammar."""


class LockConflict(RemoteProtocolError):
    """A lock request that conflicts with a lock held (or would exceed the table's bounds)."""

    def __init__(self, message: str, lock: Lock | None = None) -> None:
        super().__init__(message)
        self.lock = lock


@dataclass
class Lock:
    """One write lock."""

    token: str
    root: str
    infinity: bool
    exclusive: bool
    owner_key: str
    owner_xml: str
    timeout: int
    expires: float

    def covers(self, path: str) -> bool:
        return path == self.root or (self.infinity and _under(path, self.root))


def _under(path: str, root: str) -> bool:
    return path.startswith(root + "/")


def parse_timeout(header: str | None) -> int:
    """Seconds from a ``Timeout`` header (``Second-N``, ``Infinite``, a list: first usable)."""
    for part in (header or "").split(","):
        part = part.strip()
        if part.lower() == "infinite":
            return MAX_TIMEOUT
        if part.lower().startswith("second-") and part[7:].isdigit():
            return max(1, min(int(part[7:]), MAX_TIMEOUT))
    return DEFAULT_TIMEOUT


class LockTable:
    """Every lock of one server."""

    def __init__(self, *, max_locks: int = MAX_LOCKS, max_per_owner: int = MAX_PER_OWNER) -> None:
        self.max_locks = max_locks
        self.max_per_owner = max_per_owner
        self._locks: dict[str, Lock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def expire(self, now: float) -> None:
        for token in [t for t, lk in self._locks.items() if lk.expires <= now]:
            del self._locks[token]

    def get(self, token: str, now: float) -> Lock | None:
        self.expire(now)
        return self._locks.get(token)

    def covering(self, path: str, now: float) -> list[Lock]:
        """The locks whose scope includes ``path``."""
        self.expire(now)
        return [lk for lk in self._locks.values() if lk.covers(path)]

    def within(self, path: str, now: float) -> list[Lock]:
        """The locks on ``path``, covering it, or on anything under it."""
        self.expire(now)
        return [lk for lk in self._locks.values() if lk.covers(path) or _under(lk.root, path)]

    def lock(
        self,
        path: str,
        *,
        exclusive: bool,
        infinity: bool,
        owner_key: str,
        owner_xml: str,
        timeout: int,
        now: float,
    ) -> Lock:
        """Take a new lock.

        Raises:
            LockConflict: an overlapping lock forbids it, or a bound is reached.
        """
        self.expire(now)
        for lk in self._locks.values():
            overlap = lk.covers(path) or (infinity and _under(lk.root, path))
            if overlap and (exclusive or lk.exclusive):
                raise LockConflict(f"{path} is locked", lk)
        if len(self._locks) >= self.max_locks:
            raise LockConflict("too many locks on this server")
        if sum(lk.owner_key == owner_key for lk in self._locks.values()) >= self.max_per_owner:
            raise LockConflict("too many locks held by this peer")
        lk = Lock(
            token=TOKEN_PREFIX + str(uuid.uuid4()),
            root=path,
            infinity=infinity,
            exclusive=exclusive,
            owner_key=owner_key,
            owner_xml=owner_xml,
            timeout=timeout,
            expires=now + timeout,
        )
        self._locks[lk.token] = lk
        return lk

    def refresh(self, token: str, owner_key: str, timeout: int, now: float) -> Lock | None:
        """Restart a lock's timeout; None unless ``owner_key`` holds ``token``."""
        lk = self.get(token, now)
        if lk is None or lk.owner_key != owner_key:
            return None
        lk.timeout, lk.expires = timeout, now + timeout
        return lk

    def unlock(self, token: str, path: str, owner_key: str, now: float) -> bool:
        """Remove a lock that covers ``path`` and that ``owner_key`` holds."""
        lk = self.get(token, now)
        if lk is None or lk.owner_key != owner_key or not lk.covers(path):
            return False
        del self._locks[token]
        return True

    def blocking(
        self, path: str, tokens: Iterable[str], owner_key: str, now: float, *, subtree: bool
    ) -> Lock | None:
        """The lock that forbids writing ``path`` (and, with ``subtree``, anything under it)
        unless its token was submitted by its owner; None when the write may go on."""
        held = set(tokens)
        found = self.within(path, now) if subtree else self.covering(path, now)
        for lk in found:
            if lk.token not in held or lk.owner_key != owner_key:
                return lk
        return None

    def drop(self, path: str) -> None:
        """Forget the locks on ``path`` and under it (it was deleted or moved away)."""
        for token in [
            t for t, lk in self._locks.items() if lk.root == path or _under(lk.root, path)
        ]:
            del self._locks[token]


@dataclass(frozen=True)
class Condition:
    """One condition of an ``If`` list: a state token or an entity tag, maybe negated."""

    negated: bool
    token: str = ""
    etag: str = ""


@dataclass(frozen=True)
class IfList:
    """One parenthesised list, tagged with a resource URL or not (the request's URL)."""

    resource: str | None
    conditions: tuple[Condition, ...]


_IF_TOKEN = re.compile(r'\s*(?:(<[^>]*>)|(\()|(\))|(\[(?:W/)?"[^"]*"\])|(Not)\b)', re.I)


def parse_if(header: str) -> list[IfList]:
    """The lists of an ``If`` header.

    Raises:
        IfHeaderError: the header does not parse.
    """
    lists: list[IfList] = []
    resource: str | None = None
    pos = 0
    header = header.strip()
    conditions: list[Condition] | None = None
    negated = False
    while pos < len(header):
        m = _IF_TOKEN.match(header, pos)
        if m is None:
            raise IfHeaderError(f"bad If header at {header[pos : pos + 20]!r}")
        pos = m.end()
        url, open_, close, etag, not_ = m.groups()
        if conditions is None:
            if url:
                resource = url[1:-1]
            elif open_:
                conditions = []
            else:
                raise IfHeaderError("an If header list must start with '('")
        elif not_:
            if negated:
                raise IfHeaderError("'Not Not' in an If header")
            negated = True
        elif url:
            conditions.append(Condition(negated, token=url[1:-1]))
            negated = False
        elif etag:
            conditions.append(Condition(negated, etag=etag[1:-1]))
            negated = False
        elif close:
            if not conditions or negated:
                raise IfHeaderError("an empty If header list")
            lists.append(IfList(resource, tuple(conditions)))
            conditions = None
        else:
            raise IfHeaderError("'(' inside an If header list")
        if header[pos:].strip() == "":
            break
    if conditions is not None or not lists:
        raise IfHeaderError("an unfinished If header")
    return lists


def evaluate_if(
    lists: list[IfList],
    request_path: str,
    resource_path: Callable[[str], str | None],
    tokens_of: Callable[[str], set[str]],
    etag_of: Callable[[str], str | None],
) -> bool:
    """Whether an ``If`` header holds (RFC 4918 10.4): any one list with every condition true.

    Args:
        lists: from :func:`parse_if`.
        request_path: the request's resource.
        resource_path: a tagged list's URL to a resource path (None: not one of ours; its
            conditions are false).
        tokens_of: the lock tokens covering a resource.
        etag_of: a resource's entity tag, quoted (None when it does not exist).
    """
    for lst in lists:
        path = request_path if lst.resource is None else resource_path(lst.resource)
        ok = True
        for cond in lst.conditions:
            if path is None:
                value = False
            elif cond.token:
                value = cond.token in tokens_of(path)
            else:
                current = etag_of(path)
                value = current is not None and current == cond.etag.removeprefix("W/")
            if value == cond.negated:
                ok = False
                break
        if ok:
            return True
    return False


def submitted_tokens(lists: list[IfList]) -> set[str]:
    """Every state token named in an ``If`` header (they count as submitted, RFC 4918 10.4.1)."""
    return {c.token for lst in lists for c in lst.conditions if c.token}
