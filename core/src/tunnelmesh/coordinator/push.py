"""The push channel hub: fan peer-table changes out to every connected peer's WebSocket.

Each subscriber has a bounded queue and one writer task. A writer sends everything queued in one
WebSocket text frame, messages separated by newlines, so a burst of changes (a hundred peers
joining at once) costs one frame per subscriber rather than a hundred. A subscriber whose queue
fills up (it stopped reading: 4,096 messages or 8 MiB) is closed; its peer reconnects and starts
again from a snapshot, so no change is ever silently lost, and a peer that never reads costs the
coordinator bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

from aiohttp import web

__all__ = ["PushHub", "Subscriber"]

log = logging.getLogger(__name__)

MAX_QUEUED_BYTES = 8 * 1024 * 1024
"""What a subscriber that stopped reading may hold queued before it is closed (bytes)."""


class Subscriber:
    """One peer's push WebSocket."""

    def __init__(
        self,
        peer_id: str,
        ws: web.WebSocketResponse,
        max_queue: int,
        max_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.peer_id = peer_id
        self.ws = ws
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(max_queue)
        self.task: asyncio.Task[None] | None = None
        self.max_bytes = max_bytes
        self.queued_bytes = 0

    def offer(self, data: bytes) -> bool:
        """Queue one message; False when the queue is full, in messages or in bytes (the
        subscriber is too slow). A message into an empty queue always fits (the snapshot)."""
        if self.queued_bytes and self.queued_bytes + len(data) > self.max_bytes:
            return False
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            return False
        self.queued_bytes += len(data)
        return True

    def _taken(self, item: bytes | None) -> bytes | None:
        if item is not None:
            self.queued_bytes -= len(item)
        return item

    async def writer(self) -> None:
        try:
            while True:
                item = self._taken(await self.queue.get())
                if item is None:
                    return
                batch = [item]
                while not self.queue.empty():
                    more = self._taken(self.queue.get_nowait())
                    if more is None:
                        await self.ws.send_str(b"\n".join(batch).decode("utf-8"))
                        return
                    batch.append(more)
                await self.ws.send_str(b"\n".join(batch).decode("utf-8"))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("push to %s failed: %s", self.peer_id, exc)
        finally:
            with contextlib.suppress(Exception):
                await self.ws.close()


class PushHub:
    """Every live push channel, by peer ID (one per peer; a new one replaces the old)."""

    def __init__(self, max_queue: int = 4096) -> None:
        self.max_queue = max_queue
        self._subs: dict[str, Subscriber] = {}
        self.closed = False

    def __len__(self) -> int:
        return len(self._subs)

    def is_connected(self, peer_id: str) -> bool:
        return peer_id in self._subs

    def attach(self, peer_id: str, ws: web.WebSocketResponse, first: bytes) -> Subscriber:
        """Register a new channel whose first message is ``first`` (the snapshot).

        After :meth:`close` (the coordinator is stopping) the channel is closed at once instead:
        a peer whose WebSocket handshake raced the shutdown would otherwise hold its handler,
        and with it the server's shutdown, open until the peer hangs up.
        """
        sub = Subscriber(peer_id, ws, self.max_queue)
        sub.task = asyncio.get_running_loop().create_task(sub.writer())
        if self.closed:
            self._stop(sub)
            return sub
        old = self._subs.pop(peer_id, None)
        if old is not None:
            self._stop(old)
        sub.offer(first)
        self._subs[peer_id] = sub
        return sub

    def detach(self, sub: Subscriber) -> None:
        if self._subs.get(sub.peer_id) is sub:
            del self._subs[sub.peer_id]
        self._stop(sub)

    def _stop(self, sub: Subscriber) -> None:
        try:
            sub.queue.put_nowait(None)
        except asyncio.QueueFull:
            if sub.task is not None:
                sub.task.cancel()

    def broadcast(self, data: bytes, exclude: str | None = None) -> None:
        """Queue ``data`` for every subscriber (except ``exclude``)."""
        self.broadcast_except(data, () if exclude is None else (exclude,))

    def broadcast_except(self, data: bytes, skip: Collection[str]) -> None:
        """Queue ``data`` for every subscriber whose peer ID is not in ``skip``."""
        slow = [sub for pid, sub in self._subs.items() if pid not in skip and not sub.offer(data)]
        for sub in slow:
            log.warning("push channel of %s is not keeping up; closing it", sub.peer_id)
            self.detach(sub)

    def send_to(self, peer_id: str, data: bytes) -> bool:
        """Queue ``data`` for one peer; False when it has no live channel."""
        sub = self._subs.get(peer_id)
        if sub is None:
            return False
        if not sub.offer(data):
            self.detach(sub)
            return False
        return True

    async def close(self) -> None:
        self.closed = True
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            self._stop(sub)
        tasks = [s.task for s in subs if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
