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
from tunnelmesh_s3.body import Body
from tunnelmesh_s3.errors import S3Error

if TYPE_CHECKING:
    from tunnelmesh_s3.app import S3Config

__all__ = ["MAX_DOCUMENT", "MAX_OBJECT_SIZE", "Call", "Handler"]

MAX_OBJECT_SIZE = 5 * 1024**3
"""The largest single PUT or part, as S3 (multipart objects may be larger)."""

MAX_DOCUMENT = 2 * 1024 * 1024
"""The largest request document (DeleteObjects, CompleteMultipartUpload, Tagging, ...)."""


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

    async def document(self, limit: int = MAX_DOCUMENT, *, own_checksums: bool = True) -> bytes:
        """The request's body (an XML document), verified as an object's body is: against its
        signed ``x-amz-content-sha256`` (or aws-chunked signatures), ``Content-MD5`` and
        ``x-amz-checksum-*``. A body declared or found longer than ``limit`` is refused before
        it is read (EntityTooLarge). ``own_checksums`` False: the ``x-amz-checksum-*``
        headers are not the document's (CompleteMultipartUpload's are the object's).

        Raises:
            S3Error: the body does not match what was signed or declared, or is too long.
        """
        body = Body(self.request, self.verified, max_size=limit, own_checksums=own_checksums)
        return b"".join([piece async for piece in body])


Handler = Callable[[Call], Awaitable[web.StreamResponse]]
