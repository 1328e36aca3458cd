"""Built-in plugin ``builtin.benchmark``: the benchmark listener on the node's mesh IP while
the node runs, when ``benchmark: {enabled: true}`` (see docs/benchmark.md)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from tunnelmesh import hookimpl

log = logging.getLogger(__name__)

_servers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_tasks: set[asyncio.Task[None]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _start(node: Any, server: Any) -> None:
    try:
        await server.start()
    except OSError as exc:
        log.warning("benchmark listener not started on %s:%s: %s", server.host, server.port, exc)
        return
    _servers[node] = server
    node.notify(f"benchmark listener on {server.host}:{server.port} (tcp and udp)")


@hookimpl
def tunnelmesh_node_started(node: Any) -> None:
    from tunnelmesh.benchmark import BenchmarkServer

    cfg = getattr(node.config, "benchmark", None)
    if cfg is None or not cfg.enabled:
        return
    _spawn(_start(node, BenchmarkServer(node.mesh_ip, cfg.port)))


@hookimpl
def tunnelmesh_node_stopping(node: Any) -> None:
    server = _servers.pop(node, None)
    if server is not None:
        _spawn(server.aclose())
