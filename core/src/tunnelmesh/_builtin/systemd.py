"""Built-in plugin ``builtin.systemd``: a node under systemd (``Type=notify``) says when it is
ready and keeps the watchdog fed (see docs/service.md).

``READY=1`` is sent when the node is up, which ``tunnelmesh join`` reaches only after it
registered with the coordinator (or resumed a registered context) and the TUN device has its
address: ``tunnelmesh_node_started``. ``WATCHDOG=1`` pings follow every ``WATCHDOG_USEC / 2``
while the forwarder reads the TUN device and the event loop turns; ``STOPPING=1`` on stop.
Without ``NOTIFY_SOCKET`` nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from tunnelmesh import hookimpl

_watchdogs: weakref.WeakKeyDictionary[Any, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def forwarding(node: Any) -> bool:
    """The node's forwarder is reading its TUN device."""
    fwd = node.forwarder
    return fwd is not None and getattr(fwd, "_loop", None) is not None


@hookimpl
def tunnelmesh_node_started(node: Any) -> None:
    from tunnelmesh.service.sdnotify import notify, watchdog, watchdog_interval

    if not notify("READY=1", f"STATUS=node {node.name} up, mesh IP {node.mesh_ip}"):
        return
    if watchdog_interval() is not None:
        task = asyncio.get_running_loop().create_task(watchdog(lambda: forwarding(node)))
        _watchdogs[node] = task


@hookimpl
def tunnelmesh_node_stopping(node: Any) -> None:
    from tunnelmesh.service.sdnotify import notify

    task = _watchdogs.pop(node, None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(Exception):
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
    notify("STOPPING=1", f"STATUS=node {node.name} stopping")
