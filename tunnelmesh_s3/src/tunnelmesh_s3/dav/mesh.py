"""The WebDAV listener of a coordinator's S3 service: plain HTTP on the mesh IP.

Started by :class:`~tunnelmesh_s3.mesh.MeshS3Service` beside S3, over the same store and grants.
Where it listens: ``s3.webdav_listen`` when set (tests), otherwise the coordinator's own mesh IP
on ``s3.webdav_port`` (``0`` turns WebDAV off), bound with ``IP_FREEBIND`` like S3, so it is
ready before the node puts the address on its TUN device.

Plain HTTP is safe there: only mesh peers reach the mesh IP, every packet is encrypted and
authenticated by WireGuard, and the forwarder drops a packet whose source address is not the
sending peer's. The caller is the peer whose mesh IP the connection comes from; a connection
from the coordinator's own mesh IP is refused (any local user of that machine could make one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from aiohttp import web
from tunnelmesh.control.urls import join_hostport, split_hostport
from tunnelmesh.errors import ConfigError

from tunnelmesh_s3.dav.server import build_dav_app
from tunnelmesh_s3.shareaccess import ShareAccess

__all__ = ["DavListener"]

log = logging.getLogger(__name__)


class DavListener:
    """One WebDAV site over ``access``.

    Args:
        access: the shares (the S3 service's store and grants).
        make_socket: ``(host, port)`` to a listening socket (the S3 service's freebind helper).
        domains: the mesh's DNS suffixes, which a request's ``Host`` may name (else an IP).
    """

    def __init__(
        self,
        access: ShareAccess,
        make_socket: Callable[[str, int], object],
        domains: Sequence[str] = (),
    ) -> None:
        self.access = access
        self.domains = tuple(domains)
        self.make_socket = make_socket
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` once listening, else ""."""
        return f"http://{join_hostport(self.host, self.port)}" if self._runner else ""

    async def start(self, listen: str, default_port: int) -> None:
        """Listen on ``listen`` (``HOST[:PORT]``).

        Raises:
            ConfigError: the address cannot be bound.
        """
        host, port = split_hostport(listen, default_port)
        runner = web.AppRunner(
            build_dav_app(self.access, domains=self.domains), access_log=None, handle_signals=False
        )
        await runner.setup()
        try:
            sock = self.make_socket(host, port)
            site = web.SockSite(runner, sock)  # type: ignore[arg-type]
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"webdav: cannot listen on {join_hostport(host, port)}: {exc.strerror}",
                key="s3.webdav_port",
            ) from None
        self._runner = runner
        self.host = host
        self.port = int(sock.getsockname()[1])  # type: ignore[attr-defined]
        log.info("webdav: serving shares on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            server = runner.server
            open_ = [h.transport for h in server.connections if h.transport] if server else []
            await runner.cleanup()
            for transport in open_:
                transport.abort()
