"""The filesystem storage backend: the conformance checks plus crash recovery and memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tunnelmesh.errors import NoSuchKey, StorageError
from tunnelmesh.manager import make_plugin_manager
from tunnelmesh.storage import conformance
from tunnelmesh.storage.conformance import body, read_all
from tunnelmesh_s3.filesystem import INLINE_MAX, SLOTS, FilesystemStorage

BIG = INLINE_MAX + 1
"""The smallest object stored in a blob file (smaller ones live in the index row)."""


def data_files(root: Path) -> list[Path]:
    """The blob files that hold bytes (the store keeps a few empty ones made ahead)."""
    return [p for p in (root / "blobs").rglob("*") if p.is_file() and p.stat().st_size]


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
def test_conformance(check, tmp_path: Path) -> None:
    asyncio.run(check(lambda: FilesystemStorage(tmp_path / "store")))


def test_s3_plugin_registers_filesystem() -> None:
    pm = make_plugin_manager()  # the installed distribution's entry point
    registry = pm.build_registry("storage")
    assert registry.storage["filesystem"] is FilesystemStorage
    assert registry.provided_by("s3") == {"storage": ["filesystem"]}


def test_second_process_cannot_open_the_store(tmp_path: Path) -> None:
    async def main() -> None:
        async with FilesystemStorage(tmp_path):
            with pytest.raises(StorageError, match="in use"):
                await FilesystemStorage(tmp_path).start()

    asyncio.run(main())


def test_recovery_removes_leftovers_of_a_crash(tmp_path: Path) -> None:
    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            await st.put_object("bk1", "kept", body(b"w" * BIG))
        # what a crash mid-write leaves: a temp file, and a synced blob never committed
        (tmp_path / "tmp" / "deadbeef").write_bytes(b"half")
        orphan = tmp_path / "blobs" / "ff" / ("ff" * 16)
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"never committed")
        async with FilesystemStorage(tmp_path) as st:
            assert await read_all(st, "bk1", "kept") == b"w" * BIG
            with pytest.raises(NoSuchKey):
                await st.head_object("bk1", "other")
        assert list((tmp_path / "tmp").iterdir()) == []
        assert not orphan.exists()
        assert len(data_files(tmp_path)) == 1

    asyncio.run(main())


def test_freed_blobs_are_deleted(tmp_path: Path) -> None:
    def blob_count() -> int:
        return len(data_files(tmp_path))

    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            await st.put_object("bk1", "k", body(b"1" * BIG))
            await st.put_object("bk1", "k", body(b"2" * BIG))
            await st.copy_object("bk1", "k", "bk1", "k2")
            assert blob_count() == 2
            await st.delete_object("bk1", "k")
            await st.delete_object("bk1", "k2")
            assert blob_count() == 0
            up = await st.create_multipart_upload("bk1", "m")
            await st.upload_part("bk1", "m", up.upload_id, 1, body(b"x"))
            await st.delete_bucket("bk1")
            assert blob_count() == 0

    asyncio.run(main())


def test_keys_never_become_paths(tmp_path: Path) -> None:
    async def main() -> None:
        async with FilesystemStorage(tmp_path / "store") as st:
            await st.create_bucket("bk1")
            await st.put_object("bk1", "/etc/passwd", body(b"x"))
            await st.put_object("bk1", "a" * 300 + "/" + "b" * 300, body(b"y"))
        names = {p.name for p in (tmp_path / "store").rglob("*")}
        assert not any("passwd" in n or "aaaa" in n for n in names)
        assert {p.parent for p in tmp_path.rglob("*") if p.is_file()} <= {
            tmp_path / "store",
            *((tmp_path / "store" / "blobs").iterdir()),
        }

    asyncio.run(main())


def test_streaming_memory_stays_bounded(tmp_path: Path) -> None:
    """128 MiB in and out while Python's peak allocation stays a few MiB (constant memory)."""
    total = 128 * 1024 * 1024
    piece = os.urandom(64 * 1024)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(total // len(piece)):
            yield piece

    async def main() -> int:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            tracemalloc.start()
            try:
                info = await st.put_object("bk1", "big", source())
                seen = 0
                async with await st.open_object("bk1", "big") as reader:
                    async for chunk in reader.stream():
                        seen += len(chunk)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert info.size == seen == total
            return peak

    peak = asyncio.run(main())
    assert peak < 16 * 1024 * 1024, f"peak Python allocation {peak} bytes for a {total} byte object"


def test_refused_conditional_put_frees_its_blob(tmp_path: Path) -> None:
    def blob_count() -> int:
        return len(data_files(tmp_path))

    def absent(current: object) -> None:
        if current is not None:
            raise KeyError("exists")

    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            await st.put_object("bk1", "k", body(b"1" * BIG), precondition=absent)
            with pytest.raises(KeyError):
                await st.put_object("bk1", "k", body(b"2" * BIG), precondition=absent)
            assert blob_count() == 1
            assert (await st.head_object("bk1", "k")).size == BIG

    asyncio.run(main())


def test_small_objects_live_in_their_index_row(tmp_path: Path) -> None:
    """Up to INLINE_MAX bytes: no blob file, the same answers (ranges, copy, overwrite, delete,
    reopen); one byte more: a blob file, freed when an inline object replaces it."""

    def blob_count() -> int:
        return len(data_files(tmp_path))

    sizes = [0, 1, 4096, INLINE_MAX]
    datas = {n: os.urandom(n) for n in sizes}

    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            for n, data in datas.items():
                # several pieces, as a network body arrives
                info = await st.put_object("bk1", f"k{n}", body(data[:100], data[100:]))
                assert info.size == n
                assert info.etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
                assert await read_all(st, "bk1", f"k{n}") == data
                assert await read_all(st, "bk1", f"k{n}", n // 3, n // 2) == data[n // 3 : n // 2]
            assert blob_count() == 0
            big = os.urandom(BIG)
            await st.put_object("bk1", "k4096", body(big))  # inline -> blob
            assert blob_count() == 1
            assert await read_all(st, "bk1", "k4096") == big
            await st.put_object("bk1", "k4096", body(datas[4096]))  # blob -> inline frees it
            assert blob_count() == 0
            copy = await st.copy_object("bk1", "k1", "bk1", "c1", metadata={"m": "1"})
            assert copy.etag == hashlib.md5(datas[1], usedforsecurity=False).hexdigest()
            assert await st.delete_object("bk1", "k1") is True
            assert await st.delete_object("bk1", "k1") is False
            assert await st.delete_object("bk1", "k0") is True  # empty, and inline
            assert await read_all(st, "bk1", "c1") == datas[1]
            assert blob_count() == 0
        async with FilesystemStorage(tmp_path) as st:  # committed means on disk
            assert await read_all(st, "bk1", f"k{INLINE_MAX}") == datas[INLINE_MAX]
            assert await read_all(st, "bk1", "k4096") == datas[4096]
            assert dict((await st.head_object("bk1", "c1")).metadata) == {"m": "1"}
            listed = await st.list_objects("bk1")
            assert [(o.key, o.size) for o in listed.objects] == [
                ("c1", 1),
                ("k4096", 4096),
                (f"k{INLINE_MAX}", INLINE_MAX),
            ]

    asyncio.run(main())


def test_a_store_from_before_inline_objects_opens(tmp_path: Path) -> None:
    """An index whose objects table has no data column gains it; its objects read as before."""

    async def put_old() -> None:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            await st.put_object("bk1", "old", body(b"o" * BIG))

    asyncio.run(put_old())
    db = sqlite3.connect(tmp_path / "index.sqlite3")
    db.executescript(
        """
        CREATE TABLE objects_old (
            bucket TEXT NOT NULL, key BLOB NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
            mtime REAL NOT NULL, content_type TEXT NOT NULL, meta TEXT NOT NULL,
            parts INTEGER NOT NULL, segments TEXT NOT NULL,
            PRIMARY KEY (bucket, key)) WITHOUT ROWID;
        INSERT INTO objects_old SELECT bucket, key, size, etag, mtime, content_type, meta, parts,
            segments FROM objects;
        DROP TABLE objects;
        ALTER TABLE objects_old RENAME TO objects;
        """
    )
    db.close()

    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            assert await read_all(st, "bk1", "old") == b"o" * BIG
            await st.put_object("bk1", "new", body(b"small"))
            assert await read_all(st, "bk1", "new") == b"small"

    asyncio.run(main())


def test_point_reads_do_not_wait_behind_the_index_thread(tmp_path: Path) -> None:
    """HEAD, open and head_bucket read their row on the caller's loop (a second connection):
    they answer while the index thread is busy (a group commit's fsync), and see every commit
    that finished before them."""
    data = os.urandom(5000)

    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            await st.put_object("bk1", "k", body(data))
            assert st._db_pool is not None
            busy = threading.Event()
            blocker = st._db_pool.submit(busy.wait, 30)
            try:
                assert (await st.head_bucket("bk1")).name == "bk1"
                assert (await st.head_object("bk1", "k")).size == len(data)
                assert await read_all(st, "bk1", "k") == data
                with pytest.raises(NoSuchKey):
                    await st.head_object("bk1", "missing")
                assert not blocker.done()
            finally:
                busy.set()
            await st.put_object("bk1", "k", body(b"v2"))
            assert await read_all(st, "bk1", "k") == b"v2"
            await st.delete_object("bk1", "k")
            with pytest.raises(NoSuchKey):
                await st.head_object("bk1", "k")

    asyncio.run(main())


def test_large_writes_take_files_made_ahead(tmp_path: Path) -> None:
    """A blob write takes one of the empty files made ahead (whose directory entries are synced
    already: no directory fsync per write); more are made as they run out; the ones left unused
    by a stopped store are removed when it starts again, and a new set is made."""
    datas = [os.urandom(BIG + i) for i in range(SLOTS + 4)]

    def files(root: Path) -> set[str]:
        return {p.name for p in (root / "blobs").rglob("*") if p.is_file()}

    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            made = files(tmp_path)
            assert len(made) == SLOTS
            await st.create_bucket("bk1")
            for i, data in enumerate(datas):
                await st.put_object("bk1", f"k{i}", body(data))
            used = {p.name for p in data_files(tmp_path)}
            assert len(used) == len(datas)
            assert len(made & used) >= SLOTS // 2  # the first writes took files made ahead
            for i, data in enumerate(datas):
                assert await read_all(st, "bk1", f"k{i}") == data
        async with FilesystemStorage(tmp_path) as st:
            for i, data in enumerate(datas):
                assert await read_all(st, "bk1", f"k{i}") == data
            assert len(files(tmp_path) - {p.name for p in data_files(tmp_path)}) == SLOTS

    asyncio.run(main())


def test_metadata_round_trips_whatever_its_characters(tmp_path: Path) -> None:
    """Metadata and stored headers come back exactly: non-ASCII, and bytes that were not UTF-8
    (a header decoded with surrogateescape holds lone surrogates, which the index's fast JSON
    codec refuses and json writes as escapes); rows written by json.dumps (older stores, spaces
    after separators, ASCII escapes) read the same."""
    metadata = {"plain": "x", "accent": "caf\u00e9 \u20ac", "raw": "caf\udce9"}
    headers = {"content-disposition": "attachment; filename=\udcff.bin"}

    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            for key, size in (("small", 10), ("big", BIG)):
                await st.put_object(
                    "bk1", key, body(b"d" * size), metadata=metadata, headers=headers
                )
                info = await st.head_object("bk1", key)
                assert (dict(info.metadata), dict(info.headers)) == (metadata, headers)

    asyncio.run(main())
    db = sqlite3.connect(tmp_path / "index.sqlite3")
    db.execute(
        "UPDATE objects SET meta=? WHERE key=?",
        (json.dumps({"m": {"accent": "caf\u00e9"}, "h": {}, "c": {}}), b"small"),
    )
    db.commit()
    db.close()

    async def reopened() -> None:
        async with FilesystemStorage(tmp_path) as st:
            info = await st.head_object("bk1", "big")
            assert (dict(info.metadata), dict(info.headers)) == (metadata, headers)
            assert dict((await st.head_object("bk1", "small")).metadata) == {"accent": "caf\u00e9"}
            assert await read_all(st, "bk1", "big") == b"d" * BIG

    asyncio.run(reopened())


def test_a_store_from_before_part_checksums_opens(tmp_path: Path) -> None:
    """An index whose parts table has no checksums column (a store made before parts kept their
    checksums) gains it: an upload in progress lists its old parts with no checksums, takes new
    parts with theirs and completes whole."""
    part = os.urandom(5 * 1024 * 1024)

    async def start_upload() -> str:
        async with FilesystemStorage(tmp_path) as st:
            await st.create_bucket("bk1")
            upload = await st.create_multipart_upload("bk1", "mp")
            await st.upload_part("bk1", "mp", upload.upload_id, 1, body(part))
            return upload.upload_id

    upload_id = asyncio.run(start_upload())
    db = sqlite3.connect(tmp_path / "index.sqlite3")
    db.executescript(
        """
        CREATE TABLE parts_old (
            upload_id TEXT NOT NULL, number INTEGER NOT NULL, blob TEXT NOT NULL,
            size INTEGER NOT NULL, etag TEXT NOT NULL, mtime REAL NOT NULL,
            PRIMARY KEY (upload_id, number)) WITHOUT ROWID;
        INSERT INTO parts_old SELECT upload_id, number, blob, size, etag, mtime FROM parts;
        DROP TABLE parts;
        ALTER TABLE parts_old RENAME TO parts;
        """
    )
    db.close()

    async def main() -> None:
        async with FilesystemStorage(tmp_path) as st:
            (old,) = await st.list_parts("bk1", "mp", upload_id)
            assert (old.number, old.size, dict(old.checksums)) == (1, len(part), {})
            new = await st.upload_part(
                "bk1", "mp", upload_id, 2, body(b"tail"), checksums={"crc32": "AAAAAA=="}
            )
            listed = await st.list_parts("bk1", "mp", upload_id)
            assert [dict(p.checksums) for p in listed] == [{}, {"crc32": "AAAAAA=="}]
            info = await st.complete_multipart_upload(
                "bk1", "mp", upload_id, [(1, old.etag), (2, new.etag)]
            )
            assert info.size == len(part) + 4
            assert await read_all(st, "bk1", "mp") == part + b"tail"

    asyncio.run(main())
