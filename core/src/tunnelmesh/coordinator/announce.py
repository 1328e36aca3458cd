"""Coordinator: what goes out on the push channel, and when (functions bound as methods of
:class:`~tunnelmesh.coordinator.core.Coordinator`).

A changed peer is announced at once (with the next revision) or within
:data:`PUSH_COALESCE` seconds when a heartbeat changed it, so a burst is one push; the
coordinator layer of the filter is pushed when its rules change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from tunnelmesh.config import FilterConfig
from tunnelmesh.control.messages import PeerUpserted, encode
from tunnelmesh.coordinator.store import PeerRecord

if TYPE_CHECKING:
    from tunnelmesh.coordinator.core import Coordinator

log = logging.getLogger("tunnelmesh.coordinator.core")
"""Coordinator's log: every part of it logs under the name it always had."""

PUSH_COALESCE = 0.05
"""Seconds heartbeat-caused changes of one peer wait, so a burst becomes one push."""


def filter_message(self: Coordinator) -> bytes:
    """The push message with the coordinator layer of the filter (see ``filterbook``)."""
    return self.filters.message()


def set_filter(self: Coordinator, config: FilterConfig) -> bool:
    """Take server.yaml's filter rules (a reload); pushed to every peer when they changed."""
    self.config = msgspec.structs.replace(self.config, filter=config)
    return self.filters.set_config(config)


def _pushed(self: Coordinator) -> None:  # the filter rules changed
    self.hub.broadcast(self.filter_message())


def _announce(self: Coordinator, rec: PeerRecord) -> None:
    self._pending_push.discard(rec.peer_id)  # this push carries the latest record
    if rec.pending:
        return  # a key waiting for approval is announced once it is approved
    self.revision += 1
    self.hub.broadcast(encode(PeerUpserted(peer=self.push_info(rec), revision=self.revision)))


def _announce_soon(self: Coordinator, rec: PeerRecord) -> None:
    """Push ``rec`` within PUSH_COALESCE seconds: every change of the peer meanwhile
    rides on the same push (its record as it is then)."""
    if rec.peer_id in self._pending_push:
        self.stats["pushes_coalesced"] += 1
        return
    self._pending_push.add(rec.peer_id)
    if self._push_timer is None:
        loop = asyncio.get_running_loop()
        self._push_timer = loop.call_later(PUSH_COALESCE, self._flush_pushes)


def _flush_pushes(self: Coordinator) -> None:
    self._push_timer = None
    pending, self._pending_push = self._pending_push, set()
    for peer_id in sorted(pending):
        rec = self.peers.get(peer_id)
        if rec is not None:  # deleted meanwhile: its PeerGone went out already
            self._announce(rec)
