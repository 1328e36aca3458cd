"""Listening on the coordinator's mesh IP: what a plugin's service there needs (S3, the
dashboard, shares).

The coordinator's node puts its mesh IP on the TUN device only once it has joined, so a service
binds with ``IP_FREEBIND`` (:func:`freebind_socket`) and is ready before the address exists.
TLS services present a certificate from the mesh CA, loaded with :func:`load_cert_pem`. A
service lives as long as the coordinator's web application: :func:`serve_with_app`.
"""

from __future__ import annotations

import socket
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from aiohttp import web

from tunnelmesh.control.urls import join_hostport
from tunnelmesh.errors import ConfigError

__all__ = [
    "AppService",
    "freebind_socket",
    "load_cert_pem",
    "serve_with_app",
    "start_tls_site",
    "stop_site",
]

_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def freebind_socket(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host``, even before any interface has that
    address (``IP_FREEBIND``, Linux, IPv4).

    Raises:
        OSError: the address cannot be bound (in use, say).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sys.platform.startswith("linux") and family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def load_cert_pem(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a PEM certificate chain and its key into ``ctx`` (a server context).

    ``load_cert_chain`` only reads files: the key goes through a private temporary directory,
    0600, removed at once.
    """
    with tempfile.TemporaryDirectory(prefix="tm-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        ctx.load_cert_chain(cert, key)


async def start_tls_site(
    runner: web.AppRunner,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    freebind: bool,
    what: str,
    key: str,
) -> int:
    """Serve ``runner`` over TLS on ``host:port`` (``freebind``: the mesh IP, possibly not yet
    on the TUN); returns the bound port (``port`` 0 picks one).

    Raises:
        ConfigError: the address cannot be bound; the message names ``what`` and the config
            ``key``.
    """
    try:
        if freebind:
            site: web.BaseSite = web.SockSite(
                runner, freebind_socket(host, port), ssl_context=ssl_context
            )
        else:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot listen on {join_hostport(host, port)}: {exc.strerror}", key=key
        ) from None
    server = site._server
    assert server is not None
    return int(getattr(server, "sockets", [])[0].getsockname()[1])


async def stop_site(runner: web.AppRunner) -> None:
    """Stop serving ``runner``: a graceful cleanup, then every connection it left is aborted.

    A TLS connection whose client hung up while reading was paused never finishes its
    close_notify exchange (asyncio's SSL transport then ignores close()), and an SSE stream
    stays open: both are aborted, so no socket outlives the service.
    """
    server = runner.server
    open_ = [h.transport for h in server.connections if h.transport] if server else []
    await runner.cleanup()
    for transport in open_:
        transport.abort()


class AppService(Protocol):
    """A service that starts and stops with the coordinator's web application."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def serve_with_app(app: web.Application, service: AppService) -> None:
    """Start ``service`` when ``app`` starts and stop it when ``app`` stops; a start that
    fails stops what it began, and the error stops the coordinator's start."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        try:
            await service.start()
        except BaseException:
            await service.stop()
            raise
        try:
            yield
        finally:
            await service.stop()

    app.cleanup_ctx.append(lifecycle)
