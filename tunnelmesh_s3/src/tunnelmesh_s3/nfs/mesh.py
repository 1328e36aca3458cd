"""The NFS listener of a coordinator's S3 service: NFSv3, MOUNT v3 and PMAP GETPORT on one port.

Started by :class:`~tunnelmesh_s3.mesh.MeshS3Service` beside S3 and WebDAV, over the same store
and grants (``MeshS3Service.shares``). Where it listens: ``s3.nfs_listen`` when set (tests),
otherwise the coordinator's own mesh IP on ``s3.nfs_port`` (2049; ``0`` turns NFS off), bound
with ``IP_FREEBIND`` like S3, so it is ready before the node puts the address on its TUN
device. Only that address: nothing on the host's other interfaces.

Plain NFS (AUTH_SYS) is safe there for the same reason as WebDAV: only mesh peers reach the
mesh IP, every packet is encrypted and authenticated, and the forwarder drops a packet whose
source address is not the sending peer's; the caller is the peer whose mesh IP the connection
comes from (the coordinator's own mesh IP is refused), never the uid it claims.

Clients need no portmapper: MOUNT is on the NFS port. libnfs:
``nfs://MESH-IP/SHARE?nfsport=2049&mountport=2049``; Linux:
``mount -t nfs -o vers=3,proto=tcp,port=2049,mountport=2049,nolock MESH-IP:/SHARE DIR``
(``nolock``: no NLM lock manager is served). A client that asks the portmapper on port 111
anyway finds nothing there; one that asks PMAP GETPORT on 2049 gets 2049.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

from tunnelmesh.control.urls import join_hostport, split_hostport
from tunnelmesh.errors import ConfigError
from tunnelmesh.metrics import add_collector, remove_collector

from tunnelmesh_s3.metrics import NfsCollector
from tunnelmesh_s3.nfs.ops import NfsService
from tunnelmesh_s3.nfs.server import NfsServer
from tunnelmesh_s3.shareaccess import ShareAccess

__all__ = ["NfsListener"]

log = logging.getLogger(__name__)


class NfsListener:
    """One NFS server over ``access``.

    Args:
        access: the shares (the S3 service's store and grants).
        root: the NFS state directory (handle table, handle secret, staging files).
        make_socket: ``(host, port)`` to a listening socket (the S3 service's freebind helper).
    """

    def __init__(
        self,
        access: ShareAccess,
        root: Path,
        make_socket: Callable[[str, int], socket.socket],
    ) -> None:
        self.access = access
        self.root = root
        self.make_socket = make_socket
        self.host = ""
        self.port = 0
        self.service: NfsService | None = None
        self._server: NfsServer | None = None
        self._collector: NfsCollector | None = None

    @property
    def address(self) -> str:
        """``HOST:PORT`` once listening, else ""."""
        return join_hostport(self.host, self.port) if self._server is not None else ""

    async def start(self, listen: str, default_port: int) -> None:
        """Listen on ``listen`` (``HOST[:PORT]``).

        Raises:
            ConfigError: the address cannot be bound.
        """
        host, port = split_hostport(listen, default_port)
        try:
            sock = self.make_socket(host, port)
        except OSError as exc:
            raise ConfigError(
                f"nfs: cannot listen on {join_hostport(host, port)}: {exc.strerror}",
                key="s3.nfs_port",
            ) from None
        self.port = int(sock.getsockname()[1])
        self.service = NfsService(self.access, self.root, port=lambda: self.port)
        self._server = NfsServer(self.service, sock)
        await self._server.start()
        self._collector = NfsCollector(self.service.calls, self._server.counters)
        add_collector(self._collector)  # on the process's /metrics while it serves
        self.host = host
        log.info(
            "nfs: serving shares on %s (libnfs: nfs://%s/SHARE?nfsport=%d&mountport=%d)",
            self.address,
            f"[{host}]" if ":" in host else host,
            self.port,
            self.port,
        )

    async def stop(self) -> None:
        """Stop listening and commit what clients wrote but did not commit yet."""
        if self._collector is not None:
            remove_collector(self._collector)
            self._collector = None
        server, self._server = self._server, None
        if server is not None:
            await server.aclose()
        service, self.service = self.service, None
        if service is not None:
            await service.aclose()
