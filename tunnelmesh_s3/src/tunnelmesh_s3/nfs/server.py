"""The asyncio driver of the NFS service: one TCP listener for NFS, MOUNT and PMAP GETPORT.

Each connection feeds its bytes to a sans-IO :class:`~tunnelmesh_s3.nfs.rpc.RpcConnection`,
runs each call it yields as a task (replies go out in completion order, matched by xid, as RPC
allows), and closes when the stream breaks (a record over the bound). At most
:data:`MAX_INFLIGHT` calls per connection run at once; past that, and while the transport's
write buffer is full, the connection stops reading, so a client cannot queue unbounded work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import cast

from tunnelmesh_s3.nfs.ops import NfsService
from tunnelmesh_s3.nfs.rpc import CallReceived, CallRejected, ConnectionBroken, RpcConnection

__all__ = ["MAX_CONNECTIONS", "MAX_INFLIGHT", "NfsServer"]

log = logging.getLogger(__name__)

MAX_INFLIGHT = 32
MAX_CONNECTIONS = 256
"""Open connections at most; one more is closed at once (and counted)."""


class _Connection(asyncio.Protocol):
    def __init__(
        self, service: NfsService, counters: dict[str, int], open_: set[_Connection]
    ) -> None:
        self.service = service
        self.open = open_
        self.counters = counters
        self.rpc = RpcConnection()
        self.address = ""
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._write_paused = False
        self._read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a stream server's transport; uvloop's is not an asyncio.Transport subclass, so no
        # isinstance check: one refused every connection on the coordinator's uvloop)
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        if len(self.open) >= MAX_CONNECTIONS:
            self.counters["refused"] += 1
            log.warning("nfs: %d connections open: refusing %s", len(self.open), self.address)
            self.transport.abort()
            return
        self.open.add(self)
        self.counters["accepted"] += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        for event in self.rpc.receive_data(data):
            if isinstance(event, CallReceived):
                task = asyncio.get_running_loop().create_task(self._run(event))
                self.tasks.add(task)
                task.add_done_callback(self._done)
            elif isinstance(event, CallRejected):
                self.counters["call_rejected"] += 1
                log.debug("nfs: %s: call %d rejected: %s", self.address, event.xid, event.reason)
                self._send(event.reply)
            elif isinstance(event, ConnectionBroken):
                self.counters["broken"] += 1
                log.info("nfs: closing the connection from %s: %s", self.address, event.reason)
                assert self.transport is not None
                self.transport.close()
        self._flow()

    async def _run(self, event: CallReceived) -> None:
        reply = await self.service.call(self.address, event)
        self._send(reply)

    def _send(self, reply: list[bytes | memoryview]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(reply)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("nfs: call task failed", exc_info=task.exception())
        self._flow()

    def _flow(self) -> None:
        """Read while fewer than MAX_INFLIGHT calls run and the peer takes our replies."""
        t = self.transport
        if t is None or t.is_closing():
            return
        stop = self._write_paused or len(self.tasks) >= MAX_INFLIGHT
        if stop and not self._read_paused:
            t.pause_reading()
            self._read_paused = True
        elif not stop and self._read_paused:
            t.resume_reading()
            self._read_paused = False

    def pause_writing(self) -> None:
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._flow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.open.discard(self)
        for task in self.tasks:
            task.cancel()


class NfsServer:
    """Serves an :class:`NfsService` on one listening socket (NFS, MOUNT and PMAP on one port).

    Args:
        service: what the calls do.
        sock: a bound, listening socket (the caller chooses the address: the mesh IP only).
    """

    def __init__(self, service: NfsService, sock: socket.socket) -> None:
        self.service = service
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self.counters = {"accepted": 0, "refused": 0, "broken": 0, "call_rejected": 0}
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()

    def _make(self) -> _Connection:
        return _Connection(self.service, self.counters, self._conns)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make, sock=self.sock)
        host = self.sock.getsockname()[0]
        log.info("nfs: serving on %s port %d (NFSv3, MOUNT v3, PMAP GETPORT)", host, self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns):
                if conn.transport is not None:
                    conn.transport.abort()
                for task in list(conn.tasks):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await self._server.wait_closed()
            self._server = None
