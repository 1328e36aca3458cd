"""The relay's coordinator side: a WebSocket route that forwards WireGuard messages by name.

Added to the coordinator by the plugin's ``tunnelmesh_register_coordinator_routes`` hook::

    GET /api/v1/relay         peer    WebSocket (binary messages, see relay.proto)
    GET /api/v1/relay/stats   admin   per-peer counters (JSON)

A peer authenticates the WebSocket upgrade with its coordinator session token (the
``Authorization: Bearer`` header the control API uses), so its relay name is the name it
registered under. A second connection under the same name replaces the first (a restarted
node). Each message from a peer is checked (a SEND to a named peer, records that are WireGuard
messages), charged to the sender's token bucket, counted, and queued for the destination's
writer; a full queue drops. A message to a name without a relay link is answered with
UNREACHED, at most once a second per destination; each connection remembers that for its 64
most recent destinations only, so frames to random names cost no memory. The relay never holds
a key: it cannot read or forge what it forwards, and it forwards nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import WSMsgType, web
from tunnelmesh import Policy, route_policy
from tunnelmesh.abc import CoordinatorView
from tunnelmesh.coordinator.api import authenticated_peer

from tunnelmesh_relay.proto import (
    SEND,
    UNREACHED,
    PeerCounters,
    RelayFormatError,
    TokenBucket,
    count_records,
    decode_header,
    encode_message,
    rewrite_for_delivery,
)

__all__ = ["RELAY_HUB_KEY", "RelayConfig", "RelayHub", "add_routes"]

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024 * 1024
UNREACHED_INTERVAL = 1.0
"""A sender hears UNREACHED for one destination at most this often (seconds)."""
MAX_UNREACHED = 64
"""Destinations per connection remembered for that; the least recently told go first."""
MAX_COUNTED = 65536
"""Counters of at most this many peer names are kept; disconnected ones go first."""


class RelayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``relay:`` section of the coordinator's config.

    Attributes:
        enabled: serve the relay route at all.
        rate_bytes_per_second: what one peer may send through the relay, sustained (0: no
            limit). The default, 12.5 MB/s, is 100 Mbit/s.
        burst_bytes: how much a peer may send at once above the sustained rate.
        queue: messages waiting for a slow receiver before further ones are dropped.
    """

    enabled: bool = True
    rate_bytes_per_second: int = 12_500_000
    burst_bytes: int = 2 * 1024 * 1024
    queue: int = 256


class _Conn:
    """One peer's relay WebSocket: the send queue and its writer task."""

    def __init__(self, name: str, ws: web.WebSocketResponse, size: int) -> None:
        self.name = name
        self.ws = ws
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self.writer: asyncio.Task[None] | None = None
        self.unreached: OrderedDict[str, float] = OrderedDict()
        """When this peer was last told each destination is UNREACHED (at most
        MAX_UNREACHED, least recently told first); it goes with the connection."""

    async def write_loop(self) -> None:
        ws, queue = self.ws, self.queue
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await ws.send_bytes(await queue.get())


class RelayHub:
    """Who is connected, and the forwarding rule; the aiohttp handler feeds it.

    Args:
        config: limits.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, config: RelayConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or RelayConfig()
        self.clock = clock
        self.conns: dict[str, _Conn] = {}
        self.counters: dict[str, PeerCounters] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self.tap: Callable[[str, str, bytes], None] | None = None
        """Tests: called with ``(source, destination, message as delivered)`` for every
        forwarded message, to show what the relay can see."""

    def counters_for(self, name: str) -> PeerCounters:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = PeerCounters()
        return c

    def forward(self, source: str, data: bytes) -> None:
        """Handle one message from ``source``: check, limit, count, queue for delivery."""
        src = self.counters_for(source)
        try:
            kind, dest, offset = decode_header(data)
            if kind != SEND:
                raise RelayFormatError("peers may only send SEND messages")
            packets = count_records(data, offset)
        except RelayFormatError as exc:
            src.dropped_invalid += 1
            log.debug("relay: dropped a message from %s: %s", source, exc)
            return
        now = self.clock()
        bucket = self.buckets.get(source)
        if bucket is None:
            cfg = self.config
            bucket = self.buckets[source] = TokenBucket(
                cfg.rate_bytes_per_second, cfg.burst_bytes, now
            )
        if not bucket.take(len(data), now):
            src.dropped_rate += 1
            return
        src.rx_bytes += len(data)
        src.rx_messages += 1
        src.rx_packets += packets
        conn = self.conns.get(dest)
        if conn is None:
            src.dropped_unreachable += 1
            self._tell_unreached(source, dest, now)
            return
        out = rewrite_for_delivery(data, offset, source)
        try:
            conn.queue.put_nowait(out)
        except asyncio.QueueFull:
            self.counters_for(dest).dropped_queue += 1
            return
        dst = self.counters_for(dest)
        dst.tx_bytes += len(out)
        dst.tx_messages += 1
        if self.tap is not None:
            self.tap(source, dest, out)

    def _tell_unreached(self, source: str, dest: str, now: float) -> None:
        conn = self.conns.get(source)
        if conn is None:
            return
        told = conn.unreached
        last = told.get(dest)
        if last is not None and now - last < UNREACHED_INTERVAL:
            return
        told[dest] = now
        told.move_to_end(dest)
        if len(told) > MAX_UNREACHED:
            told.popitem(last=False)
        with contextlib.suppress(asyncio.QueueFull, RelayFormatError):
            conn.queue.put_nowait(encode_message(UNREACHED, dest, ()))

    def attach(self, name: str, ws: web.WebSocketResponse) -> _Conn:
        self._trim()
        old = self.conns.get(name)
        conn = _Conn(name, ws, self.config.queue)
        self.conns[name] = conn
        conn.writer = asyncio.get_running_loop().create_task(conn.write_loop())
        if old is not None:
            log.info("relay: %s reconnected; closing its previous connection", name)
            asyncio.get_running_loop().create_task(old.ws.close())
        return conn

    def _trim(self) -> None:
        """Forget the counters and buckets of disconnected names past MAX_COUNTED."""
        excess = len(self.counters) - MAX_COUNTED
        if excess <= 0:
            return
        for n in [n for n in self.counters if n not in self.conns][:excess]:
            del self.counters[n]
            self.buckets.pop(n, None)

    def detach(self, conn: _Conn) -> None:
        if self.conns.get(conn.name) is conn:
            del self.conns[conn.name]
        if conn.writer is not None:
            conn.writer.cancel()

    def stats(self) -> dict[str, Any]:
        return {
            "connected": sorted(self.conns),
            "peers": {n: c.as_dict() for n, c in sorted(self.counters.items())},
            "config": msgspec.to_builtins(self.config),
        }

    async def close(self) -> None:
        for conn in list(self.conns.values()):
            self.detach(conn)
            with contextlib.suppress(Exception):
                await conn.ws.close()


RELAY_HUB_KEY = web.AppKey("relay_hub", RelayHub)


@route_policy(Policy.PEER)
async def relay_ws(request: web.Request) -> web.StreamResponse:
    hub = request.app[RELAY_HUB_KEY]
    rec = authenticated_peer(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_MESSAGE, compress=False)
    await ws.prepare(request)
    conn = hub.attach(rec.name, ws)
    forward = hub.forward
    name = rec.name
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                forward(name, msg.data)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
    finally:
        hub.detach(conn)
    return ws


@route_policy(Policy.ADMIN)
async def relay_stats(request: web.Request) -> web.Response:
    hub = request.app[RELAY_HUB_KEY]
    return web.json_response(hub.stats())


def add_routes(app: web.Application, coordinator: CoordinatorView) -> RelayHub | None:
    """Add the relay routes (unless ``relay.enabled`` is false); return the hub."""
    sections = getattr(getattr(coordinator, "config", None), "sections", {}) or {}
    config = sections.get("relay") or RelayConfig()
    if not config.enabled:
        return None
    hub = RelayHub(config)
    app[RELAY_HUB_KEY] = hub
    app.router.add_get("/api/v1/relay", relay_ws)
    app.router.add_get("/api/v1/relay/stats", relay_stats)

    from tunnelmesh.metrics import add_collector, remove_collector

    from tunnelmesh_relay.metrics import RelayCollector

    collector = RelayCollector(hub)

    # On the process's /metrics while the app runs: from start-up, not from building it (an
    # app built only to read its route table never starts, and would leave its families
    # registered beside the next coordinator's).
    async def start_metrics(_app: web.Application) -> None:
        add_collector(collector)

    async def close_hub(_app: web.Application) -> None:
        remove_collector(collector)
        await hub.close()

    app.on_startup.append(start_metrics)
    app.on_shutdown.append(close_hub)
    return hub
