"""Core's own plugins, registered through the same hooks as any other plugin.

Each module here is listed in :data:`tunnelmesh._manager.BUILTIN_PLUGINS` and is registered
under the plugin name ``builtin.<module>`` (for example ``builtin.dns``).
"""
