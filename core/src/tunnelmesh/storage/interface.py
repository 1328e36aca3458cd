"""The object storage interface: :class:`Storage`, what a backend implements, and the records it
answers with (:class:`ObjectInfo`, :class:`BucketInfo`, :class:`ObjectListing`, :class:`PartInfo`,
:class:`UploadInfo`), the streaming :class:`ObjectReader` and the optional :class:`LocalFiles`.

Plugins import these names from :mod:`tunnelmesh.abc`, the one module of interfaces; they are
written here, beside the naming rules (:mod:`tunnelmesh.storage`) and the conformance kit
(:mod:`tunnelmesh.storage.conformance`) every backend follows.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from tunnelmesh.errors import StorageError

__all__ = [
    "BucketInfo",
    "LocalFiles",
    "ObjectInfo",
    "ObjectListing",
    "ObjectReader",
    "PartInfo",
    "Storage",
    "UploadInfo",
]


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a storage backend knows of one stored object.

    Attributes:
        key: the object key (UTF-8 text, at most 1024 bytes).
        size: length in bytes.
        etag: the entity tag without quotes: the hex MD5 of the content for an object stored
            in one piece, ``<hex md5 of the parts' md5s>-<part count>`` after a multipart upload.
        last_modified: when the object was stored, seconds since the epoch.
        content_type: the media type given when it was stored.
        metadata: user metadata (S3's ``x-amz-meta-*``), names lower-cased without the prefix.
        headers: other stored response headers (``cache-control``, ``content-disposition``,
            ``content-encoding``, ``content-language``, ``expires``), names lower-cased; and
            ``x-amz-tagging``, the object's tag set as S3's header of that name carries it
            (the S3 service answers it as a count, never as a header).
        checksums: full-object checksums given by the writer, algorithm (``crc32``,
            ``crc32c``, ``sha1``, ``sha256``) to its base64 value.
        parts: the number of parts of a multipart object, 0 for an object stored in one piece.
        part_sizes: the sizes of those parts in order, as :meth:`Storage.head_object` and
            :meth:`Storage.open_object` report them (listings may leave it empty).
        part_checksums: the checksums each of those parts was uploaded with
            (:attr:`PartInfo.checksums`), in order, as :meth:`Storage.head_object` and
            :meth:`Storage.open_object` report them; empty when no part had any (listings may
            leave it empty).
    """

    key: str
    size: int
    etag: str
    last_modified: float
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = msgspec.field(default_factory=dict)
    headers: Mapping[str, str] = msgspec.field(default_factory=dict)
    checksums: Mapping[str, str] = msgspec.field(default_factory=dict)
    parts: int = 0
    part_sizes: Sequence[int] = ()
    part_checksums: Sequence[Mapping[str, str]] = ()


class BucketInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One bucket: its name and when it was created (seconds since the epoch)."""

    name: str
    created: float


class ObjectListing(msgspec.Struct, frozen=True, kw_only=True):
    """One page of :meth:`Storage.list_objects`.

    Attributes:
        objects: the objects of the page, in key order (UTF-8 byte order, as S3 sorts).
        prefixes: the common prefixes rolled up by the delimiter, in order.
        truncated: more entries follow; ask again with ``start_after=next_marker``.
        next_marker: the last key or common prefix of the page ("" when the page is empty).
    """

    objects: Sequence[ObjectInfo] = ()
    prefixes: Sequence[str] = ()
    truncated: bool = False
    next_marker: str = ""


class PartInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One uploaded part of a multipart upload (``etag`` is the part's hex MD5; ``checksums``
    the part's checksums given by the writer, algorithm to base64 value)."""

    number: int
    size: int
    etag: str
    last_modified: float
    checksums: Mapping[str, str] = msgspec.field(default_factory=dict)


class UploadInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One multipart upload in progress, with what its final object will carry."""

    upload_id: str
    bucket: str
    key: str
    initiated: float
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = msgspec.field(default_factory=dict)
    headers: Mapping[str, str] = msgspec.field(default_factory=dict)
    checksum_algorithm: str = ""
    """The checksum algorithm its parts carry (S3's ``x-amz-checksum-algorithm``), or ""."""


class ObjectReader(abc.ABC):
    """An open object: a consistent snapshot of one version, whatever writers do meanwhile.

    Readers are async resources: ``async with await storage.open_object(b, k) as r: ...``.
    """

    info: ObjectInfo
    """The object's info, fixed when it was opened."""

    @abc.abstractmethod
    def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of the object (``end`` None: to the end).

        Chunks are at most about 1 MiB, so memory stays bounded for any object size.

        Raises:
            ValueError: the range is not within ``0 <= start <= end <= info.size``.
            StorageError: the data could not be read, or the reader is closed.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the snapshot. Idempotent."""

    async def __aenter__(self) -> ObjectReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@runtime_checkable
class LocalFiles(Protocol):
    """An :class:`ObjectReader` whose bytes are plain files on this machine (optional).

    A server may then send them with ``sendfile`` instead of :meth:`ObjectReader.stream`.
    Backends whose data is not in local files do not implement it.
    """

    def local_files(self) -> Sequence[tuple[str, int]]:
        """The object's bytes as ``(path, length)`` files, in order, each read from offset 0.

        The files stay readable and unchanged until the reader is closed.

        Raises:
            StorageError: the reader is closed.
        """
        ...


class Storage(abc.ABC):
    """Stores objects in buckets: the S3 service's backend.

    Contract, for every backend:

    * **Atomic**: a write becomes visible whole or not at all. When the ``body`` iterator of a
      write raises (a client hung up, a signature or digest did not match), nothing is stored
      and the exception propagates. A crash mid-write leaves the old object (or none).
    * **Durable**: when a write returns, the data and its index survive a power cut.
    * **Contained**: keys are data, never paths; no key can reach outside the backend's store.
    * **Streaming**: bodies are consumed and produced in bounded chunks; memory does not grow
      with object size.

    Backends are created cheaply by their constructor (``cls(root, **options)``, with ``root``
    a directory the backend owns) and opened by :meth:`start` or ``async with``. Names follow
    S3: bucket names 3 to 63 of ``a-z0-9.-``; keys 1 to 1024 UTF-8 bytes, no NUL, no ``.`` or
    ``..`` segment (see :func:`tunnelmesh.storage.check_key`).

    Errors: :class:`~tunnelmesh.errors.NoSuchBucket`, :class:`~tunnelmesh.errors.NoSuchKey`,
    :class:`~tunnelmesh.errors.NoSuchUpload`, :class:`~tunnelmesh.errors.BucketAlreadyExists`,
    :class:`~tunnelmesh.errors.BucketNotEmpty`, :class:`~tunnelmesh.errors.InvalidName`,
    :class:`~tunnelmesh.errors.InvalidPart`; anything else as
    :class:`~tunnelmesh.errors.StorageError`. Every method raises ``StorageError`` after
    :meth:`aclose`.
    """

    name: ClassVar[str]

    min_part_size: ClassVar[int] = 5 * 1024 * 1024
    """Every part of a multipart upload but the last must be at least this long."""

    async def start(self) -> None:  # noqa: B027 - optional for backends with nothing to open
        """Open the store (create it when missing). Called once, before any other method."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the store; in-flight writes fail and store nothing. Idempotent."""

    async def __aenter__(self) -> Storage:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- buckets ---

    @abc.abstractmethod
    async def create_bucket(self, bucket: str) -> BucketInfo:
        """Create an empty bucket. Raises BucketAlreadyExists, InvalidName."""

    @abc.abstractmethod
    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket and its unfinished uploads. Raises BucketNotEmpty, NoSuchBucket."""

    @abc.abstractmethod
    async def head_bucket(self, bucket: str) -> BucketInfo:
        """Return the bucket's info. Raises NoSuchBucket."""

    @abc.abstractmethod
    async def list_buckets(self) -> list[BucketInfo]:
        """Every bucket, sorted by name."""

    # --- objects ---

    @abc.abstractmethod
    async def put_object(
        self,
        bucket: str,
        key: str,
        body: AsyncIterable[bytes],
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        checksums: Mapping[str, str] | None = None,
        precondition: Callable[[ObjectInfo | None], None] | None = None,
    ) -> ObjectInfo:
        """Store ``body`` under ``bucket``/``key``, replacing any object there.

        The object is visible only once complete and synced to disk (see the class contract).
        ``checksums`` is read only after ``body`` is exhausted, so the body's producer may fill
        it in at the end (checksums that arrive in trailers).

        ``precondition`` (conditional writes, ``If-None-Match: *``/``If-Match``) is called with
        the object the new one would replace (None when there is none) atomically with the
        replacement: no other write to the key can come between the check and the commit.
        When it raises, nothing is stored and the exception propagates. It must be quick and
        must not block; it may run on another thread.

        Raises:
            NoSuchBucket, InvalidName; whatever ``body`` or ``precondition`` raises (then
            nothing is stored).
        """

    @abc.abstractmethod
    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        """Return the object's info. Raises NoSuchBucket, NoSuchKey."""

    @abc.abstractmethod
    async def open_object(self, bucket: str, key: str) -> ObjectReader:
        """Open the object for reading. Raises NoSuchBucket, NoSuchKey."""

    @abc.abstractmethod
    async def delete_object(self, bucket: str, key: str) -> bool:
        """Remove an object; return whether it existed. Raises NoSuchBucket."""

    async def copy_object(
        self,
        src_bucket: str,
        src_key: str,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        precondition: Callable[[ObjectInfo | None], None] | None = None,
    ) -> ObjectInfo:
        """Copy an object; ``None`` arguments keep the source's values.

        ``precondition`` (S3's conditional writes on CopyObject's destination) is called as
        :meth:`put_object` calls it: with the object at ``bucket``/``key`` that the copy would
        replace (None when there is none), atomically with the replacement; when it raises,
        nothing changes and the exception propagates.

        The default streams the source through :meth:`put_object`; backends may do better.

        Raises:
            NoSuchBucket, NoSuchKey, InvalidName; whatever ``precondition`` raises.
        """
        async with await self.open_object(src_bucket, src_key) as reader:
            src = reader.info
            return await self.put_object(
                bucket,
                key,
                reader.stream(),
                content_type=src.content_type if content_type is None else content_type,
                metadata=src.metadata if metadata is None else metadata,
                headers=src.headers if headers is None else headers,
                checksums=src.checksums,
                precondition=precondition,
            )

    async def update_object_headers(
        self, bucket: str, key: str, changes: Mapping[str, str | None]
    ) -> ObjectInfo:
        """Change an object's stored :attr:`ObjectInfo.headers` in place and return its info.

        Each name of ``changes`` gets its value, or is removed when the value is None; the data,
        ETag, Last-Modified, metadata and other headers stay. Atomic: a concurrent write of the
        key comes wholly before or after it, and is never lost (S3's PutObjectTagging).

        The default refuses: a backend that can change one row in place implements it.

        Raises:
            NoSuchBucket, NoSuchKey; StorageError when the backend cannot.
        """
        raise StorageError(f"the {self.name} storage backend cannot change headers in place")

    @abc.abstractmethod
    async def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        max_keys: int = 1000,
    ) -> ObjectListing:
        """List objects in key order (UTF-8 byte order), S3 style.

        Args:
            prefix: only keys that start with it.
            delimiter: when given, keys with the delimiter after ``prefix`` roll up into one
                common prefix (up to and including the delimiter), which counts as one entry.
            start_after: only entries after it; when it is itself a common prefix, everything
                under that prefix is skipped too (so ``next_marker`` pages correctly).
            max_keys: at most this many entries (objects plus prefixes), 0 to 1000.

        Raises:
            NoSuchBucket.
        """

    # --- multipart uploads ---

    @abc.abstractmethod
    async def create_multipart_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        checksum_algorithm: str = "",
    ) -> UploadInfo:
        """Start a multipart upload. Raises NoSuchBucket, InvalidName.

        ``checksum_algorithm`` is kept with the upload (:attr:`UploadInfo.checksum_algorithm`).

        The new upload's ID sorts (as a string) after the ID of every earlier upload of the
        store, so that ordering uploads by ID is ordering them by initiation time.
        """

    @abc.abstractmethod
    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: AsyncIterable[bytes],
        *,
        checksums: Mapping[str, str] | None = None,
    ) -> PartInfo:
        """Store part ``number`` (1 to 10000), replacing an earlier part of that number.

        Atomic and durable like :meth:`put_object`. ``checksums`` (read once ``body`` is
        exhausted) are kept with the part (:attr:`PartInfo.checksums`).

        Raises:
            NoSuchUpload; whatever ``body`` raises (then nothing is stored).
        """

    @abc.abstractmethod
    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        """The upload's parts in number order. Raises NoSuchUpload."""

    @abc.abstractmethod
    async def complete_multipart_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        *,
        precondition: Callable[[ObjectInfo | None], None] | None = None,
        checksums: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Assemble the object from ``(number, etag)`` pairs, in ascending number order.

        ``checksums`` become the object's (:attr:`ObjectInfo.checksums`; S3's composite
        checksum of the parts' checksums); the parts' own checksums stay with the object
        (:attr:`ObjectInfo.part_checksums`).

        Parts not named are discarded. The object appears atomically. A number listed more than
        once (in a row) counts once, with the last ETag listed for it (as S3: a client that
        re-sent a part lists both answers). Completing an upload that was completed already (a
        client retrying after a lost response) returns the completed object's info again, for at
        least a day.

        ``precondition`` (conditional writes) is called as :meth:`put_object` calls it: with the
        object the new one would replace, atomically with the replacement; when it raises,
        nothing changes (the upload stays) and the exception propagates. A repeated completion
        returns the completed object without calling it.

        Raises:
            NoSuchUpload; InvalidPart (missing part, wrong ETag, descending order, or a part
            other than the last smaller than :attr:`min_part_size`).
        """

    @abc.abstractmethod
    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Discard the upload and its parts. Raises NoSuchUpload."""

    @abc.abstractmethod
    async def list_multipart_uploads(self, bucket: str, *, prefix: str = "") -> list[UploadInfo]:
        """Uploads in progress, by key (UTF-8 byte order) then upload ID. Raises NoSuchBucket.

        Upload IDs must sort (as strings) in initiation order among the uploads of one key, so
        that this is S3's order (by key, then initiation time) and a listing can resume right
        after an exact (key, upload ID) pair.
        """
