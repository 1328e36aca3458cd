"""The typed registry handed to the ``tunnelmesh_register_*`` hooks.

Each kind of plugin class lives in its own namespace; two classes that claim one name raise a
:class:`~tunnelmesh.errors.PluginError` that names both plugins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from tunnelmesh.abc import DnsBackend, PacketFilter, ProxyRule, Storage, Transport
from tunnelmesh.errors import PluginError

__all__ = ["ConfigSection", "Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class ConfigSection:
    """A config section added by a plugin: ``name:`` in a config file decodes to ``type``."""

    name: str
    type: Any
    server: bool
    peer: bool
    plugin: str


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
    config_sections: dict[str, ConfigSection] = field(default_factory=dict)
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
            "config_sections": sorted(self.config_sections),
        }
