"""tunnelmesh-s3: an S3-compatible object store and file shares for the mesh.

The S3 API (:func:`tunnelmesh_s3.app.build_app`) is an aiohttp application built from a
:class:`tunnelmesh.abc.Storage` backend and an :class:`tunnelmesh_s3.auth.Authorizer`; the
coordinator serves it on its mesh IP, and ``tunnelmesh s3 serve`` runs it standalone.
"""

from __future__ import annotations

__all__: list[str] = []
