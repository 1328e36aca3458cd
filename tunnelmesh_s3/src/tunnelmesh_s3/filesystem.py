"""The S3 service's default storage backend (``filesystem``): object data in files, an SQLite index beside them.

Layout of the directory it owns::

    ROOT/LOCK              flock'ed while a process has the store open (one process at a time)
    ROOT/index.sqlite3     buckets, objects, uploads and parts (see fsindex.py)
    ROOT/blobs/ab/<id>     object and part data, named by random ids, never by keys (the 256
                           shard directories ab/ are made when the store is)
    ROOT/tmp/<id>          copies in progress (copy_object where hard links fail)

A write streams into a blob file in its shard and fsyncs it, and only then commits the index row
that makes it visible (SQLite WAL with ``synchronous=FULL``); no index row names a blob before
that, so a reader never sees a partial one. The blob file is one of :data:`SLOTS` empty files
made ahead in one shard with one fsync of that directory, so that a write needs no directory
fsync of its own (when none is left, it makes its file and fsyncs the directory itself). An object of at most
:data:`INLINE_MAX` bytes skips the file: its bytes go into its index row, so the one commit
(whose WAL fsync concurrent writes share) makes it both durable and visible, and a read of it
needs no file. A crash at any point leaves the previous state plus, at worst, unreferenced files,
which :meth:`FilesystemStorage.start` removes. Since keys only ever appear as index data, no key
can name a path outside ROOT.

Reads see a snapshot: an open reader holds its blobs, and a blob that an overwrite or delete frees
is unlinked only after its last reader closes. Index writes run on one thread (group commit);
point reads (an object's or a bucket's row) use a second connection on the event loop itself,
with no thread hop, and see every commit that finished before them.

The blob files being written and the readers of stored objects are in :mod:`.fsfiles`, the
index in :mod:`.fsindex`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import os
import secrets
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tunnelmesh.abc import (
    BucketInfo,
    ObjectInfo,
    ObjectListing,
    ObjectReader,
    PartInfo,
    Storage,
    UploadInfo,
)
from tunnelmesh.errors import StorageError
from tunnelmesh.storage import check_bucket_name, check_key

from tunnelmesh_s3.fsfiles import CHUNK, _BlobFile, _fsync_dir, _InlineReader, _Reader
from tunnelmesh_s3.fsindex import Index, Segment

__all__ = ["FilesystemStorage"]

T = TypeVar("T")

WRITE_BATCH = 4 * CHUNK
"""Bytes a write gathers before it hands them to a thread (one ``writev``, one hash update)."""

MAX_IOV = 512
"""At most this many pieces per ``writev`` (below every system's IOV_MAX)."""

MAX_PARTS = 10_000

SLOTS = 16
"""Empty blob files made ahead at a time (their directory entries synced once for all)."""

INLINE_MAX = 64 * 1024
"""Objects up to this size are stored in their index row (see the module docstring)."""


def _settle_all(settled: Sequence[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Give each future of a batch its result (True) or exception (False)."""
    for future, ok, value in settled:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


async def _read_head(body: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], int, bool]:
    """The body's first pieces, until more than ``limit`` bytes came or it ended.

    Returns (pieces, their size, whether the body ended).
    """
    pieces: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = await anext(body)
        except StopAsyncIteration:
            return pieces, size, True
        if chunk:
            pieces.append(chunk)
            size += len(chunk)
    return pieces, size, False


async def _chain(head: Sequence[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for piece in head:
        yield piece
    async for piece in rest:
        yield piece


class FilesystemStorage(Storage):
    """Objects as files under one directory, indexed by SQLite. See the module docstring.

    Args:
        root: the directory the store owns (created when missing).
        io_threads: threads for file reads and writes.
    """

    name: ClassVar[str] = "filesystem"

    def __init__(self, root: str | os.PathLike[str], *, io_threads: int = 8) -> None:
        self.root = Path(root)
        self._io_threads = io_threads
        self._index: Index | None = None
        self._reads: Index | None = None
        self._db_pool: ThreadPoolExecutor | None = None
        self._io_pool: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._pending_lock = threading.Lock()
        self._flush_queued = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: dict[str, int] = {}
        self._doomed: set[str] = set()
        self._closed = False
        self._last_upload_ns = 0
        self._slots: list[str] = []
        self._slots_lock = threading.Lock()
        self._refilling = False

    # --- plumbing ---

    async def start(self) -> None:
        """Create or open the store, take its lock and clear what a crash left behind.

        Raises:
            StorageError: another process has the store open, or it cannot be created.
        """
        try:
            for sub in ("blobs", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create the store at {self.root}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StorageError(f"{self.root} is in use by another process") from None
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="tm-storage-db")
        self._io_pool = ThreadPoolExecutor(self._io_threads, thread_name_prefix="tm-storage-io")
        self._index = await self._db(Index, self.root / "index.sqlite3")
        await self._db(self._recover)
        await self._db(self._make_shards)
        self._refilling = True
        await self._io(self._make_slots)
        self._reads = Index(self.root / "index.sqlite3", reads_only=True)

    def _recover(self) -> None:
        """Delete writes in progress and blobs no row references (left by a crash)."""
        for tmp in (self.root / "tmp").iterdir():
            tmp.unlink()
        assert self._index is not None
        live = self._index.all_blobs()
        for shard in (self.root / "blobs").iterdir():
            for blob in shard.iterdir():
                if blob.name not in live:
                    blob.unlink()

    def _make_shards(self) -> None:
        """The 256 shard directories, made once (a write then never makes one)."""
        blobs = self.root / "blobs"
        made = False
        for n in range(256):
            shard = blobs / f"{n:02x}"
            if not shard.is_dir():
                shard.mkdir(exist_ok=True)
                made = True
        if made:
            _fsync_dir(blobs)

    def _make_slots(self) -> None:
        """:data:`SLOTS` empty blob files in one shard, their entries synced by one fsync."""
        try:
            shard = f"{secrets.randbelow(256):02x}"
            made = []
            for _ in range(SLOTS):
                blob = shard + secrets.token_hex(15)
                os.close(
                    os.open(self._blob_path(blob), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                )
                made.append(blob)
            _fsync_dir(self.root / "blobs" / shard)
            with self._slots_lock:
                self._slots += made
        finally:
            with self._slots_lock:
                self._refilling = False

    def _take_slot(self) -> str | None:
        """A made-ahead blob file, if one is left; makes more in the background when few are."""
        with self._slots_lock:
            blob = self._slots.pop() if self._slots else None
            refill = len(self._slots) < SLOTS // 2 and not self._refilling
            if refill:
                self._refilling = True
        if refill and self._io_pool is not None:
            # a failure leaves writes making their own files; recovery removes unused slots
            self._io_pool.submit(self._make_slots)
        return blob

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reads is not None:
            self._reads.close()
        if self._index is not None:
            await self._db(self._index.close)
        for pool in (self._db_pool, self._io_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db_pool is None:
            raise StorageError("storage is not started")
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an index write; concurrent writes share one transaction (group commit).

        A commit costs an fsync (milliseconds); batching the writes that queue up meanwhile
        makes many small concurrent PUTs cost one fsync per batch instead of one each.
        """
        return await self._queue_write(fn, *args)

    def _queue_write(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """:meth:`_write` as the future of its result (a caller may shield it without a task)."""
        if self._db_pool is None:
            raise StorageError("storage is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append((fn, args, future))
            queue = not self._flush_queued
            self._flush_queued = True
        if queue:
            self._loop = loop
            self._db_pool.submit(self._flush)
        return future

    def _flush(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._flush_queued = False
        if not batch or self._index is None or self._loop is None:
            return
        results = self._index.batch([(fn, args) for fn, args, _ in batch])
        # one wake-up of the event loop for the whole batch
        self._loop.call_soon_threadsafe(
            _settle_all,
            [
                (future, ok, value)
                for (ok, value), (_, _, future) in zip(results, batch, strict=True)
            ],
        )

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        if self._io_pool is None:
            raise StorageError("storage is not started")
        return await asyncio.get_running_loop().run_in_executor(self._io_pool, fn, *args)

    def _idx(self) -> Index:
        if self._closed or self._index is None:
            raise StorageError("storage is closed" if self._closed else "storage is not started")
        return self._index

    def _lookup(self) -> Index:
        """The connection for point reads, run on the event loop without a thread hop: one
        row by its primary key, from pages the OS has cached (WAL: never waits for a writer)."""
        if self._closed or self._reads is None:
            raise StorageError("storage is closed" if self._closed else "storage is not started")
        return self._reads

    def _blob_path(self, blob: str) -> Path:
        return self.root / "blobs" / blob[:2] / blob

    def _hold(self, blobs: Sequence[str]) -> None:
        for blob in blobs:
            self._readers[blob] = self._readers.get(blob, 0) + 1

    def _release(self, blobs: Sequence[str]) -> None:
        for blob in blobs:
            left = self._readers[blob] - 1
            if left:
                self._readers[blob] = left
                continue
            del self._readers[blob]
            if blob in self._doomed:
                self._doomed.discard(blob)
                self._unlink(blob)

    def _free(self, blobs: Sequence[str]) -> None:
        """Delete blobs that no row references, once no reader holds them."""
        for blob in blobs:
            if blob in self._readers:
                self._doomed.add(blob)
            else:
                self._unlink(blob)

    def _unlink(self, blob: str) -> None:
        # A leftover (unlink failed) is removed by the next start's recovery.
        with contextlib.suppress(OSError):
            self._blob_path(blob).unlink()

    async def _write_blob(self, body: AsyncIterable[bytes]) -> tuple[str, int, str]:
        """Stream ``body`` into a new synced blob; return (id, size, hex md5).

        The body's pieces are kept as they arrive (no copy) and handed over in batches of
        :data:`WRITE_BATCH`: one thread hashes a batch and another writes it (``writev``) while
        the event loop receives the next. The last batch too: its hash runs beside its write
        and the fsyncs (the file's, then its directory's), which wait on the disk.
        """
        self._idx()
        assert self._io_pool is not None
        pool = self._io_pool
        slot = self._take_slot()
        blob = slot or secrets.token_hex(16)
        file = _BlobFile(self._blob_path(blob), made=slot is not None)
        size = 0
        hashing: concurrent.futures.Future[None] | None = None
        writing: concurrent.futures.Future[None] | None = None
        try:
            pieces: list[bytes] = []
            pending = 0
            async for chunk in body:
                if not chunk:
                    continue
                pieces.append(chunk)
                pending += len(chunk)
                if pending >= WRITE_BATCH or len(pieces) >= MAX_IOV:
                    if hashing is not None:
                        await asyncio.wrap_future(hashing)
                    if writing is not None:
                        await asyncio.wrap_future(writing)
                    hashing = pool.submit(file.hash, pieces)
                    writing = pool.submit(file.write, pieces)
                    size += pending
                    pieces, pending = [], 0
            if hashing is not None:
                await asyncio.wrap_future(hashing)
            if writing is not None:
                await asyncio.wrap_future(writing)
            size += pending
            hashing = pool.submit(file.hash, pieces)
            writing = pool.submit(file.finish, pieces)
            await asyncio.wrap_future(hashing)
            await asyncio.wrap_future(writing)
        except BaseException:
            if writing is not None and not writing.done():
                # a thread may still be writing to the file: discard it once that write ends
                writing.add_done_callback(file.discard)
            else:
                file.discard()
            raise
        return blob, size, file.md5.hexdigest()

    def _install(self, tmp: Path, blob: str) -> None:
        path = self._blob_path(blob)
        os.rename(tmp, path)
        _fsync_dir(path.parent)

    def _link_blob(self, blob: str) -> str:
        """A new blob with the same content (a hard link; a copy where links fail)."""
        new = secrets.token_hex(16)
        tmp = self.root / "tmp" / new
        try:
            os.link(self._blob_path(blob), tmp)
        except OSError:
            with open(self._blob_path(blob), "rb") as src, open(tmp, "xb") as dst:
                while data := src.read(CHUNK):
                    dst.write(data)
                dst.flush()
                os.fsync(dst.fileno())
        self._install(tmp, new)
        return new

    async def _commit_blobs(self, blobs: Sequence[str], commit: Callable[[], Any]) -> Any:
        """Run an index commit that references ``blobs``; free them if it fails.

        A cancelled caller does not cancel the commit (it may be running already); blobs of a
        commit that never ran are removed by the next start's recovery.
        """
        try:
            return await asyncio.shield(self._queue_write(commit))
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._free(blobs)
            raise

    # --- buckets ---

    async def create_bucket(self, bucket: str) -> BucketInfo:
        check_bucket_name(bucket)
        return await self._write(self._idx().create_bucket, bucket)

    async def delete_bucket(self, bucket: str) -> None:
        self._free(await self._write(self._idx().delete_bucket, bucket))

    async def head_bucket(self, bucket: str) -> BucketInfo:
        return self._lookup().head_bucket(bucket)

    async def list_buckets(self) -> list[BucketInfo]:
        return await self._db(self._idx().list_buckets)

    # --- objects ---

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
        check_key(key)
        index = self._idx()
        rest = aiter(body)
        head, size, ended = await _read_head(rest, INLINE_MAX)

        def describe(size: int, etag: str) -> ObjectInfo:
            return ObjectInfo(
                key=key,
                size=size,
                etag=etag,
                last_modified=time.time(),
                content_type=content_type,
                metadata=dict(metadata or {}),
                headers=dict(headers or {}),
                checksums=dict(checksums or {}),
            )

        if ended:
            # small: the bytes go into the index row, hashed in the index thread at the commit
            data = b"".join(head)

            def commit_inline() -> tuple[ObjectInfo, list[str]]:
                etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
                info = describe(len(data), etag)
                return info, index.put_object(bucket, info, [], precondition, data)

            done: tuple[ObjectInfo, list[str]] = await self._commit_blobs([], commit_inline)
            self._free(done[1])
            return done[0]
        await self.head_bucket(bucket)  # before the rest of a large body is uploaded
        blob, size, etag = await self._write_blob(_chain(head, rest))
        info = describe(size, etag)
        freed = await self._commit_blobs(
            [blob], lambda: index.put_object(bucket, info, [(blob, size)], precondition)
        )
        self._free(freed)
        return info

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        check_key(key)
        info, _, _ = self._lookup().get_object(bucket, key)
        return info

    async def open_object(self, bucket: str, key: str) -> ObjectReader:
        return await self._open(bucket, key)

    async def _open(self, bucket: str, key: str) -> _Reader | _InlineReader:
        check_key(key)
        info, segments, data = self._lookup().get_object(bucket, key)
        if data is not None:
            return _InlineReader(info, data)
        return _Reader(self, info, segments)

    async def delete_object(self, bucket: str, key: str) -> bool:
        check_key(key)
        existed, freed = await self._write(self._idx().delete_object, bucket, key)
        self._free(freed)
        return existed

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
        check_key(key)
        await self.head_bucket(bucket)
        index = self._idx()
        reader = await self._open(src_bucket, src_key)
        data: bytes | None = None
        segments: list[Segment] = []
        try:
            src = reader.info
            if isinstance(reader, _InlineReader):
                data = reader._data
            else:
                try:
                    for blob, size in reader._segments:
                        segments.append((await self._io(self._link_blob, blob), size))
                except BaseException:
                    self._free([blob for blob, _ in segments])
                    raise
        finally:
            await reader.aclose()
        info = ObjectInfo(
            key=key,
            size=src.size,
            etag=src.etag,
            last_modified=time.time(),
            content_type=src.content_type if content_type is None else content_type,
            metadata=dict(src.metadata if metadata is None else metadata),
            headers=dict(src.headers if headers is None else headers),
            checksums=dict(src.checksums),
            parts=src.parts,
            part_checksums=src.part_checksums,
        )
        blobs = [blob for blob, _ in segments]
        freed = await self._commit_blobs(
            blobs, lambda: index.put_object(bucket, info, segments, precondition, data)
        )
        self._free(freed)
        return info

    async def update_object_headers(
        self, bucket: str, key: str, changes: Mapping[str, str | None]
    ) -> ObjectInfo:
        check_key(key)
        return await self._write(self._idx().update_headers, bucket, key, dict(changes))

    async def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        max_keys: int = 1000,
    ) -> ObjectListing:
        max_keys = max(0, min(max_keys, 1000))
        return await self._db(
            self._idx().list_objects, bucket, prefix, delimiter, start_after, max_keys
        )

    # --- multipart uploads ---

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
        check_key(key)
        upload_id, initiated = self._new_upload_id()
        upload = UploadInfo(
            upload_id=upload_id,
            bucket=bucket,
            key=key,
            initiated=initiated,
            content_type=content_type,
            metadata=dict(metadata or {}),
            headers=dict(headers or {}),
            checksum_algorithm=checksum_algorithm,
        )
        await self._write(self._idx().create_upload, upload)
        return upload

    def _new_upload_id(self) -> tuple[str, float]:
        """A new upload ID and its initiation time; IDs sort (as strings) in initiation order.

        16 hex digits of nanoseconds since the epoch (strictly increasing within this store
        even if the clock steps back), then 24 random bytes.
        """
        ns = max(time.time_ns(), self._last_upload_ns + 1)
        self._last_upload_ns = ns
        return f"{ns:016x}{secrets.token_urlsafe(24)}", ns / 1e9

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
        if not 1 <= number <= MAX_PARTS:
            raise StorageError(f"part number must be 1 to {MAX_PARTS}, got {number}")
        check_key(key)
        index = self._idx()
        await self._db(index.get_upload, bucket, key, upload_id)
        blob, size, etag = await self._write_blob(body)
        part = PartInfo(
            number=number,
            size=size,
            etag=etag,
            last_modified=time.time(),
            checksums=dict(checksums or {}),
        )
        freed = await self._commit_blobs(
            [blob], lambda: index.put_part(bucket, key, upload_id, part, blob)
        )
        self._free(freed)
        return part

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        check_key(key)
        return await self._db(self._idx().list_parts, bucket, key, upload_id)

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
        check_key(key)
        info, freed = await self._write(
            self._idx().complete_upload,
            bucket,
            key,
            upload_id,
            list(parts),
            self.min_part_size,
            precondition,
            dict(checksums or {}),
        )
        self._free(freed)
        return info

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        check_key(key)
        self._free(await self._write(self._idx().abort_upload, bucket, key, upload_id))

    async def list_multipart_uploads(self, bucket: str, *, prefix: str = "") -> list[UploadInfo]:
        return await self._db(self._idx().list_uploads, bucket, prefix)
