"""The plugin manager, for plugins: build the registries outside a running node.

A command or a test harness of a plugin that needs the registries (the proxy's rule classes, a
coordinator with only one plugin) builds a manager with :func:`make_plugin_manager` and asks
:meth:`PluginManager.build_registry` for the kinds it needs. This is the public name of
``tunnelmesh._manager`` (see docs/api.md).
"""

from __future__ import annotations

from tunnelmesh._manager import PluginInfo, PluginManager, make_plugin_manager

__all__ = ["PluginInfo", "PluginManager", "make_plugin_manager"]
