"""The coordinator layer of every peer's packet filter: server.yaml's rules and the API's.

Two sources make up the one list the push channel sends (``FilterRules``, docs/filter.md):

* ``filter.rules`` of server.yaml (*config* rules): changed by editing the file and sending the
  coordinator SIGHUP; the API cannot change them.
* rules an admin adds at run time (*api* rules: ``POST /api/v1/filter/rules``,
  ``tunnelmesh filter coordinator add``), optionally *temporary* (a ``ttl``): kept in the state
  store (meta key ``filter_rules``), so a restart keeps them; the coordinator removes a
  temporary rule when it expires and pushes the new list.

Inside the coordinator layer a rule is identified by ``(protocol, port, source_peer)``, as in
every layer of the filter. The API refuses to add or remove a key that server.yaml holds (409
``config_rule``). When a reload brings into server.yaml a key an API rule already has, the
server.yaml rule is the one pushed while it is there; the API rule is kept, listed as
``shadowed``, and applies again if the file drops that key. Across layers nothing changes:
a deny anywhere beats an allow anywhere.

Every pushed rule carries its ``expires`` (unix time, 0 = never), so a node also drops an
expired rule by itself while the coordinator is away.

A change is written to the store first; only when that succeeded does the in-memory list
change and the push go out (a refused or failed change changes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Literal

import msgspec

from tunnelmesh.config import FilterConfig
from tunnelmesh.control.messages import FilterRules, PolicyRule, encode
from tunnelmesh.coordinator.store import StateStore
from tunnelmesh.errors import CoordinatorError, StateStoreError
from tunnelmesh.filter.rules import MAX_TTL

__all__ = ["MAX_API_RULES", "ApiRule", "FilterBook", "FilterBookError", "RuleView"]

log = logging.getLogger(__name__)

META_KEY = "filter_rules"
MAX_API_RULES = 1024
"""Rules the API may hold (each is pushed to every peer)."""

RuleKey = tuple[str, int, str]


class FilterBookError(CoordinatorError):
    """A refused change: ``status`` is the HTTP status, ``error`` a short code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


class ApiRule(msgspec.Struct, frozen=True, kw_only=True):
    """A coordinator rule added through the API (as stored)."""

    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    action: Literal["allow", "deny"] = "allow"
    source_peer: str = ""  # a peer ID, "" = any peer
    expires: float = 0.0  # unix time, 0 = never
    created_at: float = 0.0
    created_by: str = ""  # the admin's peer ID

    @property
    def key(self) -> RuleKey:
        return (self.protocol, self.port, self.source_peer)

    def policy(self) -> PolicyRule:
        return PolicyRule(
            port=self.port,
            protocol=self.protocol,
            action=self.action,
            source_peer=self.source_peer,
            expires=self.expires,
        )


class RuleView(msgspec.Struct, kw_only=True):
    """One rule of the coordinator layer as ``GET /api/v1/filter/rules`` lists it."""

    port: int
    protocol: str
    action: str
    source_peer: str
    source_name: str
    origin: Literal["config", "api"]
    expires: float = 0.0
    created_at: float = 0.0
    created_by: str = ""
    shadowed: bool = False


def _key(rule: PolicyRule) -> RuleKey:
    return (rule.protocol, rule.port, rule.source_peer)


class FilterBook:
    """server.yaml's rules and the API's, and the list pushed to the peers.

    Args:
        store: where API rules are kept (meta key ``filter_rules``).
        config: server.yaml's ``filter:`` section.
        clock: wall-clock seconds.
        changed: called after every change of the pushed list (the coordinator broadcasts).
    """

    def __init__(
        self,
        store: StateStore,
        config: FilterConfig,
        *,
        clock: Callable[[], float],
        changed: Callable[[], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self._changed = changed
        self._config = self._from_config(config)
        self._api: dict[RuleKey, ApiRule] = {}
        self._lock = asyncio.Lock()
        self.expired = 0
        """Temporary rules removed at their expiry (metrics)."""

    @staticmethod
    def _from_config(config: FilterConfig) -> list[PolicyRule]:
        return [
            PolicyRule(port=r.port, protocol=r.protocol, action=r.action, source_peer=r.source_peer)
            for r in config.rules
        ]

    async def load(self) -> None:
        """Read the API rules from the store (those that expired meanwhile are dropped)."""
        blob = await self.store.get_meta(META_KEY)
        if blob is None:
            return
        try:
            rules = msgspec.json.decode(blob, type=list[ApiRule])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("the stored coordinator filter rules are unreadable, ignored: %s", exc)
            return
        now = self.clock()
        self._api = {r.key: r for r in rules if not r.expires or r.expires > now}

    # --- what is pushed ----------------------------------------------------------------------

    def rules(self) -> list[PolicyRule]:
        """The coordinator layer as pushed: server.yaml's rules, then the API's (unexpired,
        not shadowed by a server.yaml rule with the same key)."""
        now = self.clock()
        config_keys = {_key(r) for r in self._config}
        api = [
            r.policy()
            for k, r in self._api.items()
            if k not in config_keys and (not r.expires or r.expires > now)
        ]
        return self._config + api

    def message(self) -> bytes:
        """The push-channel message carrying the coordinator layer."""
        return encode(FilterRules(rules=self.rules()))

    def set_config(self, config: FilterConfig) -> bool:
        """Take server.yaml's rules (a reload); True (and pushed) when the list changed."""
        before = self.rules()
        self._config = self._from_config(config)
        if self.rules() == before:
            return False
        self._changed()
        return True

    # --- the API -----------------------------------------------------------------------------

    def listing(self, name_of: Callable[[str], str | None]) -> list[RuleView]:
        """Every rule, server.yaml's first, with the source peer's current name."""
        now = self.clock()
        config_keys = {_key(r) for r in self._config}
        out = [
            RuleView(
                port=r.port,
                protocol=r.protocol,
                action=r.action,
                source_peer=r.source_peer,
                source_name=(name_of(r.source_peer) or "") if r.source_peer else "",
                origin="config",
            )
            for r in self._config
        ]
        for k, r in sorted(self._api.items()):
            if r.expires and r.expires <= now:
                continue
            out.append(
                RuleView(
                    port=r.port,
                    protocol=r.protocol,
                    action=r.action,
                    source_peer=r.source_peer,
                    source_name=(name_of(r.source_peer) or "") if r.source_peer else "",
                    origin="api",
                    expires=r.expires,
                    created_at=r.created_at,
                    created_by=r.created_by,
                    shadowed=k in config_keys,
                )
            )
        return out

    async def add(
        self,
        *,
        port: int,
        protocol: str,
        action: str,
        source_peer: str,
        ttl: float,
        by: str,
    ) -> ApiRule:
        """Add an API rule (replacing the API rule with the same key); ``ttl`` 0 keeps it.

        ``source_peer`` must already be a peer ID (or "").

        Raises:
            FilterBookError: 400 a bad field, 409 server.yaml holds that key, 507 too many
                rules, 503 the store cannot save it.
        """
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
            raise FilterBookError(400, "malformed", "ttl must be a number of seconds")
        if not 0 <= ttl <= MAX_TTL:
            raise FilterBookError(
                400, "malformed", f"ttl must be between 0 and {MAX_TTL} seconds (one year)"
            )
        now = self.clock()
        try:
            rule = msgspec.convert(
                {
                    "port": port,
                    "protocol": protocol,
                    "action": action,
                    "source_peer": source_peer,
                    "expires": now + ttl if ttl else 0.0,
                    "created_at": now,
                    "created_by": by,
                },
                ApiRule,
            )
        except msgspec.ValidationError as exc:
            raise FilterBookError(400, "malformed", f"invalid rule: {exc}") from None
        if not 1 <= rule.port <= 65535:
            raise FilterBookError(400, "malformed", f"port must be 1 to 65535, got {rule.port}")
        if rule.key in {_key(r) for r in self._config}:
            raise FilterBookError(409, "config_rule", self._config_says(rule.key))
        async with self._lock:
            api = dict(self._api)
            api[rule.key] = rule
            if len(api) > MAX_API_RULES:
                raise FilterBookError(
                    507, "too_many_rules", f"at most {MAX_API_RULES} coordinator rules"
                )
            await self._save(api)
        log.info(
            "coordinator filter rule added by %s: %s %s/%d%s%s",
            by,
            rule.action,
            rule.protocol,
            rule.port,
            f" from {rule.source_peer}" if rule.source_peer else "",
            f" for {ttl:.0f} s" if ttl else "",
        )
        self._changed()
        return rule

    async def remove(self, protocol: str, port: int, source_peer: str) -> ApiRule:
        """Remove the API rule with this key.

        Raises:
            FilterBookError: 404 no such API rule, 409 it is a server.yaml rule, 503 store.
        """
        key = (protocol, port, source_peer)
        async with self._lock:
            rule = self._api.get(key)
            if rule is None or (rule.expires and rule.expires <= self.clock()):
                if key in {_key(r) for r in self._config}:
                    raise FilterBookError(409, "config_rule", self._config_says(key))
                who = f" from {source_peer}" if source_peer else ""
                raise FilterBookError(
                    404, "no_such_rule", f"no coordinator rule for {protocol} port {port}{who}"
                )
            api = dict(self._api)
            del api[key]
            await self._save(api)
        log.info("coordinator filter rule removed: %s/%d", protocol, port)
        self._changed()
        return rule

    async def expire(self) -> bool:
        """Remove the API rules whose time is up (the coordinator's ticker calls this);
        True when some were removed (and the new list pushed)."""
        now = self.clock()
        if not any(r.expires and r.expires <= now for r in self._api.values()):
            return False
        async with self._lock:
            api = {k: r for k, r in self._api.items() if not r.expires or r.expires > now}
            gone = len(self._api) - len(api)
            if not gone:
                return False
            try:
                await self._save(api)
            except FilterBookError:
                return False  # kept for the next tick; peers drop them by their expires
        self.expired += gone
        log.info("%d temporary coordinator filter rule(s) expired", gone)
        self._changed()
        return True

    async def _save(self, api: dict[RuleKey, ApiRule]) -> None:
        """Write ``api`` to the store, then make it the current list (under the lock)."""
        blob = msgspec.json.encode(sorted(api.values(), key=lambda r: r.key))
        try:
            await self.store.put_meta(META_KEY, blob)
        except StateStoreError as exc:
            log.error("coordinator filter rules not saved: %s", exc)
            raise FilterBookError(
                503, "store_unavailable", "the coordinator cannot save state"
            ) from None
        self._api = api

    @staticmethod
    def _config_says(key: RuleKey) -> str:
        protocol, port, source = key
        who = f" from {source}" if source else ""
        return (
            f"{protocol} port {port}{who} is a rule of server.yaml's filter.rules: change it "
            "there and reload the coordinator (SIGHUP)"
        )
