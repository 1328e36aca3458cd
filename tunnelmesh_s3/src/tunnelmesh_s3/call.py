"""One authenticated S3 request as the handlers see it (:class:`Call`), and their type.

The dispatcher (:mod:`tunnelmesh_s3.app`) makes a :class:`Call` and hands it to a
:data:`Handler` of :mod:`.buckets`, :mod:`.objects` or :mod:`.admin`; those modules import this
one, not the dispatcher.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from tunnelmesh.abc import Storage
from tunnelmesh.errors import NoSuchBucket

from tunnelmesh_s3 import sigv4
from tunnelmesh_s3.auth import Action, Authorizer, Principal
from tunnelmesh_s3.errors import S3Error

if TYPE_CHECKING:
    from tunnelmesh_s3.app import S3Config

__all__ = ["MAX_OBJECT_SIZE", "Call", "Handler"]

MAX_OBJECT_SIZE = 5 * 1024**3
"""The largest single PUT or part, as S3 (multipart objects may be larger)."""


@dataclass
class Call:
    """One authenticated S3 request, as handlers see it."""

    request: web.Request
    storage: Storage
    auth: Authorizer
    config: S3Config
    principal: Principal
    verified: sigv4.Verified
    bucket: str
    key: str
    params: dict[str, str] = field(default_factory=dict)
    request_id: str = ""

    async def need(self, action: Action, bucket: str | None = None) -> None:
        """Raise AccessDenied (or NoSuchBucket) unless the caller may ``action`` the bucket."""
        bucket = self.bucket if bucket is None else bucket
        if self.auth.allowed(self.principal, bucket, action):
            return
        try:
            await self.storage.head_bucket(bucket)
        except NoSuchBucket:
            raise S3Error(
                "NoSuchBucket", "The specified bucket does not exist", BucketName=bucket
            ) from None
        raise S3Error("AccessDenied", "Access Denied")


Handler = Callable[[Call], Awaitable[web.StreamResponse]]
