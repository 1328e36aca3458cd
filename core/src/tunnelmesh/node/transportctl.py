"""The transport order set through the coordinator, applied by the node at run time.

An admin (or the peer itself) sets a node's transport order, or forces one transport, with
``PUT /api/v1/peers/{name}/transport`` (``tunnelmesh peers transport``, the dashboard; see
:mod:`tunnelmesh.coordinator.transportbook`). The coordinator pushes it to that node as a
``transport_order`` message; :class:`TransportControl` hands it to the path selection
(:meth:`PeerSync.set_order <tunnelmesh.node.peers.PeerSync.set_order>`), which re-selects
every peer's path at once, without a restart. An empty order gives the node its own order
(peer.yaml's ``transports.order``) back. Names of transports this node does not run are left
out with a warning; when none is left the order is refused and the node keeps its own.

Whenever a peer's active transport changes, the node sends a heartbeat soon (after 1 s, then
at most one every 4 s, within the coordinator's heartbeat allowance) so the coordinator, the
dashboard and ``tunnelmesh peers`` show the transport in use within seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tunnelmesh.control.peertable import PeerChange, TransportOrderChanged
from tunnelmesh.node.peers import PeerSync

__all__ = ["TransportControl"]

log = logging.getLogger(__name__)

REPORT_DELAY = 1.0
"""Seconds after a path change before the heartbeat that reports it."""
REPORT_SPACING = 4.0
"""Seconds at least between two such early heartbeats."""


class TransportControl:
    """Follows the pushed transport order and reports path changes early.

    Args:
        sync: the node's path selection.
        client: the node's ``ControlClient`` (its peer table, callbacks and heartbeat).
        notify: progress lines.
    """

    def __init__(self, sync: PeerSync, client: Any, notify: Callable[[str], None]) -> None:
        self.sync = sync
        self.client = client
        self.notify = notify
        self.own_order = list(sync.transport_order)
        """The node's own order (peer.yaml), restored when the coordinator clears its own."""
        self.applied: tuple[str, ...] = ()
        """The order applied from the coordinator (empty: the node's own)."""
        self._timer: asyncio.TimerHandle | None = None
        self._last_report = -REPORT_SPACING
        self._closed = False

    def start(self) -> None:
        self.sync.on_path_change = self.path_changed
        if self.client.table.transport_order:
            self.apply(self.client.table.transport_order)
        self.client.add_callback(self._on_change)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_change(self, change: PeerChange) -> None:
        if isinstance(change, TransportOrderChanged) and not self._closed:
            self.apply(change.order)

    def apply(self, order: tuple[str, ...]) -> None:
        """Use ``order`` (from the coordinator; empty: the node's own) for every peer."""
        running = {t.name for t in self.sync.transports}
        wanted = [n for n in order if n in running]
        missing = [n for n in order if n not in running]
        if missing:
            log.warning(
                "transport order from the coordinator names transport(s) this node does not "
                "run: %s",
                ", ".join(missing),
            )
        if order and not wanted:
            self.notify(
                f"transport order {','.join(order)} from the coordinator refused: none of "
                f"these transports runs here; keeping {','.join(self.sync.transport_order)}"
            )
            return
        self.sync.set_order(wanted or self.own_order)
        self.applied = tuple(wanted)
        source = "set through the coordinator" if wanted else "this node's own"
        self.notify(f"transport order: {','.join(self.sync.transport_order)} ({source})")
        self.path_changed()

    def path_changed(self) -> None:
        """A peer's active transport changed (or may change): heartbeat soon."""
        if self._timer is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        delay = max(REPORT_DELAY, self._last_report + REPORT_SPACING - loop.time())
        self._timer = loop.call_later(delay, self._report)

    def _report(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._last_report = asyncio.get_running_loop().time()
        self.client.heartbeat_now()
