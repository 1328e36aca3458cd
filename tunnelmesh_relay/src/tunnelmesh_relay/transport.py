"""The relay transport: WireGuard messages carried through the coordinator over a WebSocket.

For peers that cannot reach each other directly (both behind symmetric NATs, UDP blocked), each
keeps one WebSocket to its coordinator (``wss://<coordinator>/api/v1/relay``, authenticated with
its session token, TLS pinned to the mesh CA) and the coordinator forwards messages by peer
name (:mod:`tunnelmesh_relay.server`).

Packets are sealed end to end by this transport's own WireGuard engine
(:class:`tunnelmesh.proto.WireGuard`, the node's X25519 key derived from its ed25519 identity),
exactly as the UDP transport seals them, with the peer's *name* as the engine's endpoint
address. The coordinator sees ciphertext and the two names; it can drop or delay messages but
cannot read, forge or replay them. Sessions live in the engine, not in the WebSocket: when the
connection to the coordinator drops and comes back (the transport reconnects by itself, with
backoff), the links and their keys carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import websockets
from tunnelmesh.abc import Link, Transport, TransportCapabilities, TransportHost
from tunnelmesh.aio.wgsession import WireGuardLink, WireGuardSession
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.errors import TransportError
from tunnelmesh.proto import HandshakeCompleted, WireGuard
from tunnelmesh.proto.wgcrypto import x25519_public_from_ed25519
from tunnelmesh.proto.wgmessages import REKEY_TIMEOUT

from tunnelmesh_relay.proto import (
    RECV,
    SEND,
    UNREACHED,
    RelayFormatError,
    decode_header,
    encode_message,
    encode_sealed,
    split_records,
)

__all__ = ["RelayTransport", "relay_server"]

log = logging.getLogger(__name__)

RELAY_PATH = "/api/v1/relay"
_MAX_RECORDS = 64
_QUEUE = 512
RELAY_MOVE_CHECK = 1.0
"""Seconds between checks whether the relay route to use changed."""


def relay_server(announced: Sequence[str], own: str) -> str:
    """The coordinator whose relay route a node uses: the first, in sorted order, of the live
    coordinators the mesh announced (``ControlClient.announced``), so that peers attached to
    different coordinators of one database meet on the same relay (the relay forwards between
    the connections it holds); ``own`` (the URL the node joined with) when none were announced.
    A relay coordinator that stops is dropped from the announced list by the others within
    3.5 heartbeat intervals, and every peer moves to the next one."""
    return min(announced) if announced else own


class RelayTransport(Transport):
    """WireGuard through the coordinator's WebSocket relay.

    Args:
        private_key: our static X25519 private key (from the node's ed25519 identity).
        server: the coordinator's URL (``https://host:port``).
        session_token: the coordinator session token, or a callable returning the current one
            (it changes when the node registers again).
        ca_pem: the mesh CA the coordinator's certificate must chain to.
        mtu: the tunnel MTU.
        server_hostname: the name checked in the coordinator's certificate.
        handshake_timeout: how long :meth:`dial` waits for the handshake (the default covers
            one retransmission of the initiation).
    """

    name: ClassVar[str] = "relay"
    capabilities: ClassVar[TransportCapabilities] = TransportCapabilities(
        incoming=True, nat_punch=False, reliable=False, ordered=False, max_mtu=1420
    )
    preference: ClassVar[int] = 30  # after the direct ones: through the coordinator

    def __init__(
        self,
        private_key: bytes,
        *,
        server: str | Callable[[], str],
        session_token: str | Callable[[], str],
        ca_pem: str,
        mtu: int = 1420,
        server_hostname: str = COORDINATOR_NAME,
        handshake_timeout: float = 2 * REKEY_TIMEOUT + 1,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.engine = WireGuard(private_key, mtu=mtu)
        self.mtu = mtu
        self._server = server
        scheme = urlsplit(self._server_url()).scheme
        self._secure = scheme in ("https", "wss")
        self._connected_url = ""
        self._token = session_token
        self._ssl = client_ssl_context(ca_pem) if self._secure else None
        self._server_hostname = server_hostname
        self.session = WireGuardSession(
            self.engine,
            self._queue_records,
            mtu=mtu,
            on_link=self._incoming,
            on_event=self._event,
            announce_dialled=False,
            link_kind="relay link",
            transmit_sealed=self._queue_sealed,
        )
        self.links = self.session.links
        self.drops = self.engine.drops
        self.stats = {"tx_messages": 0, "rx_messages": 0, "connects": 0, "network_changes": 0}
        self._on_link: Callable[[Link], None] | None = None
        self._ws: Any = None
        self._connected = asyncio.Event()
        self._now = asyncio.Event()  # reconnect now (the network changed)
        self._runner: asyncio.Task[None] | None = None
        self._mover: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._out: asyncio.Queue[bytes] = asyncio.Queue(_QUEUE)
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.last_error = ""

    def _server_url(self) -> str:
        return self._server() if callable(self._server) else self._server

    @property
    def url(self) -> str:
        """The relay route this transport connects to (now)."""
        parts = urlsplit(self._server_url())
        scheme = "wss" if self._secure else "ws"
        return f"{scheme}://{parts.netloc}{RELAY_PATH}"

    @classmethod
    def from_node(cls, node: TransportHost) -> RelayTransport:
        """Build from a running node: its key, its coordinator, its session.

        With several coordinators the relay route used is the first, in sorted order, of the
        live coordinators the mesh announced (``relay_server``): every peer meets every other
        on the same relay, whichever coordinator each one talks to.
        """
        from pathlib import Path

        ctx = node.context
        return cls(
            node.x25519_private_key,
            server=lambda: relay_server(node.client.announced, ctx.server),
            session_token=lambda: node.client.session_token,
            ca_pem=Path(ctx.ca_path).read_text(encoding="ascii"),
            mtu=node.config.tun.mtu,
        )

    @property
    def connected(self) -> bool:
        """True while the WebSocket to the coordinator is open."""
        return self._ws is not None

    # --- peers ------------------------------------------------------------------------------

    def update_peer(
        self, peer: str, *, public_key: bytes = b"", endpoints: Sequence[str] = ()
    ) -> None:
        existing = self.engine.peer_by_name(peer)
        x = x25519_public_from_ed25519(public_key) if public_key else None
        if existing is not None and existing.public_key != x:
            # a peer that left, or changed keys: its sessions and its link end here
            self.engine.remove_peer(existing.public_key)
            link = self.links.get(existing.public_key)
            if link is not None:
                asyncio.get_running_loop().create_task(link.aclose())
        if x is not None:
            self.engine.add_peer(x, name=peer, endpoint=peer)

    # --- lifecycle --------------------------------------------------------------------------

    async def listen(self, on_link: Callable[[Link], None]) -> None:
        """Connect to the relay (in the background, reconnecting) and accept links."""
        if self._closed:
            raise TransportError("relay transport is closed")
        self._on_link = on_link
        if self._runner is None:
            self._loop = loop = asyncio.get_running_loop()
            self.session.start(loop)
            self._runner = loop.create_task(self._run(), name="tm-relay")
            if callable(self._server):
                self._mover = loop.create_task(self._follow_server(), name="tm-relay-follow")
            self._writer = loop.create_task(self._write_loop(), name="tm-relay-writer")

    async def wait_connected(self, timeout: float) -> None:
        """Wait for the WebSocket to be open.

        Raises:
            TransportError: not connected within ``timeout`` seconds.
        """
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise TransportError(
                f"relay: not connected to {self.url} ({self.last_error or 'no answer'})"
            ) from None

    async def _follow_server(self) -> None:
        """Move to another relay route when the one to use changed (the coordinators the mesh
        announced changed): the sessions live in the engine and carry on over the new one."""
        while not self._closed:
            await asyncio.sleep(RELAY_MOVE_CHECK)
            ws = self._ws
            if ws is not None and self.url != self._connected_url:
                log.info("relay: moving from %s to %s", self._connected_url, self.url)
                self._now.set()
                ws.transport.abort()

    async def _run(self) -> None:
        delay = 0.5
        while not self._closed:
            token = self._token() if callable(self._token) else self._token
            url = self._connected_url = self.url
            try:
                async with websockets.connect(
                    url,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname if self._ssl else None,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    compression=None,
                    max_size=1024 * 1024,
                    max_queue=64,
                    ping_interval=20,
                    ping_timeout=20,
                    open_timeout=10,
                ) as ws:
                    self._ws = ws
                    self.stats["connects"] += 1
                    self._connected.set()
                    delay = 0.5
                    async for message in ws:
                        if isinstance(message, bytes):
                            self._received(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network errors of every kind: retry with backoff
                self.last_error = str(exc) or type(exc).__name__
                log.info("relay: connection to %s: %s", self.url, self.last_error)
            finally:
                self._ws = None
                self._connected.clear()
            if self._closed:
                return
            if self._now.is_set():  # the network changed: reconnect at once, backoff reset
                self._now.clear()
                delay = 0.5
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * (0.8 + 0.4 * random.random())):
                    await self._now.wait()
            self._now.clear()
            delay = min(delay * 2, 10.0)

    def network_changed(self) -> None:
        """The node's network monitor saw the underlay change: the WebSocket's TCP path may be
        dead (a new address, another uplink), and its ping timeout would notice only after
        20 s. Drop it and reconnect at once (sessions live in the engine and carry on)."""
        self.stats["network_changes"] += 1
        self._now.set()
        ws = self._ws
        if ws is not None:
            ws.transport.abort()

    async def _write_loop(self) -> None:
        out = self._out
        while True:
            msg = await out.get()
            ws = self._ws
            if ws is None:
                self.drops["relay_down"] += 1
                continue
            try:
                await ws.send(msg)
                self.stats["tx_messages"] += 1
            except Exception:  # the reader notices the closed connection and reconnects
                self.drops["relay_send_error"] += 1

    def traffic(self) -> dict[str, tuple[int, int]]:
        """Transport bytes per peer, from the WireGuard engine (closed links included)."""
        return self.session.traffic()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._runner, self._writer, self._mover):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._runner = self._writer = self._mover = None
        for link in list(self.links.values()):
            await link.aclose()
        self.session.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(TransportError("relay transport is closed"))

    # --- links ------------------------------------------------------------------------------

    def _incoming(self, link: WireGuardLink) -> None:
        if self._on_link is not None:
            self._on_link(link)

    def _event(self, event: object) -> None:
        if isinstance(event, HandshakeCompleted):
            fut = self._waiters.get(event.public_key)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        """Handshake with ``peer`` through the relay (``endpoints`` are not needed).

        Raises:
            TransportError: not connected to the relay, no key for the peer, the peer is not
                on the relay, or no handshake completed within ``handshake_timeout``.
        """
        if self._closed or self._loop is None:
            raise TransportError("relay transport is not listening")
        if public_key:
            self.update_peer(peer, public_key=public_key)
        wg_peer = self.engine.peer_by_name(peer)
        if wg_peer is None:
            raise TransportError(f"relay: no public key known for peer {peer!r}")
        await self.wait_connected(10.0)
        loop = self._loop
        if not self.engine.has_session(wg_peer, loop.time()):
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters[wg_peer.public_key] = fut
            self.session.initiate(wg_peer)
            try:
                # the engine retransmits after REKEY_TIMEOUT; wait for one retransmission too
                await asyncio.wait_for(fut, self.handshake_timeout)
            except TimeoutError:
                raise TransportError(f"relay: no handshake with {peer}") from None
            finally:
                self._waiters.pop(wg_peer.public_key, None)
        return self.session.link_for(wg_peer)

    # --- data path --------------------------------------------------------------------------

    def _queue_records(self, records: list[bytes], dest: object) -> None:
        """The session's transmit: WireGuard messages to the peer named ``dest``."""
        if not isinstance(dest, str):
            self.drops["relay_bad_name"] += 1
            return
        put = self._out.put_nowait
        for i in range(0, len(records), _MAX_RECORDS):
            try:
                put(encode_message(SEND, dest, records[i : i + _MAX_RECORDS]))
            except asyncio.QueueFull:
                self.drops["relay_queue_full"] += min(_MAX_RECORDS, len(records) - i)
            except RelayFormatError:
                self.drops["relay_bad_name"] += 1

    def _queue_sealed(self, buf: bytearray, sizes: list[int], dest: object) -> None:
        """The session's sealed transmit: the messages at the start of ``buf`` (a batch of
        data packets sealed in place) to the peer named ``dest``, one copy each."""
        if not isinstance(dest, str):
            self.drops["relay_bad_name"] += 1
            return
        try:
            messages = encode_sealed(dest, buf, sizes, max_records=_MAX_RECORDS)
        except RelayFormatError:
            self.drops["relay_bad_name"] += 1
            return
        put = self._out.put_nowait
        for i, msg in enumerate(messages):
            try:
                put(msg)
            except asyncio.QueueFull:
                self.drops["relay_queue_full"] += min(_MAX_RECORDS, len(sizes) - i * _MAX_RECORDS)

    def _received(self, data: bytes) -> None:
        self.stats["rx_messages"] += 1
        try:
            kind, name, offset = decode_header(data)
            if kind == UNREACHED:
                fut = None
                wg_peer = self.engine.peer_by_name(name)
                if wg_peer is not None:
                    fut = self._waiters.get(wg_peer.public_key)
                if fut is not None and not fut.done():
                    fut.set_exception(TransportError(f"relay: {name} is not on the relay"))
                return
            if kind != RECV:
                raise RelayFormatError("unexpected message kind")
            records = split_records(data, offset, views=True)
        except RelayFormatError:
            self.drops["relay_malformed"] += 1
            return
        self.session.receive(records, name)
