"""The behaviour every :class:`~tunnelmesh.abc.Storage` backend must show, as reusable checks.

A backend's test suite calls each check with a factory of fresh, unstarted stores::

    import asyncio, pytest
    from tunnelmesh.storage import conformance

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        asyncio.run(check(lambda: MyStorage(tmp_path / "store")))

Every check opens the store with ``async with`` and leaves it closed.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from tunnelmesh.abc import ObjectInfo, Storage
from tunnelmesh.errors import (
    BucketAlreadyExists,
    BucketNotEmpty,
    InvalidName,
    InvalidPart,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
)

__all__ = ["CHECKS", "Factory", "body", "read_all"]

Factory = Callable[[], Storage]


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    """An async body made of ``chunks``."""
    for chunk in chunks:
        yield chunk


async def read_all(
    store: Storage, bucket: str, key: str, start: int = 0, end: int | None = None
) -> bytes:
    """The bytes ``[start, end)`` of an object."""
    async with await store.open_object(bucket, key) as reader:
        return b"".join([c async for c in reader.stream(start, end)])


async def _raises(exc: type[BaseException], coro: Awaitable[object]) -> None:
    try:
        await coro
    except exc:
        return
    raise AssertionError(f"expected {exc.__name__}")


async def check_buckets(make: Factory) -> None:
    async with make() as st:
        assert await st.list_buckets() == []
        info = await st.create_bucket("alpha")
        assert info.name == "alpha"
        await st.create_bucket("beta.1")
        await _raises(BucketAlreadyExists, st.create_bucket("alpha"))
        for bad in ("ab", "Upper", "-x-", "a..b", "192.168.1.1", "a_b", "x" * 64):
            await _raises(InvalidName, st.create_bucket(bad))
        assert [b.name for b in await st.list_buckets()] == ["alpha", "beta.1"]
        assert (await st.head_bucket("alpha")).created == info.created
        await _raises(NoSuchBucket, st.head_bucket("gamma"))
        await st.put_object("alpha", "k", body(b"x"))
        await _raises(BucketNotEmpty, st.delete_bucket("alpha"))
        await st.delete_object("alpha", "k")
        await st.delete_bucket("alpha")
        await _raises(NoSuchBucket, st.delete_bucket("alpha"))
        assert [b.name for b in await st.list_buckets()] == ["beta.1"]


async def check_objects(make: Factory) -> None:
    async with make() as st:
        await st.create_bucket("bk1")
        data = bytes(range(256)) * 5000
        info = await st.put_object(
            "bk1",
            "dir/file.bin",
            body(data[:1000], data[1000:]),
            content_type="text/plain",
            metadata={"colour": "blue"},
            headers={"cache-control": "no-cache"},
            checksums={"sha256": "abc="},
        )
        assert info.size == len(data)
        assert info.etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
        head = await st.head_object("bk1", "dir/file.bin")
        assert (head.size, head.etag, head.content_type) == (info.size, info.etag, "text/plain")
        assert dict(head.metadata) == {"colour": "blue"}
        assert dict(head.headers) == {"cache-control": "no-cache"}
        assert dict(head.checksums) == {"sha256": "abc="}
        assert await read_all(st, "bk1", "dir/file.bin") == data
        assert await read_all(st, "bk1", "dir/file.bin", 10, 20) == data[10:20]
        assert await read_all(st, "bk1", "dir/file.bin", len(data) - 1) == data[-1:]
        assert await read_all(st, "bk1", "dir/file.bin", 5, 5) == b""
        # overwrite replaces whole
        await st.put_object("bk1", "dir/file.bin", body(b"new"))
        assert await read_all(st, "bk1", "dir/file.bin") == b"new"
        # empty object, unicode key
        await st.put_object("bk1", "ünï cödé/ø", body())
        assert await read_all(st, "bk1", "ünï cödé/ø") == b""
        await _raises(NoSuchKey, st.head_object("bk1", "missing"))
        await _raises(NoSuchKey, st.open_object("bk1", "missing"))
        await _raises(NoSuchBucket, st.put_object("nope", "k", body(b"x")))
        await _raises(NoSuchBucket, st.head_object("nope", "k"))
        assert await st.delete_object("bk1", "dir/file.bin") is True
        assert await st.delete_object("bk1", "dir/file.bin") is False
        await _raises(NoSuchKey, st.head_object("bk1", "dir/file.bin"))


async def check_bad_keys(make: Factory) -> None:
    async with make() as st:
        await st.create_bucket("bk1")
        for bad in ("", "../etc/passwd", "a/../../b", "a/./b", "..", "x\x00y", "k" * 1025):
            await _raises(InvalidName, st.put_object("bk1", bad, body(b"x")))
            await _raises(InvalidName, st.head_object("bk1", bad))
            await _raises(InvalidName, st.create_multipart_upload("bk1", bad))
        assert (await st.list_objects("bk1")).objects == []
        # dots that are not whole segments are fine
        for good in ("a..b", ".hidden", "a/.../b", "/leading", "trailing/"):
            await st.put_object("bk1", good, body(b"ok"))
            assert await read_all(st, "bk1", good) == b"ok"


async def check_failed_body_stores_nothing(make: Factory) -> None:
    async def broken(size: int) -> AsyncIterator[bytes]:
        yield b"partial data" * (size // 12)
        raise ConnectionResetError("client went away")

    async with make() as st:
        await st.create_bucket("bk1")
        await st.put_object("bk1", "k", body(b"old"))
        for size in (12, 3_000_000):  # small and large bodies may take different paths
            await _raises(ConnectionResetError, st.put_object("bk1", "k", broken(size)))
            await _raises(ConnectionResetError, st.put_object("bk1", "fresh", broken(size)))
            assert await read_all(st, "bk1", "k") == b"old"
            await _raises(NoSuchKey, st.head_object("bk1", "fresh"))


async def check_snapshot_reads(make: Factory) -> None:
    async with make() as st:
        await st.create_bucket("bk1")
        await st.put_object("bk1", "k", body(b"A" * 3_000_000))
        reader = await st.open_object("bk1", "k")
        stream = reader.stream()
        first = await stream.__anext__()
        await st.put_object("bk1", "k", body(b"B" * 10))
        await st.delete_object("bk1", "k")
        rest = b"".join([c async for c in stream])
        await reader.aclose()
        assert first + rest == b"A" * 3_000_000


async def check_listing(make: Factory) -> None:
    async with make() as st:
        await st.create_bucket("bk1")
        keys = ["a", "a/1", "a/2", "a/b/3", "b", "b/1", "c/d/e", "z", "é"]  # UTF-8 byte order
        for key in reversed(keys):
            await st.put_object("bk1", key, body(key.encode()))
        page = await st.list_objects("bk1")
        assert [o.key for o in page.objects] == keys and not page.truncated
        page = await st.list_objects("bk1", prefix="a/")
        assert [o.key for o in page.objects] == ["a/1", "a/2", "a/b/3"]
        page = await st.list_objects("bk1", delimiter="/")
        assert [o.key for o in page.objects] == ["a", "b", "z", "é"]
        assert list(page.prefixes) == ["a/", "b/", "c/"]
        page = await st.list_objects("bk1", prefix="a/", delimiter="/")
        assert [o.key for o in page.objects] == ["a/1", "a/2"] and list(page.prefixes) == ["a/b/"]
        # paging through with next_marker, prefixes counted as entries
        seen: list[str] = []
        marker = ""
        while True:
            page = await st.list_objects("bk1", delimiter="/", start_after=marker, max_keys=2)
            seen += [o.key for o in page.objects] + list(page.prefixes)
            if not page.truncated:
                break
            marker = page.next_marker
        assert sorted(seen) == sorted(["a", "b", "z", "é", "a/", "b/", "c/"])
        assert len(seen) == 7
        page = await st.list_objects("bk1", start_after="b", max_keys=2)
        assert [o.key for o in page.objects] == ["b/1", "c/d/e"] and page.truncated
        assert (await st.list_objects("bk1", max_keys=0)).objects == []
        await _raises(NoSuchBucket, st.list_objects("nope"))


async def check_multipart(make: Factory) -> None:
    async with make() as st:
        await st.create_bucket("bk1")
        size = st.min_part_size
        p1, p2, p3 = b"1" * size, b"2" * size, b"3" * 100
        up = await st.create_multipart_upload("bk1", "big", content_type="x/y", metadata={"m": "1"})
        assert [u.upload_id for u in await st.list_multipart_uploads("bk1")] == [up.upload_id]
        # several uploads of one key: by key, then initiation time (upload IDs sort that way)
        ups = [await st.create_multipart_upload("bk1", k) for k in ("m/b", "m/a", "m/b", "m/a")]
        listed = await st.list_multipart_uploads("bk1", prefix="m/")
        assert [u.upload_id for u in listed] == [ups[i].upload_id for i in (1, 3, 0, 2)]
        assert ups[1].upload_id < ups[3].upload_id and ups[0].upload_id < ups[2].upload_id
        for u in ups:
            await st.abort_multipart_upload("bk1", u.key, u.upload_id)
        e1 = await st.upload_part("bk1", "big", up.upload_id, 1, body(b"wrong"))
        e1 = await st.upload_part("bk1", "big", up.upload_id, 1, body(p1))  # replaces
        e2 = await st.upload_part("bk1", "big", up.upload_id, 2, body(p2))
        e3 = await st.upload_part("bk1", "big", up.upload_id, 3, body(p3))
        await _raises(NoSuchUpload, st.upload_part("bk1", "big", "nope", 1, body(b"x")))
        assert [(p.number, p.size) for p in await st.list_parts("bk1", "big", up.upload_id)] == [
            (1, size),
            (2, size),
            (3, 100),
        ]
        await _raises(
            InvalidPart,
            st.complete_multipart_upload("bk1", "big", up.upload_id, [(1, e1.etag), (2, "0" * 32)]),
        )
        await _raises(
            InvalidPart,
            st.complete_multipart_upload("bk1", "big", up.upload_id, [(2, e2.etag), (1, e1.etag)]),
        )
        await _raises(
            InvalidPart,
            st.complete_multipart_upload("bk1", "big", up.upload_id, [(3, e3.etag), (4, e3.etag)]),
        )
        # part 1 listed twice: the last ETag listed for a number counts
        info = await st.complete_multipart_upload(
            "bk1", "big", up.upload_id, [(1, "0" * 32), (1, e1.etag), (3, f'"{e3.etag}"')]
        )
        # completing again (a retry after a lost response): the same object
        again = await st.complete_multipart_upload("bk1", "big", up.upload_id, [(1, e1.etag)])
        assert (again.etag, again.size, again.parts) == (info.etag, info.size, info.parts)
        md5s = bytes.fromhex(e1.etag) + bytes.fromhex(e3.etag)
        assert info.etag == hashlib.md5(md5s, usedforsecurity=False).hexdigest() + "-2"
        assert (info.size, info.parts, info.content_type) == (size + 100, 2, "x/y")
        assert list((await st.head_object("bk1", "big")).part_sizes) == [size, 100]
        assert dict((await st.head_object("bk1", "big")).metadata) == {"m": "1"}
        assert await read_all(st, "bk1", "big") == p1 + p3
        assert await read_all(st, "bk1", "big", size - 2, size + 2) == b"1133"
        await _raises(NoSuchUpload, st.list_parts("bk1", "big", up.upload_id))
        up2 = await st.create_multipart_upload("bk1", "other")
        await st.upload_part("bk1", "other", up2.upload_id, 1, body(b"x"))
        await st.abort_multipart_upload("bk1", "other", up2.upload_id)
        await _raises(NoSuchUpload, st.abort_multipart_upload("bk1", "other", up2.upload_id))
        assert await st.list_multipart_uploads("bk1") == []


async def check_copy(make: Factory) -> None:
    async with make() as st:
        await st.create_bucket("bk1")
        await st.create_bucket("bk2")
        src = await st.put_object("bk1", "src", body(b"payload"), metadata={"a": "1"})
        copy = await st.copy_object("bk1", "src", "bk2", "dst")
        assert (copy.etag, dict(copy.metadata)) == (src.etag, {"a": "1"})
        copy = await st.copy_object("bk1", "src", "bk1", "src", metadata={"b": "2"})
        assert dict(copy.metadata) == {"b": "2"}
        await st.delete_object("bk1", "src")
        assert await read_all(st, "bk2", "dst") == b"payload"
        await _raises(NoSuchKey, st.copy_object("bk1", "src", "bk2", "x"))


async def check_update_headers(make: Factory) -> None:
    """Stored headers change in place (S3's PutObjectTagging): data, ETag, time and metadata
    stay; a missing key or bucket is refused."""
    async with make() as st:
        await st.create_bucket("bk1")
        put = await st.put_object(
            "bk1", "k", body(b"data"), metadata={"a": "1"}, headers={"cache-control": "no"}
        )
        info = await st.update_object_headers("bk1", "k", {"x-amz-tagging": "t=1"})
        assert dict(info.headers) == {"cache-control": "no", "x-amz-tagging": "t=1"}
        head = await st.head_object("bk1", "k")
        assert (head.etag, head.last_modified, dict(head.metadata)) == (
            put.etag,
            put.last_modified,
            {"a": "1"},
        )
        assert dict(head.headers) == dict(info.headers)
        await st.update_object_headers("bk1", "k", {"x-amz-tagging": None, "absent": None})
        assert dict((await st.head_object("bk1", "k")).headers) == {"cache-control": "no"}
        assert await read_all(st, "bk1", "k") == b"data"
        await _raises(NoSuchKey, st.update_object_headers("bk1", "nope", {"x": "y"}))
        await _raises(NoSuchBucket, st.update_object_headers("bk2", "k", {"x": "y"}))


async def check_reopen(make: Factory) -> None:
    async with make() as st:
        await st.create_bucket("bk1")
        await st.put_object("bk1", "k", body(b"persist"))
    async with make() as st:
        assert await read_all(st, "bk1", "k") == b"persist"


class _Refused(Exception):
    pass


def _absent(current: ObjectInfo | None) -> None:
    if current is not None:
        raise _Refused(current.etag)


async def check_conditional_put(make: Factory) -> None:
    """A precondition sees the object it would replace, atomically with the replacement: of
    two writers racing to create a key, exactly one wins and the other stores nothing."""
    import asyncio

    async with make() as st:
        await st.create_bucket("bk1")
        seen: list[ObjectInfo | None] = []
        info = await st.put_object("bk1", "k", body(b"one"), precondition=seen.append)
        assert seen == [None]
        await st.put_object("bk1", "k", body(b"two"), precondition=seen.append)
        assert seen[1] is not None and seen[1].etag == info.etag
        await _raises(_Refused, st.put_object("bk1", "k", body(b"three"), precondition=_absent))
        assert await read_all(st, "bk1", "k") == b"two"

        gate = asyncio.Event()

        async def held(data: bytes) -> AsyncIterator[bytes]:
            yield data[:1]
            await gate.wait()  # both writers are mid-body before either commits
            yield data[1:]

        racers = [
            asyncio.ensure_future(st.put_object("bk1", "new", held(d), precondition=_absent))
            for d in (b"aaaa", b"bbbb")
        ]
        for _ in range(50):
            await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*racers, return_exceptions=True)
        won = [r for r in results if isinstance(r, ObjectInfo)]
        lost = [r for r in results if isinstance(r, _Refused)]
        assert len(won) == 1 and len(lost) == 1, results
        assert await read_all(st, "bk1", "new") == (b"aaaa" if results[0] is won[0] else b"bbbb")


async def check_conditional_complete(make: Factory) -> None:
    """CompleteMultipartUpload's precondition sees the object it would replace, in the same
    step: refused, the upload stays and can be completed later; a repeated completion returns
    the completed object without asking it again."""
    async with make() as st:
        await st.create_bucket("bk1")
        seen: list[ObjectInfo | None] = []
        up = await st.create_multipart_upload("bk1", "k")
        part = await st.upload_part("bk1", "k", up.upload_id, 1, body(b"one"))
        done = await st.complete_multipart_upload(
            "bk1", "k", up.upload_id, [(1, part.etag)], precondition=seen.append
        )
        assert seen == [None]
        again = await st.complete_multipart_upload(
            "bk1", "k", up.upload_id, [(1, part.etag)], precondition=_absent
        )
        assert again.etag == done.etag and len(seen) == 1
        up = await st.create_multipart_upload("bk1", "k")
        part = await st.upload_part("bk1", "k", up.upload_id, 1, body(b"two"))
        await _raises(
            _Refused,
            st.complete_multipart_upload(
                "bk1", "k", up.upload_id, [(1, part.etag)], precondition=_absent
            ),
        )
        assert await read_all(st, "bk1", "k") == b"one"
        assert [p.number for p in await st.list_parts("bk1", "k", up.upload_id)] == [1]
        await st.complete_multipart_upload(
            "bk1", "k", up.upload_id, [(1, part.etag)], precondition=seen.append
        )
        assert seen[1] is not None and seen[1].etag == done.etag
        assert await read_all(st, "bk1", "k") == b"two"


async def check_conditional_copy(make: Factory) -> None:
    """CopyObject's precondition sees the destination it would replace (not the source), in
    the same step as the replacement: refused, the destination stays as it was."""
    async with make() as st:
        await st.create_bucket("bk1")
        src = await st.put_object("bk1", "src", body(b"source"))
        seen: list[ObjectInfo | None] = []
        await st.copy_object("bk1", "src", "bk1", "dst", precondition=seen.append)
        assert seen == [None]
        old = await st.put_object("bk1", "dst", body(b"old"), metadata={"a": "1"})
        await _raises(_Refused, st.copy_object("bk1", "src", "bk1", "dst", precondition=_absent))
        head = await st.head_object("bk1", "dst")
        assert (head.etag, dict(head.metadata)) == (old.etag, {"a": "1"})
        assert await read_all(st, "bk1", "dst") == b"old"
        copy = await st.copy_object("bk1", "src", "bk1", "dst", precondition=seen.append)
        assert seen[1] is not None and seen[1].etag == old.etag and copy.etag == src.etag
        assert await read_all(st, "bk1", "dst") == b"source"


async def check_multipart_checksums(make: Factory) -> None:
    """An upload keeps its checksum algorithm, each part its checksums, and the completed
    object the checksums given at completion (also when completed again) and its parts'
    checksums in order (S3's GetObjectAttributes lists them per part)."""
    async with make() as st:
        await st.create_bucket("bk1")
        up = await st.create_multipart_upload("bk1", "k", checksum_algorithm="sha256")
        assert up.checksum_algorithm == "sha256"
        (listed,) = await st.list_multipart_uploads("bk1")
        assert listed.checksum_algorithm == "sha256"
        part = await st.upload_part(
            "bk1", "k", up.upload_id, 1, body(b"p"), checksums={"sha256": "c1"}
        )
        assert dict(part.checksums) == {"sha256": "c1"}
        (got,) = await st.list_parts("bk1", "k", up.upload_id)
        assert dict(got.checksums) == {"sha256": "c1"}
        done = await st.complete_multipart_upload(
            "bk1", "k", up.upload_id, [(1, part.etag)], checksums={"sha256": "all-1"}
        )
        assert dict(done.checksums) == {"sha256": "all-1"}
        assert dict((await st.head_object("bk1", "k")).checksums) == {"sha256": "all-1"}
        again = await st.complete_multipart_upload("bk1", "k", up.upload_id, [(1, part.etag)])
        assert dict(again.checksums) == {"sha256": "all-1"}
        up = await st.create_multipart_upload("bk1", "two", checksum_algorithm="crc32c")
        first = await st.upload_part(
            "bk1",
            "two",
            up.upload_id,
            1,
            body(b"1" * st.min_part_size),
            checksums={"crc32c": "c1"},
        )
        second = await st.upload_part(
            "bk1", "two", up.upload_id, 2, body(b"2"), checksums={"crc32c": "c2"}
        )
        await st.complete_multipart_upload(
            "bk1", "two", up.upload_id, [(1, first.etag), (2, second.etag)]
        )
        await st.update_object_headers("bk1", "two", {"x-amz-tagging": "t=1"})
        head = await st.head_object("bk1", "two")
        assert [dict(c) for c in head.part_checksums] == [{"crc32c": "c1"}, {"crc32c": "c2"}]
        assert list(head.part_sizes) == [st.min_part_size, 1]
        plain = await st.create_multipart_upload("bk1", "p")
        assert plain.checksum_algorithm == ""
        part = await st.upload_part("bk1", "p", plain.upload_id, 1, body(b"p"))
        await st.complete_multipart_upload("bk1", "p", plain.upload_id, [(1, part.etag)])
        assert list((await st.head_object("bk1", "p")).part_checksums) == []


CHECKS: Iterable[Callable[[Factory], Awaitable[None]]] = (
    check_buckets,
    check_objects,
    check_bad_keys,
    check_failed_body_stores_nothing,
    check_snapshot_reads,
    check_listing,
    check_multipart,
    check_copy,
    check_update_headers,
    check_reopen,
    check_conditional_put,
    check_conditional_complete,
    check_conditional_copy,
    check_multipart_checksums,
)
