"""The files of the filesystem backend (:mod:`.filesystem`): a blob being written
(:class:`_BlobFile`: ``writev``, MD5, one ``fsync``), a directory's ``fsync``, and the readers of
a stored object (:class:`_Reader` over its blob files, which it holds until closed;
:class:`_InlineReader` over the bytes of its index row).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tunnelmesh.abc import ObjectInfo, ObjectReader
from tunnelmesh.errors import StorageError

from tunnelmesh_s3.fsindex import Segment

if TYPE_CHECKING:
    from tunnelmesh_s3.filesystem import FilesystemStorage

__all__ = ["CHUNK"]

CHUNK = 1024 * 1024
"""Bytes per chunk a reader yields."""


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _writev_all(fd: int, pieces: Sequence[bytes]) -> None:
    """Write ``pieces`` in order with one ``writev`` (more only after a short write)."""
    done = os.writev(fd, pieces)
    for piece in pieces:
        if done >= len(piece):
            done -= len(piece)
            continue
        _write_all(fd, memoryview(piece)[done:])
        done = 0


class _BlobFile:
    """A blob being written in its shard: its thread-side steps (each runs in an io thread)."""

    def __init__(self, path: Path, *, made: bool = False) -> None:
        self.path = path
        self.made = made
        """The file exists already, its directory entry synced (a slot)."""
        self.fd = -1
        self.md5 = hashlib.md5(usedforsecurity=False)

    def hash(self, pieces: Sequence[bytes]) -> None:
        for piece in pieces:  # hashlib releases the GIL for pieces over 2 KiB
            self.md5.update(piece)

    def write(self, pieces: Sequence[bytes]) -> None:
        if self.fd < 0:
            flags = os.O_WRONLY if self.made else os.O_WRONLY | os.O_CREAT | os.O_EXCL
            self.fd = os.open(self.path, flags, 0o600)
        if pieces:
            _writev_all(self.fd, pieces)

    def finish(self, pieces: Sequence[bytes]) -> None:
        """Write the last pieces, fsync the file once, close it (and fsync its directory when
        the file is new)."""
        self.write(pieces)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if not self.made:
            _fsync_dir(self.path.parent)

    def discard(self, _: object = None) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            self.path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Reader(ObjectReader):
    def __init__(self, store: FilesystemStorage, info: ObjectInfo, segments: list[Segment]) -> None:
        self.info = info
        self._store = store
        self._segments = segments
        self._closed = False
        store._hold([blob for blob, _ in segments])

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        size = self.info.size
        end = size if end is None else end
        if not 0 <= start <= end <= size:
            raise ValueError(f"range [{start}, {end}) is outside the object (size {size})")
        offset = 0
        for blob, length in self._segments:
            seg_start, seg_end = max(start - offset, 0), min(end - offset, length)
            offset += length
            if seg_start >= seg_end:
                continue
            if self._closed:
                raise StorageError("reader is closed")
            fd = await self._store._io(os.open, self._store._blob_path(blob), os.O_RDONLY)
            try:
                pos = seg_start
                while pos < seg_end:
                    data = await self._store._io(os.pread, fd, min(CHUNK, seg_end - pos), pos)
                    if not data:
                        raise StorageError(f"blob {blob} is shorter than the index says")
                    pos += len(data)
                    yield data
            finally:
                os.close(fd)

    def local_files(self) -> list[tuple[str, int]]:
        if self._closed:
            raise StorageError("reader is closed")
        return [(str(self._store._blob_path(blob)), length) for blob, length in self._segments]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._store._release([blob for blob, _ in self._segments])


class _InlineReader(ObjectReader):
    """A reader of an object stored in its index row: the bytes are in memory already."""

    def __init__(self, info: ObjectInfo, data: bytes) -> None:
        self.info = info
        self._data = data
        self._closed = False

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        size = self.info.size
        end = size if end is None else end
        if not 0 <= start <= end <= size:
            raise ValueError(f"range [{start}, {end}) is outside the object (size {size})")
        for pos in range(start, end, CHUNK):
            if self._closed:
                raise StorageError("reader is closed")
            yield self._data[pos : min(pos + CHUNK, end)]

    async def aclose(self) -> None:
        self._closed = True
