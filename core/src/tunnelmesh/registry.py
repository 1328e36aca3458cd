"""The typed registry handed to the ``tunnelmesh_register_*`` hooks.

Each kind of plugin class lives in its own namespace; two classes that claim one name raise a
:class:`~tunnelmesh.errors.PluginError` that names both plugins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tunnelmesh.abc import DnsBackend, PacketFilter, ProxyRule, Storage, Transport
from tunnelmesh.errors import PluginError

if TYPE_CHECKING:
    from tunnelmesh.coordinator.store import StateBackend

__all__ = ["AdminPanel", "ConfigSection", "Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class ConfigSection:
    """A config section added by a plugin: ``name:`` in a config file decodes to ``type``."""

    name: str
    type: Any
    server: bool
    peer: bool
    plugin: str


_SLUG = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


@dataclass(frozen=True)
class AdminPanel:
    """A page a plugin adds to the admin dashboard: a table of rows from one of its API routes.

    Data only, no markup: the dashboard draws the table and fetches the rows from ``api`` as the
    browser's peer, through the dashboard's copy of the coordinator API, so the route's own
    policy decides who sees them (a member gets the route's 403 on an admin-only panel).

    Args:
        slug: the page's URL, ``/panels/<slug>`` (a DNS label, 1 to 32 characters).
        title: the page's title and navigation entry.
        api: a ``GET`` route of the coordinator API that the plugin adds
            (``tunnelmesh_register_coordinator_routes``), e.g. ``/api/v1/wg/clients``.
        list_key: the key of the route's JSON object that holds the list of rows.
        columns: ``(row key, column header)`` pairs, in order.

    Raises:
        PluginError: a slug that is no DNS label, an ``api`` outside ``/api/``, no columns.
    """

    slug: str
    title: str
    api: str
    list_key: str
    columns: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not _SLUG.match(self.slug):
            raise PluginError(f"admin panel slug {self.slug!r} is not a DNS label")
        if not self.api.startswith("/api/") or "{" in self.api:
            raise PluginError(f"admin panel {self.slug}: api {self.api!r} is no fixed /api/ path")
        if not self.title or not self.list_key or not self.columns:
            raise PluginError(f"admin panel {self.slug}: needs a title, list_key and columns")


@dataclass
class Registry:
    """What the plugins registered, by kind and name.

    ``current_plugin`` is set by the plugin manager while it calls each plugin's hook, so that
    a duplicate name can be reported with both plugins' names.
    """

    current_plugin: str = "?"
    transports: dict[str, type[Transport]] = field(default_factory=dict)
    filters: dict[str, type[PacketFilter]] = field(default_factory=dict)
    dns_backends: dict[str, type[DnsBackend]] = field(default_factory=dict)
    storage: dict[str, type[Storage]] = field(default_factory=dict)
    proxy_rules: dict[str, type[ProxyRule]] = field(default_factory=dict)
    state_backends: dict[str, type[StateBackend]] = field(default_factory=dict)
    config_sections: dict[str, ConfigSection] = field(default_factory=dict)
    admin_panels: dict[str, AdminPanel] = field(default_factory=dict)
    _owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def _add(self, kind: str, table: dict[str, Any], name: str, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.current_plugin!r} registered a {kind} without a name")
        owner = self._owners.get((kind, name))
        if owner is not None and table[name] is not value:
            raise PluginError(
                f"{kind} name {name!r} is claimed by two plugins: {owner!r} and "
                f"{self.current_plugin!r}"
            )
        self._owners[(kind, name)] = self.current_plugin
        table[name] = value

    def add_transport(self, cls: type[Transport]) -> None:
        """Register a :class:`~tunnelmesh.abc.Transport` class under ``cls.name``."""
        self._add("transport", self.transports, getattr(cls, "name", ""), cls)

    def add_filter(self, cls: type[PacketFilter]) -> None:
        """Register a :class:`~tunnelmesh.abc.PacketFilter` class under ``cls.name``."""
        self._add("filter", self.filters, getattr(cls, "name", ""), cls)

    def add_dns_backend(self, cls: type[DnsBackend]) -> None:
        """Register a :class:`~tunnelmesh.abc.DnsBackend` class under ``cls.name``."""
        self._add("dns backend", self.dns_backends, getattr(cls, "name", ""), cls)

    def add_storage(self, cls: type[Storage]) -> None:
        """Register a :class:`~tunnelmesh.abc.Storage` class under ``cls.name``."""
        self._add("storage", self.storage, getattr(cls, "name", ""), cls)

    def add_proxy_rule(self, cls: type[ProxyRule]) -> None:
        """Register a :class:`~tunnelmesh.abc.ProxyRule` class under ``cls.name``."""
        self._add("proxy rule", self.proxy_rules, getattr(cls, "name", ""), cls)

    def add_state_backend(self, cls: type[StateBackend]) -> None:
        """Register a coordinator state backend
        (:class:`~tunnelmesh.coordinator.store.StateBackend`) under ``cls.name``."""
        self._add("state backend", self.state_backends, getattr(cls, "name", ""), cls)

    def add_config_section(
        self, name: str, struct_type: Any, *, server: bool = True, peer: bool = True
    ) -> None:
        """Register a config section: the top-level key ``name`` decodes into ``struct_type``.

        Args:
            name: the top-level YAML key.
            struct_type: a msgspec Struct type (defaults make the section optional).
            server: the key is valid in the server config.
            peer: the key is valid in the peer config.
        """
        section = ConfigSection(name, struct_type, server, peer, self.current_plugin)
        self._add("config section", self.config_sections, name, section)

    def add_admin_panel(self, panel: AdminPanel) -> None:
        """Register a page of the admin dashboard under ``panel.slug``."""
        if not isinstance(panel, AdminPanel):
            raise PluginError(f"plugin {self.current_plugin!r} registered a non-AdminPanel panel")
        self._add("admin panel", self.admin_panels, panel.slug, panel)

    def provided_by(self, plugin: str) -> dict[str, list[str]]:
        """What one plugin registered: kind (as in error messages) to sorted names."""
        out: dict[str, list[str]] = {}
        for (kind, name), owner in sorted(self._owners.items()):
            if owner == plugin:
                out.setdefault(kind, []).append(name)
        return out

    def names(self) -> dict[str, list[str]]:
        """Every registered name by kind, for ``tunnelmesh plugins``."""
        return {
            "transports": sorted(self.transports),
            "filters": sorted(self.filters),
            "dns_backends": sorted(self.dns_backends),
            "storage": sorted(self.storage),
            "proxy_rules": sorted(self.proxy_rules),
            "state_backends": sorted(self.state_backends),
            "config_sections": sorted(self.config_sections),
            "admin_panels": sorted(self.admin_panels),
        }
