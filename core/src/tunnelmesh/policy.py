"""Who may call a coordinator API route: one declaration per handler, checked by the server.

Every route of the coordinator's aiohttp application, core and plugin alike, carries a
:class:`Policy` set with :func:`route_policy`. The coordinator refuses to start when a route
has none, and a middleware checks the caller against the policy before the handler runs::

    from tunnelmesh import Policy, route_policy

    @route_policy(Policy.ADMIN)
    async def stats(request):
        ...

    @route_policy(Policy.SELF_OR_ADMIN, target="name")   # /api/v1/things/{name}
    async def revoke(request):
        ...

The handler learns the caller with ``tunnelmesh.coordinator.api.authenticated_peer(request)``.
The mesh join token is never a credential for any route: it only lets a new key register.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Policy", "RoutePolicy", "policy_of", "route_policy"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__tunnelmesh_policy__"


class Policy(enum.Enum):
    """The callers a route admits."""

    PUBLIC = "public"
    """Anyone, with no credential (health, the CA, a registration challenge)."""
    JOIN = "join"
    """Anyone; the handler itself checks a join credential (the token for a new key, the
    key's signature for a known one)."""
    PEER = "peer"
    """A registered peer, by its session token."""
    SELF_OR_ADMIN = "self-or-admin"
    """The peer the route names (path parameter ``target``, a peer name), or an admin."""
    ADMIN = "admin"
    """An admin peer (``admin_peers``, see docs/security.md)."""


@dataclass(frozen=True)
class RoutePolicy:
    """A handler's declared policy; ``target`` names the path parameter for SELF_OR_ADMIN."""

    policy: Policy
    target: str = "name"


def route_policy(policy: Policy, *, target: str = "name") -> Callable[[F], F]:
    """Declare who may call the decorated aiohttp handler.

    Args:
        policy: the callers admitted.
        target: for :attr:`Policy.SELF_OR_ADMIN`, the path parameter holding the peer name.
    """

    def mark(handler: F) -> F:
        setattr(handler, _ATTR, RoutePolicy(policy, target))
        return handler

    return mark


def policy_of(handler: Any) -> RoutePolicy | None:
    """The policy declared on ``handler`` (a function or bound method), or None."""
    found = getattr(handler, _ATTR, None)
    return found if isinstance(found, RoutePolicy) else None
