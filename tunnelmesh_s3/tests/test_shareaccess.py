"""The share-access layer WebDAV and NFS stand on: callers, membership, paths, directories."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from tunnelmesh_s3.auth import BucketAcl, FileAuthorizer, Principal, Share
from tunnelmesh_s3.filesystem import FilesystemStorage
from tunnelmesh_s3.shareaccess import ShareAccess, ShareError, ShareView, peer_callers, split_path

OWNER = Principal("owner", peer_id="O" * 43)
READER = Principal("reader", peer_id="R" * 43)
OTHER = Principal("other", peer_id="X" * 43)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def _setup(tmp: Path) -> tuple[FilesystemStorage, ShareAccess]:
    storage = FilesystemStorage(tmp / "objects")
    await storage.start()
    auth = FileAuthorizer(tmp / "auth.json")
    await storage.create_bucket("docs")
    await auth.put_share(
        Share(name="docs", owner=OWNER.key, created=0.0),
        BucketAcl(owner=OWNER.key, read=[READER.key]),
    )
    return storage, ShareAccess(storage, auth, {"10.0.0.1": OWNER}.get)


async def _read(view: ShareView, path: str) -> bytes:
    async with await view.open(path) as r:
        return b"".join([c async for c in r.stream()])


def test_membership_and_read_only(tmp_path: Path) -> None:
    asyncio.run(_membership_and_read_only(tmp_path))


async def _membership_and_read_only(tmp_path: Path) -> None:
    storage, access = await _setup(tmp_path)
    try:
        assert access.principal("10.0.0.1") == OWNER
        with pytest.raises(ShareError) as err:
            access.principal("10.0.0.2")
        assert err.value.kind == "denied"
        owner = await access.open("docs", OWNER)
        reader = await access.open("docs", READER)
        assert owner.writable and not reader.writable
        with pytest.raises(ShareError) as err:
            await access.open("docs", OTHER)
        assert err.value.kind == "denied"
        with pytest.raises(ShareError) as err:
            await access.open("nosuch", OWNER)
        assert err.value.kind == "not_found"
        await owner.write("a.txt", chunks(b"a"))
        for op in (
            reader.write("b.txt", chunks(b"b")),
            reader.mkdir("d"),
            reader.remove("a.txt"),
            reader.rename("a.txt", "c.txt"),
            reader.copy("a.txt", "c.txt"),
        ):
            with pytest.raises(ShareError) as err:
                await op
            assert err.value.kind == "denied"
        assert await _read(reader, "/a.txt") == b"a"
        assert access.shares(READER) == ["docs"] and access.shares(OTHER) == []
    finally:
        await storage.aclose()


def test_paths() -> None:
    assert split_path("/a//b/") == ["a", "b"]
    assert split_path("") == []
    for bad in ("a/../b", "./a", "a\x00b", "x" * 1001):
        with pytest.raises(ShareError) as err:
            split_path(bad)
        assert err.value.kind == "bad_path"


def test_directories_over_the_object_store(tmp_path: Path) -> None:
    asyncio.run(_directories_over_the_object_store(tmp_path))


async def _directories_over_the_object_store(tmp_path: Path) -> None:
    storage, access = await _setup(tmp_path)
    try:
        v = await access.open("docs", OWNER)
        await v.mkdir("d")
        with pytest.raises(ShareError) as err:
            await v.mkdir("d")
        assert err.value.kind == "exists"
        with pytest.raises(ShareError) as err:
            await v.mkdir("nope/sub")
        assert err.value.kind == "not_found"
        with pytest.raises(ShareError) as err:
            await v.write("nope/f", chunks(b""))
        assert err.value.kind == "not_found"
        await v.write("d/f1", chunks(b"1"))
        await v.mkdir("d/sub")
        await v.write("d/sub/f2", chunks(b"2", b"2"))
        with pytest.raises(ShareError) as err:
            await v.write("d", chunks(b"x"))
        assert err.value.kind == "is_dir"
        with pytest.raises(ShareError) as err:
            await v.write("d/f1/x", chunks(b"x"))
        assert err.value.kind == "not_dir"
        with pytest.raises(ShareError) as err:
            await v.remove("d")
        assert err.value.kind == "not_empty"
        names = [(e.name, e.is_dir) async for e in v.listdir("d")]
        assert names == [("f1", False), ("sub", True)]
        # a file and a prefix of one name (only S3 can make that): the file wins
        await storage.put_object("docs", "clash", chunks(b"file"))
        await storage.put_object("docs", "clash/inner", chunks(b"under"))
        entry = await v.stat("clash")
        assert entry is not None and not entry.is_dir
        assert [e.name async for e in v.listdir("")].count("clash") == 1
        # rename a directory: everything moves, the source is gone
        await v.rename("d", "e")
        assert await v.stat("d") is None
        assert await _read(v, "e/sub/f2") == b"22"
        with pytest.raises(ShareError) as err:
            await v.rename("e", "e/inside")
        assert err.value.kind == "bad_path"
        await v.remove("e", recursive=True)
        assert await v.stat("e") is None
    finally:
        await storage.aclose()


def test_listdir_pages_through_large_directories(tmp_path: Path) -> None:
    asyncio.run(_listdir_pages_through_large_directories(tmp_path))


async def _listdir_pages_through_large_directories(tmp_path: Path) -> None:
    storage, access = await _setup(tmp_path)
    try:
        v = await access.open("docs", OWNER)
        await v.mkdir("big")
        for i in range(1203):
            await storage.put_object("docs", f"big/f{i:05d}", chunks(b""))
        for i in range(3):
            await storage.put_object("docs", f"big/z{i}/x", chunks(b""))
        names = [e.name async for e in v.listdir("big")]
        assert names == [f"f{i:05d}" for i in range(1203)] + ["z0", "z1", "z2"]
    finally:
        await storage.aclose()


def test_peer_callers_maps_mesh_ips_to_keys_and_refuses_its_own() -> None:
    peers = {
        "P1": SimpleNamespace(peer_id="P1", name="alice", mesh_ip="10.99.0.2", is_admin=False),
        "P2": SimpleNamespace(peer_id="P2", name="hub", mesh_ip="10.99.0.1", is_admin=True),
        "P3": SimpleNamespace(peer_id="P3", name="wait", mesh_ip="10.99.0.3", pending=True),
    }
    caller = peer_callers(lambda: peers, refuse=lambda: "10.99.0.1")
    assert caller("10.99.0.2") == Principal("alice", peer_id="P1")
    assert caller("::ffff:10.99.0.2") == Principal("alice", peer_id="P1")
    assert caller("10.99.0.1") is None  # the serving node's own address: any local user
    assert caller("10.99.0.3") is None  # pending approval
    assert caller("10.99.0.77") is None and caller("junk") is None
