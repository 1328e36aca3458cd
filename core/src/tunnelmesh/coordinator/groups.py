"""Groups of peers, by peer ID: what S3 buckets, shares and the dashboard grant to.

A group is a name and a set of peer IDs, kept in the state store (the ``groups`` table) and
changed only by admins (``tunnelmesh group ...``, the ``/api/v1/groups`` routes). Members are
peer IDs, never names: a name can be released and registered by another key, a key cannot.
Deleting a peer does not take it out of its groups (its key may come back); deleting a group
does.

Two groups are built in and computed, never stored: ``everyone`` (every registered peer) and
``admins`` (every peer the coordinator currently treats as admin). They cannot be created,
changed or deleted.

For plugins on the coordinator (S3 grants, shares), the questions are::

    coordinator.groups.contains("ops", peer_id)   # is this peer in group "ops"?
    coordinator.groups.members("ops")             # frozenset of peer IDs (empty if no group)
    coordinator.groups.of(peer_id)                # sorted names of the groups it is in
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable

from tunnelmesh.coordinator.store import Group, StateStore
from tunnelmesh.errors import CoordinatorError

__all__ = ["BUILTIN_GROUPS", "GroupBook", "GroupError", "check_group_name"]

BUILTIN_GROUPS = ("admins", "everyone")
"""Computed groups: no one can create, change or delete them."""

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62})$")
MAX_GROUPS = 4096
MAX_MEMBERS = 65536


class GroupError(CoordinatorError):
    """A refused group change: ``status`` is the HTTP status, ``error`` a short code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def check_group_name(name: str) -> str | None:
    """None when ``name`` can name a group, else why not."""
    if name in BUILTIN_GROUPS:
        return f"{name!r} is a built-in group"
    if not _NAME.match(name):
        return (
            f"group name {name!r} must be 1 to 63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return None


class GroupBook:
    """The groups of one coordinator: the stored ones in memory, the built-in ones computed.

    Args:
        store: where groups are kept.
        admins: the peer IDs of the current admins (for ``admins``).
        everyone: the peer IDs of every registered peer (for ``everyone``).
        clock: wall-clock seconds, for ``created_at``.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        admins: Callable[[], Iterable[str]],
        everyone: Callable[[], Iterable[str]],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self._admins = admins
        self._everyone = everyone
        self._clock = clock
        self._groups: dict[str, Group] = {}
        self._lock = asyncio.Lock()  # read-modify-write of one group at a time

    async def load(self) -> None:
        self._groups = {g.name: g for g in await self.store.load_groups()}

    # --- questions (synchronous, for plugins) -------------------------------------------------

    def names(self) -> list[str]:
        """Every group name, built-in ones included, sorted."""
        return sorted([*BUILTIN_GROUPS, *self._groups])

    def exists(self, name: str) -> bool:
        return name in BUILTIN_GROUPS or name in self._groups

    def members(self, name: str) -> frozenset[str]:
        """The peer IDs in group ``name`` (empty when there is no such group)."""
        if name == "admins":
            return frozenset(self._admins())
        if name == "everyone":
            return frozenset(self._everyone())
        group = self._groups.get(name)
        return frozenset(group.members) if group else frozenset()

    def contains(self, name: str, peer_id: str) -> bool:
        """True when the peer with ID ``peer_id`` is in group ``name``."""
        return peer_id in self.members(name)

    def of(self, peer_id: str) -> list[str]:
        """The names of the groups ``peer_id`` is in, sorted."""
        return [n for n in self.names() if self.contains(n, peer_id)]

    # --- changes (admin only; the API checks the caller) --------------------------------------

    def _stored(self, name: str) -> Group:
        if name in BUILTIN_GROUPS:
            raise GroupError(403, "builtin_group", f"{name!r} is a built-in group; it is computed")
        group = self._groups.get(name)
        if group is None:
            raise GroupError(404, "no_such_group", f"no group named {name!r}")
        return group

    async def create(self, name: str) -> Group:
        """Create an empty group.

        Raises:
            GroupError: 400 bad name, 409 it exists, 507 too many groups.
        """
        reason = check_group_name(name)
        if reason is not None:
            raise GroupError(403 if name in BUILTIN_GROUPS else 400, "bad_group_name", reason)
        async with self._lock:
            return await self._create(name)

    async def _create(self, name: str) -> Group:
        if name in self._groups:
            raise GroupError(409, "group_exists", f"group {name!r} exists")
        if len(self._groups) >= MAX_GROUPS:
            raise GroupError(507, "too_many_groups", f"at most {MAX_GROUPS} groups")
        group = Group(name=name, members=[], created_at=self._clock())
        await self.store.put_group(group)
        self._groups[name] = group
        return group

    async def delete(self, name: str) -> None:
        """Delete a group (its members stay peers).

        Raises:
            GroupError: 403 built-in, 404 no such group.
        """
        async with self._lock:
            self._stored(name)
            await self.store.delete_group(name)
            self._groups.pop(name, None)

    async def change(
        self, name: str, *, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> Group:
        """Add and remove peer IDs (one store write).

        Raises:
            GroupError: 403 built-in, 404 no such group, 507 too many members.
        """
        async with self._lock:
            group = self._stored(name)
            members = (set(group.members) | set(add)) - set(remove)
            if len(members) > MAX_MEMBERS:
                raise GroupError(507, "too_many_members", f"at most {MAX_MEMBERS} members")
            new = Group(name=name, members=sorted(members), created_at=group.created_at)
            await self.store.put_group(new)
            self._groups[name] = new
            return new
