"""The peers as rows, and the live feed that sends their changes (Server-Sent Events).

One task per dashboard, running only while somebody listens, turns the coordinator's peer
records into rows once per second (``PeerFeed.interval``): name, peer ID, mesh IP, online, last
seen, version, flags, the peer's receive and transmit rates (bytes/s between its last two
heartbeats, as the coordinator's ``peerstats`` keeps them) and its paths. It compares each row with the one sent before and encodes
the changed rows once for every listener; a listener gets the whole table when it connects.
Each listener's message also carries *its own* paths (the caller's transport to each peer: what
the peers page shows as the path), taken from the caller's record.

A slow listener never holds the feed up: its queue keeps the newest few messages, older ones
are dropped and the next message it gets is a whole snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
from tunnelmesh.abc import CoordinatorView
from tunnelmesh.coordinator import Coordinator

__all__ = ["PeerFeed", "Row", "Subscription", "peer_rows"]

RELAYED = frozenset({"relay"})
"""Transports whose path goes through the coordinator (not direct between the peers)."""


class Row(msgspec.Struct, kw_only=True, frozen=True):
    """One peer as the dashboard shows it."""

    name: str
    peer_id: str
    mesh_ip: str
    online: bool
    last_seen: float
    version: str
    exit: bool
    admin: bool
    coordinator: bool
    rx_rate: float
    tx_rate: float
    rx_bytes: int
    tx_bytes: int
    paths: int
    relayed: int


def _online(coord: CoordinatorView, peer_id: str) -> bool:
    if isinstance(coord, Coordinator):
        return coord.liveness.is_online(peer_id)
    return True


def _rates(coord: CoordinatorView, peer_id: str) -> tuple[float, float]:
    """The peer's receive and transmit rates between its last two heartbeats (bytes/s), as the
    coordinator keeps them (``GET /api/v1/status`` shows the same)."""
    if isinstance(coord, Coordinator):
        traffic = coord.peerstats.traffic.get(peer_id)
        if traffic is not None:
            return traffic.rx_rate, traffic.tx_rate
    return 0.0, 0.0


def peer_rows(coord: CoordinatorView) -> list[Row]:
    """Every approved peer as a :class:`Row`, by name."""
    out = []
    for rec in coord.peers.values():
        if rec.pending:
            continue
        rx_rate, tx_rate = _rates(coord, rec.peer_id)
        c = rec.counters
        out.append(
            Row(
                name=rec.name,
                peer_id=rec.peer_id,
                mesh_ip=rec.mesh_ip,
                online=_online(coord, rec.peer_id),
                last_seen=rec.last_seen,
                version=rec.version,
                exit=rec.allow_exit_traffic,
                admin=rec.is_admin,
                coordinator=rec.is_coordinator,
                rx_rate=round(rx_rate, 1),
                tx_rate=round(tx_rate, 1),
                rx_bytes=c.bytes_received,
                tx_bytes=c.bytes_sent,
                paths=len(rec.transports),
                relayed=sum(1 for t in rec.transports.values() if t in RELAYED),
            )
        )
    out.sort(key=lambda r: r.name)
    return out


class Subscription:
    """One listener: a bounded queue of encoded messages (see the module docstring)."""

    def __init__(self, peer_id: str, size: int = 8) -> None:
        self.peer_id = peer_id
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self.needs_snapshot = True

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self.queue.get_nowait()
        self.queue.put_nowait(b"")

    def offer(self, message: bytes) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    self.queue.get_nowait()
            self.needs_snapshot = True  # it missed changes: the next message is everything
            return
        self.queue.put_nowait(message)


_enc = msgspec.json.Encoder()


class PeerFeed:
    """The live feed of one dashboard (see the module docstring).

    Args:
        coordinator: the coordinator whose peers are sent.
        interval: seconds between two looks at the peers.
        clock: wall-clock seconds.
    """

    def __init__(
        self,
        coordinator: CoordinatorView,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.coordinator = coordinator
        self.interval = interval
        self.clock = clock
        self.subscriptions: set[Subscription] = set()
        self._rows: dict[str, Row] = {}
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0

    def rows(self) -> list[Row]:
        """The peers now."""
        return peer_rows(self.coordinator)

    def subscribe(self, peer_id: str) -> Subscription:
        sub = Subscription(peer_id)
        self.subscriptions.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)

    def _view(self, peer_id: str) -> dict[str, Any]:
        rec = self.coordinator.peers.get(peer_id)
        if rec is None:
            return {}
        return {"transports": rec.transports, "rtt_ms": rec.rtt_ms, "reasons": rec.reasons}

    def tick(self) -> tuple[list[Row], list[str]]:
        """One look at the peers: ``(changed rows, peer IDs gone)`` since the last tick."""
        rows = {r.peer_id: r for r in self.rows()}
        changed = [r for pid, r in rows.items() if self._rows.get(pid) != r]
        gone = [pid for pid in self._rows if pid not in rows]
        self._rows = rows
        self.ticks += 1
        return changed, gone

    def publish(self) -> None:
        """Tick once and hand every listener its message."""
        changed, gone = self.tick()
        now = self.clock()
        update: bytes | None = None
        snapshot: bytes | None = None
        for sub in list(self.subscriptions):
            view = _enc.encode(self._view(sub.peer_id))
            if sub.needs_snapshot:
                if snapshot is None:
                    snapshot = _enc.encode(
                        {"type": "snapshot", "time": now, "rows": list(self._rows.values())}
                    )
                body = snapshot
                sub.needs_snapshot = False
            elif changed or gone:
                if update is None:
                    update = _enc.encode(
                        {"type": "update", "time": now, "rows": changed, "gone": gone}
                    )
                body = update
            else:
                body = b'{"type":"tick","time":%.3f}' % now
            sub.offer(b"data: " + body[:-1] + b',"view":' + view + b"}\n\n")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self.subscriptions:
            self.publish()
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        self._rows = {}

    async def aclose(self) -> None:
        """Stop; every listener's stream ends (an empty message tells its handler)."""
        for sub in self.subscriptions:
            sub.close()
        self.subscriptions.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
