"""Running the proxy: listening sockets, the timeout sweeper, graceful shutdown, workers.

:class:`ProxyServer` is the embeddable API (tests and a mesh node use it inside their own event
loop); :func:`serve` is what ``tunnelmesh proxy`` runs: bind, print the "listening on" line,
fork the workers if asked, serve until SIGINT or SIGTERM, then drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tunnelmesh.errors import TransportError

from tunnelmesh_proxy.client import ClientConnection, ProxyContext
from tunnelmesh_proxy.routing import Router

__all__ = ["ProxyServer", "bind_sockets", "format_address", "loop_factory", "serve"]

log = logging.getLogger(__name__)

Address = tuple[str, int]


def format_address(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_sockets(addresses: Sequence[Address], backlog: int = 1024) -> list[socket.socket]:
    """Bind and listen on every address, in order.

    Raises:
        TransportError: an address cannot be bound (in use, not local, no permission).
    """
    socks: list[socket.socket] = []
    try:
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # [::]:P and 0.0.0.0:P are two sockets, as on the command line
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
                sock.listen(backlog)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                raise TransportError(
                    f"cannot listen on {format_address((host, port))}: {reason}"
                ) from exc
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class ProxyServer:
    """The proxy inside a running event loop.

    Args:
        router: the routing rules, built once.
        **options: passed to :class:`~tunnelmesh_proxy.client.ProxyContext` (timeouts, pool
            size, socket factory).
    """

    def __init__(self, router: Router, **options: Any) -> None:
        self.router = router
        self.options = options
        self.ctx: ProxyContext | None = None
        self.servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._collector: Any = None

    @property
    def addresses(self) -> list[Address]:
        """Where the proxy listens (real ports, also when port 0 was asked for)."""
        out = []
        for server in self.servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((name[0], name[1]))
        return out

    async def start(self, sockets: Sequence[socket.socket]) -> None:
        """Serve on already bound and listening sockets (see :func:`bind_sockets`)."""
        loop = asyncio.get_running_loop()
        ctx = self.ctx = ProxyContext(self.router, **self.options)
        from tunnelmesh.metrics import add_collector

        from tunnelmesh_proxy.metrics import ProxyCollector

        self._collector = ProxyCollector(ctx)
        add_collector(self._collector)  # on the process's /metrics while the proxy runs
        for sock in sockets:
            server = await loop.create_server(
                lambda: ClientConnection(ctx), sock=sock, backlog=1024
            )
            self.servers.append(server)
        self._sweeper = loop.call_later(1.0, self._sweep)

    async def listen(self, addresses: Sequence[Address]) -> None:
        """Bind the addresses and serve on them."""
        await self.start(bind_sockets(addresses))

    def _sweep(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        ctx.now = now = ctx.loop.time()
        for conn in list(ctx.connections):
            conn.check_timeout(now)
        ctx.pool.expire(now)
        self._sweeper = ctx.loop.call_later(1.0, self._sweep)

    async def aclose(self, grace: float = 10.0) -> None:
        """Stop accepting, let the exchanges in flight finish (at most ``grace`` s), close."""
        ctx = self.ctx
        for server in self.servers:
            server.close()
        if self._collector is not None:
            from tunnelmesh.metrics import remove_collector

            remove_collector(self._collector)
            self._collector = None
        if ctx is None:
            return
        ctx.closing = True
        for conn in list(ctx.connections):
            conn.shutdown()
        loop = ctx.loop
        deadline = loop.time() + grace
        while ctx.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(ctx.connections):
            conn.transport.abort()
        ctx.pool.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        await asyncio.sleep(0)

    async def __aenter__(self) -> ProxyServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose(grace=1.0)


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: ``uvloop`` (when installed, for ``auto``) or ``asyncio``."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise TransportError(
                    "uvloop is not installed: pip install 'tunnelmesh[fast]'"
                ) from None
            return None
        return uvloop.new_event_loop
    return None


async def _serve_sockets(
    make_router: Callable[[], Router],
    sockets: Sequence[socket.socket],
    grace: float,
    options: dict[str, Any],
) -> None:
    server = ProxyServer(make_router(), **options)
    await server.start(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.aclose(grace)


def serve(
    make_router: Callable[[], Router],
    addresses: Sequence[Address],
    *,
    workers: int = 1,
    loop: str = "auto",
    grace: float = 10.0,
    announce: Callable[[str], None] | None = None,
    **options: Any,
) -> int:
    """Bind, announce, serve until SIGINT/SIGTERM, drain; return the exit status.

    With ``workers`` > 1 the parent binds the sockets, forks that many processes that each
    accept on them (on Linux the kernel spreads the connections), and waits for them; a
    signal to the parent is passed on to every worker.

    Raises:
        TransportError: an address cannot be bound.
    """
    sockets = bind_sockets(addresses)
    bound = ", ".join(format_address(s.getsockname()[:2]) for s in sockets)
    if announce is not None:
        announce(bound)
    factory = loop_factory(loop)
    if workers <= 1:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve_sockets(make_router, sockets, grace, options))
        return 0
    pids: list[int] = []
    for _ in range(workers):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the worker process
            status = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                with asyncio.Runner(loop_factory=factory) as runner:
                    runner.run(_serve_sockets(make_router, sockets, grace, options))
            except BaseException:
                log.exception("proxy worker failed")
                status = 1
            finally:
                os._exit(status)
        pids.append(pid)
    for sock in sockets:
        sock.close()

    def forward(signum: int, _frame: object) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for pid in pids:
            while True:
                try:
                    _, code = os.waitpid(pid, 0)
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                    continue
            if os.waitstatus_to_exitcode(code) not in (0, -signal.SIGTERM):
                status = 1
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return status
