"""Built-in plugin ``builtin.metrics``: a Prometheus ``/metrics`` server for every node and
coordinator (``metrics:`` in their config; see docs/metrics.md).

A node's server starts when the node is up (``tunnelmesh_node_started``: the mesh IP it
listens on exists then) and stops with it; the coordinator's starts and stops with its HTTPS
application (``tunnelmesh_register_coordinator_routes`` adds startup/cleanup callbacks). A
server that cannot listen logs one warning; the node or coordinator runs on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

from tunnelmesh import hookimpl

log = logging.getLogger(__name__)

_servers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_tasks: set[asyncio.Task[None]] = set()


async def _start(owner: Any, server: Any, what: str) -> None:
    try:
        await server.start()
    except OSError as exc:
        log.warning("%s metrics not served on %s:%s: %s", what, server.host, server.port, exc)
        return
    _servers[owner] = server
    log.info("%s metrics on %s", what, server.url)


@hookimpl
def tunnelmesh_node_started(node: Any) -> None:
    from tunnelmesh.metrics import NODE_PORT, MetricsServer, NodeCollector

    cfg = getattr(node.config, "metrics", None)
    if cfg is None or not cfg.enabled:
        return
    server = MetricsServer(
        NodeCollector(node), listen=cfg.listen or node.mesh_ip, default_port=NODE_PORT
    )
    task = asyncio.get_running_loop().create_task(_start(node, server, "node"))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


@hookimpl
def tunnelmesh_node_stopping(node: Any) -> None:
    server = _servers.pop(node, None)
    if server is not None:
        task = asyncio.get_running_loop().create_task(server.aclose())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)


@hookimpl
def tunnelmesh_register_coordinator_routes(app: Any, coordinator: Any) -> None:
    from tunnelmesh.metrics import COORDINATOR_PORT, CoordinatorCollector, MetricsServer

    cfg = getattr(coordinator.config, "metrics", None)
    if cfg is None or not cfg.enabled:
        return
    server = MetricsServer(
        CoordinatorCollector(coordinator),
        listen=cfg.listen or "127.0.0.1",
        default_port=COORDINATOR_PORT,
    )

    async def on_startup(app: Any) -> None:
        await _start(coordinator, server, "coordinator")

    async def on_cleanup(app: Any) -> None:
        if _servers.pop(coordinator, None) is not None:
            with contextlib.suppress(Exception):
                await server.aclose()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
