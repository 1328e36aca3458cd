"""Check a coordinator's routes against their declared policies, as every kind of caller.

For core and for plugins that add coordinator routes: start a coordinator with the plugin,
then::

    callers = await Callers.create(server, token)
    checked = await check_route_policies(server, callers, route_table(app))

Each route (HEAD aside) is called by a stranger (no credential), a token holder (the mesh join
token as bearer), an ordinary peer, the peer the route names (``{name}``, for self-or-admin)
and an admin, and the answers must match the route's :class:`~tunnelmesh.Policy`: 401 for a
stranger on anything but public routes, 403 for the token holder, 403 for a peer on admin and
other peers' self-or-admin routes, and neither 401 nor 403 for the callers admitted. Callers
admitted may get any other answer (400 for an empty body, 404, a WebSocket refusal): only the
authorization layer is checked. ``join`` routes are skipped (the registration tests cover them).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tunnelmesh.control.client import ControlClient, fetch_ca
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.identity import Identity
from tunnelmesh.policy import Policy

__all__ = ["AuthzMismatch", "Callers", "check_route_policies"]

_DENIED = (401, 403)
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def _fill(template: str, name: str) -> str:
    """The path of a route template: ``{name}`` is the target peer, anything else "authz"."""
    return _PARAM.sub(lambda m: name if m.group(1) == "name" else "authz", template)


class AuthzMismatch(AssertionError):
    """A route answered a caller differently from what its policy says."""


@dataclass
class Callers:
    """Peers registered with a coordinator, to call its routes as each kind of caller."""

    server: Any
    ca_pem: str
    admin: ControlClient
    peer: ControlClient
    http: aiohttp.ClientSession
    _clients: list[ControlClient] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    async def create(cls, server: Any, token: str, admin: Identity | None = None) -> Callers:
        """Register an admin (``admin``, or the first peer) and an ordinary peer.

        ``admin`` must be an admin by the server's config, or the coordinator must have no
        peer yet (the first peer is admin while ``admin_peers`` is empty).
        """
        ca = await fetch_ca(server.url, token)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(ca)))
        self = cls(server=server, ca_pem=ca, admin=None, peer=None, http=http)  # type: ignore[arg-type]
        self.admin = await self.register("authz-admin", admin)
        self.peer = await self.register("authz-peer")
        if not (self.admin.registration and self.admin.registration.is_admin):
            raise AuthzMismatch("the admin caller did not become admin")
        return self

    async def register(self, name: str, ident: Identity | None = None) -> ControlClient:
        c = ControlClient(
            server=self.server.url,
            identity=ident or Identity.generate(),
            ca_pem=self.ca_pem,
            auth_token=self.server.coordinator.auth_token,
            name=name,
        )
        await c.register()
        self._clients.append(c)
        return c

    async def call(self, method: str, path: str, bearer: str) -> int:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        if method in ("POST", "PUT", "PATCH"):
            headers["Content-Type"] = "application/json"
        async with self.http.request(
            method,
            self.server.url + path,
            data=b"{}" if method in ("POST", "PUT", "PATCH") else None,
            headers=headers,
            server_hostname=COORDINATOR_NAME,
        ) as resp:
            await resp.read()
            return resp.status

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()
        await self.http.close()


async def check_route_policies(
    server: Any, callers: Callers, table: list[tuple[str, str, Policy | None]]
) -> list[tuple[str, str, Policy]]:
    """Call every route of ``table`` as each kind of caller; return the routes checked.

    Raises:
        AuthzMismatch: a route without a policy, or an answer its policy does not allow.
    """
    checked: list[tuple[str, str, Policy]] = []
    for method, template, policy in table:
        if method == "HEAD":
            continue
        if policy is None:
            raise AuthzMismatch(f"{method} {template} declares no policy")
        if policy is Policy.JOIN:
            checked.append((method, template, policy))
            continue
        target = await callers.register(f"authz-target-{next(callers._seq)}")
        assert target.registration is not None
        name = target.registration.name
        path = _fill(template, name)
        token = server.coordinator.auth_token  # read each time: an admin route may rotate it
        admitted = {
            "stranger": policy is Policy.PUBLIC,
            "token holder": policy is Policy.PUBLIC,
            "peer": policy in (Policy.PUBLIC, Policy.PEER),
            "self": policy is not Policy.ADMIN,
            "admin": True,
        }
        order = [
            ("stranger", ""),
            ("token holder", token),
            ("peer", callers.peer.session_token),
            ("self", target.session_token),
            ("admin", callers.admin.session_token),
        ]
        for who, bearer in order:
            status = await callers.call(method, path, bearer)
            if admitted[who] and status in _DENIED:
                raise AuthzMismatch(f"{method} {path} ({policy.value}) refused {who}: {status}")
            if not admitted[who]:
                want = 401 if who == "stranger" else 403
                if status != want:
                    raise AuthzMismatch(
                        f"{method} {path} ({policy.value}) answered {who} {status}, not {want}"
                    )
        checked.append((method, template, policy))
    return checked
