"""Every hook that tunnelmesh calls, in sections by lifecycle.

Hooks run on the control plane only. They hand back objects (classes registered in a
:class:`~tunnelmesh.registry.Registry`, click commands, HTTP routes) whose methods the data plane
then calls directly: a pluggy call costs microseconds, so no hook is ever called per packet.

Rules for plugin authors:

* implement a hook with ``@tunnelmesh.hookimpl`` on a function of the same name;
* an implementation may accept a subset of the arguments, so specs only ever grow;
* ``tunnelmesh_register_*`` hooks are called once at start-up with a typed registry;
* ``tunnelmesh_*_started`` / ``tunnelmesh_*_stopping`` are notifications: their result is ignored.

``docs/hooks.md`` has one heading per hook below; a test keeps the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    from aiohttp import web

    from tunnelmesh.abc import CoordinatorView, NodeView
    from tunnelmesh.registry import Registry

hookspec = pluggy.HookspecMarker("tunnelmesh")


# --- registration: called once when the plugin manager is built --------------------------------


@hookspec
def tunnelmesh_register_transports(registry: Registry) -> None:
    """Register transport classes (:class:`tunnelmesh.abc.Transport`).

    Called once, when a node starts, before any link is opened.

    :param registry: call ``registry.add_transport(cls)`` for each transport class.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_register_filters(registry: Registry) -> None:
    """Register packet filter classes (:class:`tunnelmesh.abc.PacketFilter`).

    Called once, when a node starts. The forwarder calls ``verdicts()`` of the instances once per
    batch of packets.

    :param registry: call ``registry.add_filter(cls)`` for each filter class.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_register_dns_backends(registry: Registry) -> None:
    """Register DNS backend classes (:class:`tunnelmesh.abc.DnsBackend`).

    Called once, when the built-in resolver starts.

    :param registry: call ``registry.add_dns_backend(cls)`` for each backend class.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_register_storage(registry: Registry) -> None:
    """Register object storage backends (:class:`tunnelmesh.abc.Storage`).

    Called once, when the S3 service starts; the configured backend is then chosen by name.

    :param registry: call ``registry.add_storage(cls)`` for each backend class.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_register_state_backends(registry: Registry) -> None:
    """Register coordinator state backends (classes implementing
    :class:`tunnelmesh.coordinator.store.StateBackend`).

    Called once, when the coordinator starts; ``server.yaml``'s ``state.backend`` then chooses
    one by name (``sqlite``, core's, is the default; ``postgres`` comes with
    ``tunnelmesh[postgres]``).

    :param registry: call ``registry.add_state_backend(cls)`` for each backend class.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_register_proxy_rules(registry: Registry) -> None:
    """Register reverse-proxy routing rules (:class:`tunnelmesh.abc.ProxyRule`).

    Called once, when the proxy starts. Rules are asked in registration order; the first one
    that returns an upstream wins.

    :param registry: call ``registry.add_proxy_rule(cls)`` for each rule class.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_register_config_sections(registry: Registry) -> None:
    """Register config sections (msgspec Struct types) under a top-level key.

    Called once, when a config file is loaded. A section named ``s3`` makes the
    ``s3:`` key of the server and peer config files decode into that Struct, with errors that
    name the file and the key.

    :param registry: call ``registry.add_config_section(name, struct_type, server=..., peer=...)``.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_register_admin_panels(registry: Registry) -> None:
    """Add pages to the admin dashboard (``tunnelmesh-admin``): tables of a plugin's API rows.

    Called once, when the dashboard starts (only where it is installed and enabled). A panel is
    data (:class:`tunnelmesh.registry.AdminPanel`: slug, title, the plugin's own ``GET`` API
    route, the JSON key of its rows, the columns), never markup: the dashboard draws it and
    fetches the rows as the browser's peer, so the route's policy decides who sees them. A
    plugin never imports the dashboard.

    :param registry: call ``registry.add_admin_panel(AdminPanel(...))`` for each page.
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``tunnelmesh`` command line.

    Called once, when the CLI is built. Every option should have a ``TUNNELMESH_*`` envvar.
    Name commands by import path with
    ``tunnelmesh.cli.lazy.add_lazy_command(cli, name, "module:attribute", one_line_help)``:
    the module is then imported only when the command is used, not by ``tunnelmesh --help``
    or by other commands. ``cli.add_command(cmd)`` works too, but imports the command at start.

    :param cli: the root group (a :class:`tunnelmesh.cli.lazy.LazyGroup`).
    :return: ignored.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1 commands by import path (``add_lazy_command``).
    """


@hookspec
def tunnelmesh_register_coordinator_routes(
    app: web.Application, coordinator: CoordinatorView
) -> None:
    """Add HTTP (and WebSocket) routes to the coordination server.

    Called once, when the coordinator builds its web application, before it starts serving.
    Every handler declares who may call it with ``@tunnelmesh.route_policy(Policy....)``; the
    coordinator refuses to start when a route has no policy, and checks the caller against it
    before the handler runs (``tunnelmesh.coordinator.api.authenticated_peer(request)`` then
    returns the calling peer).

    :param app: the coordinator's ``aiohttp.web.Application``; add routes to ``app.router``.
    :param coordinator: the running coordinator as a :class:`tunnelmesh.abc.CoordinatorView`:
        its configuration, data folder, domain, CA and peer registry (read only).
    :return: ignored.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
       Each route must declare a policy (issue 11).
    """


# --- notifications ----------------------------------------------------------------------------


@hookspec
def tunnelmesh_node_started(node: NodeView) -> None:
    """Notification: a mesh node finished starting (TUN up, transports listening).

    :param node: the running node as a :class:`tunnelmesh.abc.NodeView` (name, mesh IP,
        configuration).
    :return: ignored.

    .. versionadded:: 0.1
    """


@hookspec
def tunnelmesh_node_stopping(node: NodeView) -> None:
    """Notification: a mesh node is about to stop; release what the plugin holds.

    :param node: the running node as a :class:`tunnelmesh.abc.NodeView` (name, mesh IP,
        configuration).
    :return: ignored.

    .. versionadded:: 0.1
    """
