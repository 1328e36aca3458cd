"""The ``s3:`` section of the coordinator's ``server.yaml``."""

from __future__ import annotations

import msgspec

__all__ = ["S3Section"]


class S3Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """S3 service settings on the coordinator.

    Attributes:
        enabled: serve S3 from the coordinator (off unless asked for).
        port: the port on the coordinator's mesh IP.
        listen: listen here instead of the mesh IP (``HOST:PORT``; ``127.0.0.1:0`` for tests);
            without it the coordinator must join its mesh (``join_mesh``).
        data_dir: where objects and grants live; default ``<data_dir>/s3``.
        region: the region clients sign for.
        storage: the storage backend (a name registered through ``tunnelmesh_register_storage``).
        nfs_port: NFSv3 for the shares (MOUNT v3 on the same port, no portmapper needed) on
            the coordinator's mesh IP; the caller is the peer the connection comes from;
            0 turns it off.
        nfs_listen: listen here instead (``HOST:PORT``; tests).
        webdav_port: WebDAV for the shares, plain HTTP on the coordinator's mesh IP (the mesh
            encrypts and authenticates; the caller is the peer the connection comes from);
            0 turns it off.
        webdav_listen: listen here instead (``HOST:PORT``; tests).
    """

    enabled: bool = False
    port: int = 9000
    listen: str = ""
    data_dir: str = ""
    region: str = "us-east-1"
    storage: str = "filesystem"
    nfs_port: int = 2049
    nfs_listen: str = ""
    webdav_port: int = 8080
    webdav_listen: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")
        if not 0 <= self.nfs_port <= 65535:
            raise ValueError(f"nfs_port must be between 0 (off) and 65535, got {self.nfs_port}")
        if not 0 <= self.webdav_port <= 65535:
            raise ValueError(
                f"webdav_port must be between 0 (off) and 65535, got {self.webdav_port}"
            )
