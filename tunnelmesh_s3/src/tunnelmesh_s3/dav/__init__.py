"""WebDAV for the mesh's file shares (RFC 4918 classes 1 and 2), beside S3 over one store.

:func:`~tunnelmesh_s3.dav.server.build_dav_app` is the aiohttp application; the coordinator's S3
service serves it on its mesh IP (``s3.webdav_port``, plain HTTP: the mesh encrypts and
authenticates every packet, and the caller is the peer the connection comes from).
"""

from __future__ import annotations

from tunnelmesh_s3.dav.server import DavError, build_dav_app

__all__ = ["DavError", "build_dav_app"]
