"""Building the plugin manager: entry points, block and allow lists, and the registry.

Plugins are distributions that declare an entry point in the group ``tunnelmesh``::

    [project.entry-points.tunnelmesh]
    udp = "tunnelmesh_udp.plugin"

The entry point's name is the feature's one word; it is also the extra that installs it
(``pip install 'tunnelmesh[udp]'``), which is what a failed import tells the user to run.

Environment:
    TUNNELMESH_DISABLE_PLUGINS: comma-separated plugin names that are not loaded.
    TUNNELMESH_LOAD_PLUGINS: when set, only these plugins (comma-separated) are loaded.
    TUNNELMESH_TRACE_PLUGINS: when set to 1, every hook call is logged at DEBUG level.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from tunnelmesh import PROJECT_NAME, hookspecs
from tunnelmesh.errors import PluginError
from tunnelmesh.registry import Registry

__all__ = ["PluginInfo", "PluginManager", "make_plugin_manager"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tunnelmesh"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "tunnelmesh._builtin.state",
    "tunnelmesh._builtin.filter",
    "tunnelmesh._builtin.dns",
    "tunnelmesh._builtin.metrics",
    "tunnelmesh._builtin.systemd",
    "tunnelmesh._builtin.benchmark",
)


@dataclass
class PluginInfo:
    """One plugin as ``tunnelmesh plugins`` shows it.

    Attributes:
        name: the entry point name (the feature word), or the module name for built-ins.
        dist: the distribution that ships it.
        version: that distribution's version.
        status: ``loaded``, ``blocked`` (by the environment) or ``failed`` (import error).
        hooks: names of the hooks it implements.
        error: why it failed, with the command that installs what it needs.
    """

    name: str
    dist: str
    version: str
    status: str = "loaded"
    hooks: list[str] = field(default_factory=list)
    error: str = ""


def _split_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


REGISTRY_KINDS = (
    "config_sections",
    "transports",
    "filters",
    "dns_backends",
    "storage",
    "proxy_rules",
    "admin_panels",
    "state_backends",
)
"""What :meth:`PluginManager.build_registry` can build, in the order the hooks run."""


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers what it loaded, blocked and failed to load."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    def load_entry_points(self, eps: Iterable[EntryPoint] | None = None) -> None:
        """Load every plugin of the ``tunnelmesh`` entry-point group.

        Raises:
            PluginError: two distributions declare a plugin of the same name.
        """
        if eps is None:
            eps = entry_points(group=ENTRY_POINT_GROUP)
        disabled = _split_env("TUNNELMESH_DISABLE_PLUGINS") or set()
        allowed = _split_env("TUNNELMESH_LOAD_PLUGINS")
        seen: dict[str, str] = {}
        for ep in sorted(eps, key=lambda e: e.name):
            dist_name = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in seen and seen[ep.name] != dist_name:
                raise PluginError(
                    f"plugin name {ep.name!r} is claimed by two distributions: "
                    f"{seen[ep.name]!r} and {dist_name!r}; uninstall one of them"
                )
            seen[ep.name] = dist_name
            info = PluginInfo(ep.name, dist_name, version)
            self.infos[ep.name] = info
            if ep.name in disabled or (allowed is not None and ep.name not in allowed):
                info.status = "blocked"
                self.set_blocked(ep.name)
                continue
            try:
                plugin = ep.load()
            except ImportError as exc:
                info.status = "failed"
                info.error = (
                    f"cannot import {ep.value!r}: {exc}; install it with "
                    f"pip install 'tunnelmesh[{ep.name}]'"
                )
                log.warning("plugin %s not loaded: %s", ep.name, info.error)
                continue
            self.register(plugin, name=ep.name)
            info.hooks = self.hook_names(ep.name)

    def load_builtins(self, modules: Iterable[str] = BUILTIN_PLUGINS) -> None:
        """Register core's own plugins, which use the same hooks as any other.

        Each module is registered as ``builtin.<last part of its name>``.
        """
        from tunnelmesh import __version__

        for modname in modules:
            name = "builtin." + modname.rpartition(".")[2]
            self.register(importlib.import_module(modname), name=name)
            self.infos[name] = PluginInfo(name, "tunnelmesh", __version__)
            self.infos[name].hooks = self.hook_names(name)

    def hook_names(self, plugin_name: str) -> list[str]:
        plugin = self.get_plugin(plugin_name)
        if plugin is None:
            return []
        return sorted(caller.name for caller in self.get_hookcallers(plugin) or [])

    def call_each(self, hook_name: str, **kwargs: Any) -> None:
        """Call one hook's implementations one plugin at a time.

        Used for the registration hooks so that the registry knows which plugin is registering
        (a duplicate name is reported with both plugins' names). Plugins are called in
        registration order, built-ins first, then installed plugins sorted by entry-point name,
        so what a built-in registers (core's filters and DNS backends, say) comes first.
        """
        caller = getattr(self.hook, hook_name)
        registry = kwargs.get("registry")
        for impl in caller.get_hookimpls():  # registration order: built-ins, then by name
            if isinstance(registry, Registry):
                registry.current_plugin = impl.plugin_name
            args = {name: kwargs[name] for name in impl.argnames}
            impl.function(**args)
        if isinstance(registry, Registry):
            registry.current_plugin = "?"

    def build_registry(self, *kinds: str) -> Registry:
        """Run the ``tunnelmesh_register_*`` hooks that take a registry; return the result.

        Args:
            kinds: only these registries (``"proxy_rules"``, ``"transports"``, ...; the hook
                names without ``tunnelmesh_register_``); none: all of them. Plugins import
                what they register inside their hooks, so a process that needs only proxy
                rules does not import every transport.

        Raises:
            ValueError: an unknown kind.
        """
        unknown = set(kinds) - set(REGISTRY_KINDS)
        if unknown:
            raise ValueError(f"no registry kind {sorted(unknown)}; known: {REGISTRY_KINDS}")
        registry = Registry()
        for kind in REGISTRY_KINDS:
            if not kinds or kind in kinds:
                self.call_each(f"tunnelmesh_register_{kind}", registry=registry)
        return registry


def make_plugin_manager(*, entry_points: bool = True, builtins: bool = True) -> PluginManager:
    """Create a plugin manager with core's specs, built-in plugins and installed plugins.

    Args:
        entry_points: load the installed distributions' plugins.
        builtins: register core's own plugins.

    Raises:
        PluginError: two installed distributions claim one plugin name.
    """
    pm = PluginManager()
    if builtins:
        pm.load_builtins()
    if entry_points:
        pm.load_entry_points()
    pm.check_pending()
    if os.environ.get("TUNNELMESH_TRACE_PLUGINS") == "1":
        pm.trace.root.setwriter(log.debug)
        pm.enable_tracing()
    return pm
