"""The daemon side of the packet filter: the engine, its four layers and the control socket.

The node daemon creates one :class:`FilterService`, hands ``service.engine`` to the forwarder
(which calls ``engine.verdicts(...)`` per batch) and feeds the layers::

    service = FilterService.from_config(peer_config.filter, local_name=peer_config.name)
    await service.start(control_server)        # or start(socket_path=...) for a socket of its own
    service.set_coordinator_rules(rules)       # on every coordinator filter push
    service.set_service_ports([("tcp", 443)])  # when the services this peer runs change
    ...
    await service.aclose()

Control commands (see :mod:`tunnelmesh.control_socket`), used by ``tunnelmesh filter``:

* ``filter.list`` ``{}`` -> :class:`~tunnelmesh.filter.engine.FilterStats` as a dict;
* ``filter.add`` ``{port, protocol, action, source_peer, ttl}`` -> the rule (runtime layer;
  ``ttl`` seconds, 0 = until the daemon stops);
* ``filter.remove`` ``{port, protocol, source_peer}`` -> ``{"removed": true}`` (runtime layer
  only; the other layers belong to the coordinator, the config file and the services).

Changes apply at once, to live flows as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from tunnelmesh.control.messages import PolicyRule
from tunnelmesh.control_socket import ControlServer
from tunnelmesh.filter.engine import PortFilter
from tunnelmesh.filter.rules import MAX_TTL, Layer, Rule

if TYPE_CHECKING:
    from tunnelmesh.config import FilterConfig, FilterRule

__all__ = ["FilterService"]

log = logging.getLogger(__name__)

EXPIRE_INTERVAL = 5.0


_PEER_ID = re.compile(r"[0-9a-f]{16}")


def _rule_from_config(rule: FilterRule | PolicyRule) -> Rule:
    return Rule(
        port=rule.port,
        protocol=rule.protocol,  # type: ignore[arg-type]  # checked by Rule
        action=rule.action,  # type: ignore[arg-type]
        source_peer=rule.source_peer,
        expires=rule.expires if isinstance(rule, PolicyRule) else 0.0,  # a pushed rule expires
    )


class FilterService:
    """Owns a :class:`PortFilter` and serves ``filter.*`` control commands.

    Args:
        engine: the filter engine (a default-allow one when omitted).
        local_name: this peer's name; rules about it as a source peer are refused.
        clock: unix time source.
    """

    def __init__(
        self,
        engine: PortFilter | None = None,
        *,
        local_name: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine if engine is not None else PortFilter(clock=clock)
        self.local_name = local_name
        self.clock = clock
        self._config_rules: list[Rule] = []
        self._peer_name: Callable[[str], str | None] | None = None
        self._own_server: ControlServer | None = None
        self._expirer: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: FilterConfig, *, local_name: str = "") -> FilterService:
        """A service whose engine follows a peer's ``filter:`` config section."""
        engine = PortFilter(
            default_deny=config.default_deny,
            allow_icmp=config.allow_icmp,
            max_flows=config.max_flows,
        )
        service = cls(engine, local_name=local_name)
        service.apply_config(config)
        return service

    # --- layers ----------------------------------------------------------------------------

    def apply_config(self, config: FilterConfig) -> None:
        """(Re)load the config layer and the default policy from a ``filter:`` section."""
        self.engine.default_deny = config.default_deny
        self.engine.allow_icmp = config.allow_icmp
        self._config_rules = [_rule_from_config(r) for r in config.rules]
        self._set_config_layer()

    def follow_peers(self, peer_name: Callable[[str], str | None]) -> None:
        """Apply the config layer's rules whose ``source_peer`` is a peer ID (16 hex digits) to
        the name ``peer_name`` gives that key now (None: not in the mesh, the rule matches
        nobody). Call again when peers come, go or rename. Until the first call such rules
        match nobody; a ``source_peer`` that is not a peer ID is taken as a name."""
        self._peer_name = peer_name
        if any(_PEER_ID.fullmatch(r.source_peer) for r in self._config_rules):
            self._set_config_layer()

    def _set_config_layer(self) -> None:
        rules: list[Rule] = []
        for rule in self._config_rules:
            if _PEER_ID.fullmatch(rule.source_peer):
                name = self._peer_name(rule.source_peer) if self._peer_name else None
                if name is None:
                    continue
                rule = msgspec.structs.replace(rule, source_peer=name)
            rules.append(rule)
        self.engine.set_layer(Layer.CONFIG, rules)

    def set_coordinator_rules(
        self,
        rules: Iterable[Rule | FilterRule | Any],
        peer_name: Callable[[str], str | None] | None = None,
    ) -> list[str]:
        """Replace the coordinator layer (rules pushed by the coordinator).

        ``rules`` are :class:`Rule`, config ``FilterRule`` or any object with their attributes
        (the push message's ``PolicyRule``). A rule that is not valid (a port out of range, an
        unknown protocol or action) is left out and logged; the others apply.

        Args:
            peer_name: the coordinator names a rule's source peer by its peer ID; this maps
                it to the name the forwarder knows that key by now (None: no such peer here,
                and the rule is left out until it is: call again when the peers change).
                Without it, ``source_peer`` is taken as a name.

        Returns:
            Why each left-out rule was refused.
        """
        good: list[Rule] = []
        refused: list[str] = []
        for r in rules:
            try:
                rule = r if isinstance(r, Rule) else _rule_from_config(r)
            except (ValueError, TypeError, AttributeError) as exc:
                refused.append(f"{r!r}: {exc}")
                continue
            if rule.source_peer and peer_name is not None:
                name = peer_name(rule.source_peer)
                if name is None:
                    continue  # that key is not in the mesh (here): the rule matches nobody
                rule = msgspec.structs.replace(rule, source_peer=name)
            good.append(rule)
        for why in refused:
            log.warning("coordinator filter rule ignored: %s", why)
        self.engine.set_layer(Layer.COORDINATOR, good)
        return refused

    def set_service_ports(self, ports: Iterable[tuple[str, int]]) -> None:
        """Replace the service layer: one allow rule per ``(protocol, port)`` this peer serves."""
        self.engine.set_layer(
            Layer.SERVICE,
            [Rule(port=port, protocol=proto) for proto, port in ports],  # type: ignore[arg-type]
        )

    def add(
        self,
        *,
        port: int,
        protocol: str = "tcp",
        action: str = "allow",
        source_peer: str = "",
        ttl: float = 0,
    ) -> Rule:
        """Add a runtime rule (replacing one with the same key); ``ttl`` 0 keeps it.

        Raises:
            ValueError: a bad field, a ttl outside 0 to one year, or this peer as source.
        """
        if source_peer and source_peer == self.local_name:
            raise ValueError(f"source peer {source_peer!r} is this peer itself")
        if not 0 <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be between 0 and {MAX_TTL} seconds (one year)")
        now = self.clock()
        try:
            rule = msgspec.convert(
                {
                    "port": port,
                    "protocol": protocol,
                    "action": action,
                    "source_peer": source_peer,
                    "expires": now + ttl if ttl else 0.0,
                },
                Rule,
            )
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        self.engine.add_rule(Layer.RUNTIME, rule, now)
        return rule

    def remove(self, *, port: int, protocol: str = "tcp", source_peer: str = "") -> None:
        """Remove a runtime rule.

        Raises:
            ValueError: there is no such runtime rule.
        """
        if not self.engine.remove_rule(Layer.RUNTIME, protocol, port, source_peer, self.clock()):
            who = f" from {source_peer}" if source_peer else ""
            raise ValueError(f"no runtime rule for {protocol} port {port}{who}")

    # --- control commands ------------------------------------------------------------------

    def _cmd_list(self, payload: dict[str, Any]) -> Any:
        return msgspec.to_builtins(self.engine.stats(self.clock()))

    def _cmd_add(self, payload: dict[str, Any]) -> Any:
        try:
            args = msgspec.convert(payload, _AddRequest)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        rule = self.add(**msgspec.structs.asdict(args))
        return msgspec.to_builtins(rule)

    def _cmd_remove(self, payload: dict[str, Any]) -> Any:
        try:
            args = msgspec.convert(payload, _RemoveRequest)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        self.remove(**msgspec.structs.asdict(args))
        return {"removed": True}

    def register(self, server: ControlServer) -> None:
        """Add the ``filter.*`` commands to a control server the daemon already runs."""
        server.add_handler("filter.list", self._cmd_list)
        server.add_handler("filter.add", self._cmd_add)
        server.add_handler("filter.remove", self._cmd_remove)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(
        self,
        server: ControlServer | None = None,
        *,
        socket_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Serve the control commands and expire rules and flows in the background.

        Args:
            server: the daemon's control server to add the commands to (it starts it).
            socket_path: or a path for a control server of the service's own.
        """
        if server is None and socket_path is not None:
            server = self._own_server = ControlServer(socket_path)
            self.register(server)
            await server.start()
        elif server is not None:
            self.register(server)
        self._expirer = asyncio.create_task(self._expire_loop())

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL)
            self.engine.expire(self.clock())

    async def aclose(self) -> None:
        """Stop the background expiry and the service's own control server. Idempotent."""
        task, self._expirer = self._expirer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._own_server = self._own_server, None
        if server is not None:
            await server.aclose()

    async def __aenter__(self) -> FilterService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _AddRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    port: int
    protocol: str = "tcp"
    action: str = "allow"
    source_peer: str = ""
    ttl: float = 0


class _RemoveRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    port: int
    protocol: str = "tcp"
    source_peer: str = ""
