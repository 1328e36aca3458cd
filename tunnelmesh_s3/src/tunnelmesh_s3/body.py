"""The request body as the storage backend consumes it: decoded, counted and verified.

:class:`Body` is an async iterator over an aiohttp request's payload that

* decodes ``aws-chunked`` bodies, releasing a chunk only once its signature checks;
* checks the declared ``x-amz-content-sha256``, ``Content-MD5`` and ``x-amz-checksum-*``
  values (in headers or trailers), and the length, when the body ends;
* raises :class:`~tunnelmesh_s3.errors.S3Error` on any mismatch *before* its last chunk is
  taken, so the backend stores nothing (see the :class:`~tunnelmesh.abc.Storage` contract).

Memory is bounded by one network read plus, for signed chunks, one chunk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import google_crc32c
from aiohttp import web

from tunnelmesh_s3 import sigv4
from tunnelmesh_s3.errors import S3Error

__all__ = ["CHECKSUM_ALGORITHMS", "Body"]

HASH_BATCH = 1024 * 1024
"""A body's digests are computed in a thread, a batch of this many bytes at a time, while the
next batch arrives; a body smaller than one batch is hashed on the event loop (no thread hop)."""


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    """A reflected table-driven CRC (for CRC64/NVME, which neither zlib nor google-crc32c has;
    pure Python, about 8 MiB/s)."""

    _tables: dict[tuple[int, int], list[int]] = {}

    def __init__(self, poly: int, width: int) -> None:
        self.width = width
        self.mask = (1 << width) - 1
        table = self._tables.get((poly, width))
        if table is None:
            table = []
            for byte in range(256):
                crc = byte
                for _ in range(8):
                    crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
                table.append(crc)
            self._tables[(poly, width)] = table
        self.table = table
        self.crc = self.mask

    def update(self, data: bytes) -> None:
        crc, table = self.crc, self.table
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        self.crc = crc

    def digest(self) -> bytes:
        return (self.crc ^ self.mask).to_bytes(self.width // 8, "big")


class _Crc32:
    def __init__(self) -> None:
        self.crc = 0

    def update(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)

    def digest(self) -> bytes:
        return self.crc.to_bytes(4, "big")


CHECKSUM_ALGORITHMS: dict[str, Callable[[], _Hasher]] = {
    "crc32": _Crc32,
    "crc32c": google_crc32c.Checksum,
    "crc64nvme": lambda: _Crc(0x9A6C9329AC4BC9B5, 64),
    "sha1": lambda: hashlib.sha1(usedforsecurity=False),
    "sha256": hashlib.sha256,
}


def declared_checksums(headers: Any) -> dict[str, str]:
    """``x-amz-checksum-<alg>`` headers of a request: algorithm to base64 value."""
    out = {}
    for alg in CHECKSUM_ALGORITHMS:
        value = headers.get(f"x-amz-checksum-{alg}")
        if value is not None:
            out[alg] = value.strip()
    return out


class Body:
    """The verified payload of one request. Iterate it once.

    Attributes:
        checksums: the verified ``x-amz-checksum-*`` values; complete once iteration ends.
        size: payload bytes seen so far.
    """

    def __init__(
        self,
        request: web.Request,
        verified: sigv4.Verified,
        *,
        max_size: int,
        own_checksums: bool = True,
    ) -> None:
        """``own_checksums``: whether the request's ``x-amz-checksum-*`` headers are this
        body's (not in CompleteMultipartUpload, where they are the object's)."""
        self.request = request
        self.verified = verified
        self.max_size = max_size
        self.size = 0
        self.checksums: dict[str, str] = {}
        headers = request.headers
        self._decoder = verified.chunk_decoder()
        self._sha256 = None
        if self._decoder is None and verified.payload != sigv4.UNSIGNED:
            if len(verified.payload) != 64:
                raise S3Error("InvalidArgument", "x-amz-content-sha256 must be a hex SHA-256")
            self._sha256 = hashlib.sha256()
        self._md5 = None
        self._expected_md5 = b""
        if (content_md5 := headers.get("Content-MD5")) is not None:
            try:
                self._expected_md5 = base64.b64decode(content_md5, validate=True)
            except binascii.Error:
                self._expected_md5 = b""
            if len(self._expected_md5) != 16:
                raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
            self._md5 = hashlib.md5(usedforsecurity=False)
        self._declared = declared_checksums(headers) if own_checksums else {}
        trailer = headers.get("x-amz-trailer", "").strip().lower()
        if trailer:
            alg = trailer.removeprefix("x-amz-checksum-")
            if alg not in CHECKSUM_ALGORITHMS or self._decoder is None:
                raise S3Error("InvalidRequest", f"unsupported x-amz-trailer {trailer!r}")
            self._trailer_alg: str | None = alg
        else:
            self._trailer_alg = None
        if (sdk_alg := headers.get("x-amz-sdk-checksum-algorithm")) and not (
            self._declared or self._trailer_alg
        ):
            raise S3Error(
                "InvalidRequest", f"x-amz-sdk-checksum-algorithm {sdk_alg} without a value"
            )
        algs = set(self._declared) | ({self._trailer_alg} if self._trailer_alg else set())
        self._hashers = {alg: CHECKSUM_ALGORITHMS[alg]() for alg in algs}
        self._expected_length: int | None = None
        if self._decoder is not None:
            decoded = headers.get("x-amz-decoded-content-length")
            if decoded is not None:
                self._expected_length = _int(decoded, "x-amz-decoded-content-length")
        elif request.content_length is not None:
            self._expected_length = request.content_length
        if self._expected_length is not None and self._expected_length > max_size:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")

    def _account(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_size:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")

    def _digests(self) -> list[_Hasher]:
        """The hashers every piece goes through (the SHA-256 only without aws-chunked, where
        the raw bytes are the pieces)."""
        hashers: list[_Hasher] = [h for h in (self._sha256, self._md5) if h is not None]
        return hashers + list(self._hashers.values())

    async def __aiter__(self) -> AsyncIterator[bytes]:
        hashers = self._digests()
        batch: list[bytes] = []
        batched = 0
        hashing: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        content = self.request.content
        while True:
            # readchunk hands over each piece aiohttp received as it is (readany would join
            # the pieces buffered meanwhile into one new bytes: a copy of the body)
            raw, _ = await content.readchunk()
            if not raw:
                # the end of the body, or of an HTTP chunk; not iter_chunks: the shared
                # reader of every bodiless request answers its end only once per process
                if content.at_eof():
                    break
                continue
            if self._decoder is not None:
                try:
                    pieces = self._decoder.feed(raw)
                except sigv4.SigV4Error as exc:
                    raise S3Error(exc.code, exc.message) from None
            else:
                pieces = [raw]
            for piece in pieces:
                self._account(piece)
                if hashers:
                    batch.append(piece)
                    batched += len(piece)
                yield piece
            if batched >= HASH_BATCH:
                if hashing is not None:
                    await hashing
                hashing = loop.run_in_executor(None, _update, hashers, batch)
                batch, batched = [], 0
        if hashing is not None:
            await hashing
        _update(hashers, batch)
        # A failed check raises into the backend while it is still writing: nothing is stored.
        self._finish()

    def _finish(self) -> None:
        if self._decoder is not None:
            try:
                self._decoder.close()
            except sigv4.SigV4Error as exc:
                raise S3Error(exc.code, exc.message) from None
        if self._expected_length is not None and self.size != self._expected_length:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header",
            )
        if self._sha256 is not None and self._sha256.hexdigest() != self.verified.payload.lower():
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        if self._md5 is not None and self._md5.digest() != self._expected_md5:
            raise S3Error(
                "BadDigest", "The Content-MD5 you specified did not match what we received."
            )
        declared = dict(self._declared)
        if self._trailer_alg is not None and self._decoder is not None:
            value = self._decoder.trailers.get(f"x-amz-checksum-{self._trailer_alg}")
            if value is None:
                raise S3Error("InvalidRequest", "the declared checksum trailer is missing")
            declared[self._trailer_alg] = value
        for alg, value in declared.items():
            computed = base64.b64encode(self._hashers[alg].digest()).decode()
            if computed != value:
                raise S3Error(
                    "BadDigest",
                    f"The {alg.upper()} you specified did not match the calculated checksum.",
                )
            self.checksums[alg] = computed


def _update(hashers: Sequence[_Hasher], pieces: Sequence[bytes]) -> None:
    # in a thread for large batches: hashlib releases the GIL for data over 2 KiB
    for hasher in hashers:
        for piece in pieces:
            hasher.update(piece)


def _int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be an integer") from None
    if number < 0:
        raise S3Error("InvalidArgument", f"{name} must not be negative")
    return number
