"""Every NFSv3, MOUNT v3 and PMAP procedure the server implements, without sockets.

Calls are written as RFC 1813 / RFC 5531 bytes by hand (``w()`` words), fed through the sans-IO
RPC connection to :class:`NfsService` over a real filesystem store, and the reply bytes are
compared with hand-written expectations (time fields, which change, are skipped). Handles are
deterministic because the test writes the server's secret: ``01 | id | HMAC-SHA256(secret,
01 | id)[:16]``, computed here independently. Then the semantics the issue asks for: COMMIT
makes staged writes an S3 object, read-only members and non-members change nothing, handles
survive a restart and cannot be forged, rename replaces atomically. Finally fuzzing: random
arguments for every procedure always get a well-formed reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tunnelmesh_s3.auth import BucketAcl, FileAuthorizer, Principal, Share
from tunnelmesh_s3.filesystem import FilesystemStorage
from tunnelmesh_s3.nfs.ops import NfsService
from tunnelmesh_s3.nfs.rpc import CallReceived, RpcConnection
from tunnelmesh_s3.shareaccess import ShareAccess

SECRET = bytes(range(32))
VERF = b"WRITEVRF"
ALICE, BOB, CAROL, STRANGER = "10.99.0.1", "10.99.0.2", "10.99.0.3", "10.99.0.9"
UID, GID = 1000, 100
FSID = hashlib.sha256(b"docs").digest()[:8]
NFS, MOUNT, PMAP = 100003, 100005, 100000


def w(*words: int) -> bytes:
    return b"".join(struct.pack(">I", x) for x in words)


def h(*words: int) -> bytes:
    """64-bit words (offset3, size3, fileid3, cookie3)."""
    return b"".join(struct.pack(">Q", x) for x in words)


def s(text: str) -> bytes:
    raw = text.encode()
    return w(len(raw)) + raw + b"\0" * (-len(raw) % 4)


def fh(id_: int) -> bytes:
    body = b"\x01" + struct.pack(">Q", id_)
    return body + hmac.new(SECRET, body, hashlib.sha256).digest()[:16]


def xfh(id_: int) -> bytes:
    """A handle as XDR opaque<64>: length 25, 25 bytes, 3 bytes of padding."""
    return w(25) + fh(id_) + b"\0\0\0"


class T:
    """Skip ``n`` bytes (a time field) in an expected reply."""

    def __init__(self, n: int) -> None:
        self.n = n


TIMES = T(24)  # atime, mtime, ctime: nfstime3 x 3


def fattr(ftype: int, mode: int, size: int, fileid: int) -> list[bytes | T]:
    """fattr3: type, mode, nlink, uid, gid, size, used, rdev, fsid, fileid, 3 times."""
    nlink = 2 if ftype == 2 else 1
    used = (size + 4095) // 4096 * 4096
    return [w(ftype, mode, nlink, UID, GID) + h(size, used) + w(0, 0) + FSID + h(fileid), TIMES]


def post(attr: list[bytes | T] | None) -> list[bytes | T]:
    return [w(0)] if attr is None else [w(1), *attr]


def wcc(after: list[bytes | T] | None) -> list[bytes | T]:
    """wcc_data with no pre-op attributes and these post-op ones."""
    return [w(0), *post(after)]


def expect(actual: bytes, *parts: bytes | T | list[bytes | T]) -> None:
    flat: list[bytes | T] = []
    for p in parts:
        flat += p if isinstance(p, list) else [p]
    pos = 0
    for p in flat:
        if isinstance(p, T):
            pos += p.n
            continue
        assert actual[pos : pos + len(p)] == p, (
            f"at byte {pos}: {actual[pos : pos + len(p)].hex()} != {p.hex()}"
        )
        pos += len(p)
    assert pos == len(actual), f"{len(actual) - pos} bytes more than expected"


CRED = w(1) + w(24) + w(0) + s("host") + w(UID, GID, 0)  # AUTH_SYS, no extra gids


class Rig:
    """A store with share ``docs`` (alice owns, bob reads) and its NFS service."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.xid = 0
        self.callers = {
            ALICE: Principal("alice", peer_id="ALICEKEY"),
            BOB: Principal("bob", peer_id="BOBKEY"),
            CAROL: Principal("carol", peer_id="CAROLKEY"),
        }

    async def start(self) -> None:
        self.storage = FilesystemStorage(self.root / "objects")
        await self.storage.start()
        self.auth = FileAuthorizer(self.root / "auth.json")
        if not (self.root / "auth.json").exists():
            await self.storage.create_bucket("docs")
            await self.storage.create_bucket("other")
            await self.auth.put_share(
                Share(name="docs", owner="ALICEKEY", created=0),
                BucketAcl(owner="ALICEKEY", read=["BOBKEY"]),
            )
        (self.root / "nfs").mkdir(exist_ok=True, mode=0o700)
        secret = self.root / "nfs" / "handles.secret"
        if not secret.exists():
            secret.write_bytes(SECRET)
        access = ShareAccess(self.storage, self.auth, self.callers.get)
        self.svc = NfsService(access, self.root / "nfs", port=lambda: 2049, idle_commit=3600)
        self.svc.verifier = VERF

    async def stop(self) -> None:
        await self.svc.aclose()
        await self.storage.aclose()

    async def raw(self, prog: int, vers: int, proc: int, args: bytes, src: str = ALICE) -> bytes:
        """The whole reply record (without its record mark) of one call."""
        self.xid += 1
        body = w(self.xid, 0, 2, prog, vers, proc) + CRED + w(0, 0) + args
        (ev,) = RpcConnection().receive_data(struct.pack(">I", 0x8000_0000 | len(body)) + body)
        assert isinstance(ev, CallReceived)
        reply = b"".join(bytes(b) for b in await self.svc.call(src, ev))
        (mark,) = struct.unpack_from(">I", reply)
        assert mark == 0x8000_0000 | (len(reply) - 4)
        return reply[4:]

    async def __call__(self, prog: int, proc: int, args: bytes = b"", src: str = ALICE) -> bytes:
        """The result body of a successful (accepted, SUCCESS) call."""
        reply = await self.raw(prog, 3 if prog != PMAP else 2, proc, args, src)
        # xid, REPLY, MSG_ACCEPTED, verf AUTH_NONE (0, len 0), SUCCESS
        assert reply[:24] == w(self.xid, 1, 0, 0, 0, 0), reply[:24].hex()
        return reply[24:]

    async def mount(self, src: str = ALICE) -> None:
        body = await self(MOUNT, 1, s("/docs"), src)
        assert body[:4] == w(0), body.hex()


def run(tmp_path: Path, body: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        rig = Rig(tmp_path)
        await rig.start()
        try:
            await body(rig)
        finally:
            await rig.stop()

    asyncio.run(main())


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


# Ids: MNT of /docs makes the root id 1; then each new name the next id.
ROOT = 1
DIR_ATTR = fattr(2, 0o755, 0, ROOT)


def test_null_mount_export_dump_umnt_pmap(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        assert await rig(NFS, 0) == b""
        assert await rig(MOUNT, 0) == b""
        # MNT3_OK, the root handle, auth flavors [AUTH_NONE, AUTH_SYS]
        assert await rig(MOUNT, 1, s("/docs")) == w(0) + xfh(ROOT) + w(2, 0, 1)
        assert await rig(MOUNT, 1, s("docs/")) == w(0) + xfh(ROOT) + w(2, 0, 1)
        assert await rig(MOUNT, 1, s("/docs"), src=BOB) == w(0) + xfh(ROOT) + w(2, 0, 1)
        assert await rig(MOUNT, 1, s("/docs"), src=CAROL) == w(13)  # MNT3ERR_ACCES
        assert await rig(MOUNT, 1, s("/docs"), src=STRANGER) == w(13)
        assert await rig(MOUNT, 1, s("/other")) == w(2)  # a bucket, not a share: NOENT
        assert await rig(MOUNT, 1, s("/nope")) == w(2)
        # EXPORT: one entry "/docs" with no groups, then the end of the list
        assert await rig(MOUNT, 5) == w(1) + s("/docs") + w(0, 0)
        assert await rig(MOUNT, 5, src=CAROL) == w(0)
        assert await rig(MOUNT, 2) == w(0)  # DUMP: empty
        assert await rig(MOUNT, 3, s("/docs")) == b""  # UMNT: void
        assert await rig(MOUNT, 4) == b""  # UMNTALL: void
        # PMAP GETPORT (prog, vers, prot TCP, port): ours, then someone else's
        assert await rig(PMAP, 3, w(NFS, 3, 6, 0)) == w(2049)
        assert await rig(PMAP, 3, w(MOUNT, 3, 6, 0)) == w(2049)
        assert await rig(PMAP, 3, w(100021, 4, 6, 0)) == w(0)
        calls = rig.svc.calls
        assert calls[("mount_mnt", "ok")] == 3 and calls[("mount_mnt", "acces")] == 2
        assert calls[("mount_mnt", "noent")] == 2 and calls[("pmap_getport", "ok")] == 3

    run(tmp_path, body)


def test_rpc_level_errors(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        x = lambda: rig.xid  # noqa: E731
        # PROG_UNAVAIL
        assert await rig.raw(100021, 4, 0, b"") == w(x(), 1, 0, 0, 0, 1)
        # PROG_MISMATCH with low = high = 3
        assert await rig.raw(NFS, 4, 0, b"") == w(x(), 1, 0, 0, 0, 2, 3, 3)
        assert await rig.raw(MOUNT, 1, 0, b"") == w(x(), 1, 0, 0, 0, 2, 3, 3)
        # PROC_UNAVAIL
        assert await rig.raw(NFS, 3, 22, b"") == w(x(), 1, 0, 0, 0, 3)
        assert await rig.raw(MOUNT, 3, 6, b"") == w(x(), 1, 0, 0, 0, 3)
        # GARBAGE_ARGS: a handle longer than 64 bytes, and trailing bytes
        assert await rig.raw(NFS, 3, 1, w(65) + bytes(68)) == w(x(), 1, 0, 0, 0, 4)
        assert await rig.raw(NFS, 3, 1, xfh(1) + w(0)) == w(x(), 1, 0, 0, 0, 4)
        calls = rig.svc.calls
        assert calls[("nfs_getattr", "garbage_args")] == 2
        assert calls[("other", "prog_unavail")] == 1
        assert calls[("nfs_null", "prog_mismatch")] == 1
        assert calls[("mount_null", "prog_mismatch")] == 1
        assert calls[("other", "proc_unavail")] == 2  # NFS procedure 22, MOUNT procedure 6

    run(tmp_path, body)


def test_unsupported_procedures_answer_notsupp(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.mount()
        # READLINK: status + post_op_attr (none)
        assert await rig(NFS, 5, xfh(ROOT)) == w(10004, 0)
        # SYMLINK, MKNOD: status + wcc_data (none, none)
        assert await rig(NFS, 10, xfh(ROOT)) == w(10004, 0, 0)
        assert await rig(NFS, 11, xfh(ROOT)) == w(10004, 0, 0)
        # LINK: status + post_op_attr + wcc_data
        assert await rig(NFS, 15, xfh(ROOT)) == w(10004, 0, 0, 0)

    run(tmp_path, body)


def test_getattr_access_fsinfo_fsstat_pathconf(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.mount()
        expect(await rig(NFS, 1, xfh(ROOT)), w(0), DIR_ATTR)
        # ACCESS asked for everything (0x3f): the owner gets everything
        expect(await rig(NFS, 4, xfh(ROOT) + w(0x3F)), w(0), post(DIR_ATTR), w(0x3F))
        # a read-only member: READ | LOOKUP | EXECUTE (0x23), attributes show r-x
        await rig.mount(BOB)
        expect(
            await rig(NFS, 4, xfh(ROOT) + w(0x3F), src=BOB),
            w(0),
            post(fattr(2, 0o555, 0, ROOT)),
            w(0x23),
        )
        # FSINFO: rtmax rtpref rtmult wtmax wtpref wtmult dtpref, maxfilesize, time_delta,
        # properties FSF_HOMOGENEOUS
        mib = 1024 * 1024
        expect(
            await rig(NFS, 19, xfh(ROOT)),
            w(0),
            post(DIR_ATTR),
            w(mib, mib, 4096, mib, mib, 4096, 65536),
            h(64 * 1024**3),  # maxfilesize
            w(0, 1000, 0x8),
        )
        # PATHCONF: linkmax 1, name_max 255, no_trunc, chown_restricted, not case
        # insensitive, case preserving
        expect(await rig(NFS, 20, xfh(ROOT)), w(0), post(DIR_ATTR), w(1, 255, 1, 1, 0, 1))
        # FSSTAT: six sizes (from the disk, skipped) and invarsec 0
        expect(await rig(NFS, 18, xfh(ROOT)), w(0), post(DIR_ATTR), T(48), w(0))
        # a read-only member sees no free space
        reply = await rig(NFS, 18, xfh(ROOT), src=BOB)
        assert reply[4 + 4 + 84 + 16 : 4 + 4 + 84 + 24] == h(0)

    run(tmp_path, body)


def test_create_write_commit_read(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.mount()
        name = s("a.txt")
        # CREATE UNCHECKED, mode 0644 set: post_op_fh3, attributes, dir wcc
        expect(
            await rig(NFS, 8, xfh(ROOT) + name + w(0) + w(1, 0o644, 0, 0, 0, 0, 0)),
            w(0, 1) + xfh(2),
            post(fattr(1, 0o644, 0, 2)),
            wcc(DIR_ATTR),
        )
        # LOOKUP finds it: handle, its attributes, the directory's
        expect(
            await rig(NFS, 3, xfh(ROOT) + name),
            w(0) + xfh(2),
            post(fattr(1, 0o644, 0, 2)),
            post(DIR_ATTR),
        )
        expect(await rig(NFS, 3, xfh(ROOT) + s("nope")), w(2), post(DIR_ATTR))  # NOENT
        # staged only: not an object yet
        assert [o.key for o in (await rig.storage.list_objects("docs")).objects] == []
        # WRITE UNSTABLE 5 bytes at 0: wcc, count 5, committed UNSTABLE, verifier
        expect(
            await rig(NFS, 7, xfh(2) + h(0) + w(5, 0) + s("hello")),
            w(0),
            wcc(fattr(1, 0o644, 5, 2)),
            w(5, 0) + VERF,
        )
        # READ sees the staged data: attributes, count 3, eof false, data
        expect(
            await rig(NFS, 6, xfh(2) + h(1) + w(3)),
            w(0),
            post(fattr(1, 0o644, 5, 2)),
            w(3, 0) + s("ell"),
        )
        assert [o.key for o in (await rig.storage.list_objects("docs")).objects] == []
        # COMMIT: wcc and the verifier; now the object exists, whole
        expect(await rig(NFS, 21, xfh(2) + h(0) + w(0)), w(0), wcc(fattr(1, 0o644, 5, 2)), VERF)
        reader = await rig.storage.open_object("docs", "a.txt")
        assert b"".join([c async for c in reader.stream()]) == b"hello"
        await reader.aclose()
        # READ to the end: eof true
        expect(
            await rig(NFS, 6, xfh(2) + h(3) + w(100)),
            w(0),
            post(fattr(1, 0o644, 5, 2)),
            w(2, 1) + s("lo"),
        )
        # a FILE_SYNC write is stored before the reply (committed FILE_SYNC)
        expect(
            await rig(NFS, 7, xfh(2) + h(5) + w(1, 2) + s("!")),
            w(0),
            wcc(fattr(1, 0o644, 6, 2)),
            w(1, 2) + VERF,
        )
        info = await rig.storage.head_object("docs", "a.txt")
        assert info.size == 6
        # past maxfilesize (64 GiB): NFS3ERR_FBIG and nothing written
        expect(await rig(NFS, 7, xfh(2) + h(64 * 1024**3) + w(1, 0) + s("x")), w(27), w(0, 0))
        too_big = xfh(2) + w(0, 0, 0, 1) + h(64 * 1024**3 + 1) + w(0, 0) + w(0)
        expect(await rig(NFS, 2, too_big), w(27), w(0, 0))
        # SETATTR size 2 (truncate; guard off): staged like a write, stored at COMMIT
        expect(
            await rig(NFS, 2, xfh(2) + w(0, 0, 0, 1) + h(2) + w(0, 0) + w(0)),
            w(0),
            wcc(fattr(1, 0o644, 2, 2)),
        )
        assert (await rig.storage.head_object("docs", "a.txt")).size == 6
        await rig(NFS, 21, xfh(2) + h(0) + w(0))
        assert (await rig.storage.head_object("docs", "a.txt")).size == 2
        # CREATE GUARDED of an existing name: EXIST, with the dir's wcc
        expect(
            await rig(NFS, 8, xfh(ROOT) + name + w(1) + w(0, 0, 0, 0, 0, 0)),
            w(17),
            w(0, 0),
        )

    run(tmp_path, body)


def test_mkdir_readdir_readdirplus_remove_rmdir_rename(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.mount()
        await rig.storage.put_object("docs", "b.bin", _chunks(b"12345678"))
        # MKDIR "sub": fh 2, attributes, dir wcc
        expect(
            await rig(NFS, 9, xfh(ROOT) + s("sub") + w(1, 0o755, 0, 0, 0, 0, 0)),
            w(0, 1) + xfh(2),
            post(fattr(2, 0o755, 0, 2)),
            wcc(DIR_ATTR),
        )
        assert (await rig.storage.head_object("docs", "sub/")).size == 0  # the marker object
        # READDIR from cookie 0, count 4096: b.bin (id 3), sub (id 2); eof
        expect(
            await rig(NFS, 16, xfh(ROOT) + h(0) + bytes(8) + w(4096)),
            w(0),
            post(DIR_ATTR),
            T(8),  # the cookie verifier of this listing
            w(1) + h(3) + s("b.bin") + h(1),
            w(1) + h(2) + s("sub") + h(2),
            w(0, 1),
        )
        # resume after cookie 1
        expect(
            await rig(NFS, 16, xfh(ROOT) + h(1) + bytes(8) + w(4096)),
            w(0),
            post(DIR_ATTR),
            T(8),
            w(1) + h(2) + s("sub") + h(2),
            w(0, 1),
        )
        # READDIRPLUS: each entry with attributes and handle
        expect(
            await rig(NFS, 17, xfh(ROOT) + h(0) + bytes(8) + w(4096, 8192)),
            w(0),
            post(DIR_ATTR),
            T(8),
            w(1) + h(3) + s("b.bin") + h(1),
            post(fattr(1, 0o644, 8, 3)),
            w(1) + xfh(3),
            w(1) + h(2) + s("sub") + h(2),
            post(fattr(2, 0o755, 0, 2)),
            w(1) + xfh(2),
            w(0, 1),
        )
        # a count too small for one entry: NFS3ERR_TOOSMALL; a cookie past the end: BAD_COOKIE
        expect(await rig(NFS, 16, xfh(ROOT) + h(0) + bytes(8) + w(100)), w(10005), w(0))
        expect(await rig(NFS, 16, xfh(ROOT) + h(9) + bytes(8) + w(4096)), w(10003), w(0))
        # RENAME b.bin -> sub/c.bin: two wcc_data; the handle follows the file
        expect(
            await rig(NFS, 14, xfh(ROOT) + s("b.bin") + xfh(2) + s("c.bin")),
            w(0),
            wcc(DIR_ATTR),
            wcc(fattr(2, 0o755, 0, 2)),
        )
        expect(await rig(NFS, 1, xfh(3)), w(0), fattr(1, 0o644, 8, 3))
        keys = [o.key for o in (await rig.storage.list_objects("docs")).objects]
        assert keys == ["sub/", "sub/c.bin"]
        # RMDIR of a non-empty directory: NOTEMPTY; REMOVE of a directory: ISDIR
        expect(await rig(NFS, 13, xfh(ROOT) + s("sub")), w(66), w(0, 0))
        expect(await rig(NFS, 12, xfh(ROOT) + s("sub")), w(21), w(0, 0))
        # REMOVE the file; RMDIR the directory; the handle is stale after
        expect(await rig(NFS, 12, xfh(2) + s("c.bin")), w(0), wcc(fattr(2, 0o755, 0, 2)))
        expect(await rig(NFS, 13, xfh(ROOT) + s("sub")), w(0), wcc(DIR_ATTR))
        assert (await rig.storage.list_objects("docs")).objects == []
        assert await rig(NFS, 1, xfh(2)) == w(70)  # STALE
        assert await rig(NFS, 1, xfh(3)) == w(70)

    run(tmp_path, body)


def test_rename_replaces_atomically_and_moves_directories(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.mount()
        await rig.storage.put_object("docs", "new", _chunks(b"NEW"))
        await rig.storage.put_object("docs", "old", _chunks(b"OLD"))
        await rig.storage.put_object("docs", "d/x", _chunks(b"X"))
        # ids: d 2, new 3, old 4 (READDIRPLUS hands them out in name order), d/x 5
        await rig(NFS, 17, xfh(ROOT) + h(0) + bytes(8) + w(4096, 8192))
        await rig(NFS, 3, xfh(2) + s("x"))
        assert (await rig(NFS, 14, xfh(ROOT) + s("new") + xfh(ROOT) + s("old")))[:4] == w(0)
        reader = await rig.storage.open_object("docs", "old")
        assert b"".join([c async for c in reader.stream()]) == b"NEW"
        await reader.aclose()
        expect(await rig(NFS, 1, xfh(3)), w(0), fattr(1, 0o644, 3, 3))  # follows to "old"
        assert await rig(NFS, 1, xfh(4)) == w(70)  # the replaced file's handle is stale
        # a directory moves with what is under it, handles included
        assert (await rig(NFS, 14, xfh(ROOT) + s("d") + xfh(ROOT) + s("e")))[:4] == w(0)
        keys = [o.key for o in (await rig.storage.list_objects("docs")).objects]
        assert keys == ["e/", "e/x", "old"]  # (the move writes a marker for e)
        expect(await rig(NFS, 1, xfh(5)), w(0), fattr(1, 0o644, 1, 5))
        # into itself: INVAL; a file over a directory: ISDIR
        expect(await rig(NFS, 1, xfh(2)), w(0), fattr(2, 0o755, 0, 2))  # d, now e
        assert (await rig(NFS, 14, xfh(ROOT) + s("e") + xfh(2) + s("f")))[:4] == w(22)
        assert (await rig(NFS, 14, xfh(ROOT) + s("old") + xfh(ROOT) + s("e")))[:4] == w(21)

    run(tmp_path, body)


def test_read_only_member_and_non_member_change_nothing(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.storage.put_object("docs", "f", _chunks(b"data"))
        await rig.mount(BOB)
        await rig(NFS, 3, xfh(ROOT) + s("f"), src=BOB)  # id 2
        acces = w(13)
        # WRITE, CREATE, MKDIR, REMOVE, RMDIR, RENAME, SETATTR: NFS3ERR_ACCES
        assert (await rig(NFS, 7, xfh(2) + h(0) + w(1, 2) + s("x"), src=BOB))[:4] == acces
        assert (await rig(NFS, 8, xfh(ROOT) + s("g") + w(0) + bytes(24), src=BOB))[:4] == acces
        assert (await rig(NFS, 9, xfh(ROOT) + s("g") + bytes(24), src=BOB))[:4] == acces
        assert (await rig(NFS, 12, xfh(ROOT) + s("f"), src=BOB))[:4] == acces
        assert (await rig(NFS, 14, xfh(ROOT) + s("f") + xfh(ROOT) + s("g"), src=BOB))[:4] == acces
        setsize = xfh(2) + w(0, 0, 0, 1) + h(0) + w(0, 0, 0)
        assert (await rig(NFS, 2, setsize, src=BOB))[:4] == acces
        # reading works
        expect(
            await rig(NFS, 6, xfh(2) + h(0) + w(10), src=BOB),
            w(0),
            post(fattr(1, 0o444, 4, 2)),
            w(4, 1) + s("data"),
        )
        # a non-member and a stranger holding a valid handle: ACCES, even for GETATTR
        assert await rig(NFS, 1, xfh(2), src=CAROL) == acces
        assert await rig(NFS, 1, xfh(2), src=STRANGER) == acces
        assert (await rig(NFS, 12, xfh(ROOT) + s("f"), src=CAROL))[:4] == acces
        keys = [o.key for o in (await rig.storage.list_objects("docs")).objects]
        assert keys == ["f"]
        assert len(rig.svc.stages) == 0
        assert rig.svc.calls[("nfs_write", "acces")] == 1
        assert rig.svc.calls[("nfs_getattr", "acces")] == 2

    run(tmp_path, body)


def test_forged_handles_are_refused(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.mount()
        forged = bytearray(fh(ROOT))
        forged[-1] ^= 1  # a bit of the MAC
        assert await rig(NFS, 1, w(25) + bytes(forged) + b"\0\0\0") == w(10001)  # BADHANDLE
        other = b"\x01" + struct.pack(">Q", 2) + bytes(16)  # another id, no valid MAC
        assert await rig(NFS, 1, w(25) + other + b"\0\0\0") == w(10001)
        assert await rig(NFS, 1, w(4) + b"abcd") == w(10001)
        # a valid MAC for an id never handed out: STALE
        assert await rig(NFS, 1, xfh(77)) == w(70)

    run(tmp_path, body)


def test_handles_survive_a_restart_and_uncommitted_writes_do_not(tmp_path: Path) -> None:
    async def first(rig: Rig) -> None:
        await rig.mount()
        await rig(NFS, 9, xfh(ROOT) + s("d") + bytes(24))  # id 2
        await rig(NFS, 8, xfh(2) + s("kept") + w(0) + bytes(24))  # id 3
        await rig(NFS, 7, xfh(3) + h(0) + w(4, 2) + s("kept"))  # FILE_SYNC: stored
        await rig(NFS, 8, xfh(2) + s("lost") + w(0) + bytes(24))  # id 4
        await rig(NFS, 7, xfh(4) + h(0) + w(4, 0) + s("lost"))  # UNSTABLE, never committed
        # an overwrite cut short: O_TRUNC (SETATTR size 0), then part of the new data
        await rig(NFS, 2, xfh(3) + w(0, 0, 0, 1) + h(0) + w(0, 0) + w(0))
        await rig(NFS, 7, xfh(3) + h(0) + w(2, 0) + s("ne"))
        rig.svc.stages._stages.clear()  # a crash: the stop below commits nothing

    run(tmp_path, first)

    async def second(rig: Rig) -> None:
        assert rig.svc.verifier == VERF  # (set by the rig; a real start draws a new one)
        expect(await rig(NFS, 1, xfh(3)), w(0), fattr(1, 0o644, 4, 3))  # "kept", whole
        reader = await rig.storage.open_object("docs", "d/kept")
        assert b"".join([c async for c in reader.stream()]) == b"kept"
        await reader.aclose()
        expect(
            await rig(NFS, 3, xfh(2) + s("kept")),
            w(0) + xfh(3),
            T(4 + 84),
            post(fattr(2, 0o755, 0, 2)),
        )
        assert await rig(NFS, 1, xfh(4)) == w(70)  # absent: the new file was never committed
        assert [p.name for p in (rig.root / "nfs" / "staging").iterdir()] == []

    run(tmp_path, second)


def test_a_clean_stop_commits_what_is_staged(tmp_path: Path) -> None:
    async def first(rig: Rig) -> None:
        await rig.mount()
        await rig(NFS, 8, xfh(ROOT) + s("f") + w(0) + bytes(24))
        await rig(NFS, 7, xfh(2) + h(0) + w(3, 0) + s("abc"))

    run(tmp_path, first)

    async def second(rig: Rig) -> None:
        assert (await rig.storage.head_object("docs", "f")).size == 3

    run(tmp_path, second)


def test_idle_stage_is_committed(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.svc.stages.idle_commit = 0.05
        await rig.mount()
        await rig(NFS, 8, xfh(ROOT) + s("f") + w(0) + bytes(24))
        await rig(NFS, 7, xfh(2) + h(0) + w(3, 0) + s("abc"))
        for _ in range(200):
            if len(rig.svc.stages) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(rig.svc.stages) == 0
        assert (await rig.storage.head_object("docs", "f")).size == 3

    run(tmp_path, body)


def test_write_into_an_s3_object_keeps_the_rest(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.storage.put_object("docs", "f", _chunks(b"0123456789"))
        await rig.mount()
        await rig(NFS, 3, xfh(ROOT) + s("f"))  # id 2
        await rig(NFS, 7, xfh(2) + h(4) + w(2, 0) + s("ab"))
        await rig(NFS, 21, xfh(2) + h(0) + w(0))
        reader = await rig.storage.open_object("docs", "f")
        assert b"".join([c async for c in reader.stream()]) == b"0123ab6789"
        await reader.aclose()
        # and an S3 overwrite after that is what NFS reads next
        await rig.storage.put_object("docs", "f", _chunks(b"S3"))
        reply = await rig(NFS, 6, xfh(2) + h(0) + w(10))
        assert reply[-8:] == w(2) + b"S3\0\0"

    run(tmp_path, body)


PROCS = st.sampled_from(
    [(NFS, p) for p in range(23)] + [(MOUNT, p) for p in range(6)] + [(PMAP, 3)]
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(PROCS, st.binary(max_size=160), st.sampled_from([ALICE, BOB, STRANGER]))
def test_fuzz_every_procedure_gets_a_reply(
    tmp_path_factory: Any, prog_proc: tuple[int, int], args: bytes, src: str
) -> None:
    prog, proc = prog_proc
    root = tmp_path_factory.mktemp("fuzz")

    async def body(rig: Rig) -> None:
        await rig.mount()
        for raw in (args, xfh(ROOT) + args):  # random bytes, and behind a valid handle
            reply = await rig.raw(prog, 3 if prog != PMAP else 2, proc, raw, src)
            assert reply[:12] == w(rig.xid, 1, 0)  # accepted; a stat and a body follow
            assert struct.unpack_from(">I", reply, 20)[0] in (0, 3, 4), reply.hex()

    run(root, body)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 256])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    async def body(rig: Rig) -> None:
        await rig.mount()
        raw = name.encode()
        xname = w(len(raw)) + raw + b"\0" * (-len(raw) % 4)
        reply = await rig.raw(NFS, 3, 8, xfh(ROOT) + xname + w(0) + bytes(24))
        if len(raw) > 255:
            assert reply[20:] == w(4)  # GARBAGE_ARGS: over filename3's bound
        else:
            assert reply[20:24] == w(0)
            assert struct.unpack_from(">I", reply, 24)[0] in (17, 22)  # EXIST / INVAL
        assert len(rig.svc.stages) == 0

    run(tmp_path, body)


def test_a_stage_dropped_while_a_write_waits_is_made_again(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.storage.put_object("docs", "f", _chunks(b"0123456789"))
        await rig.mount()
        await rig(NFS, 3, xfh(ROOT) + s("f"))  # id 2
        get = rig.svc._stage
        dropped: list[object] = []

        async def dropping(node: Any, **kw: Any) -> Any:
            stage = await get(node, **kw)
            if not dropped:  # as the idle timer does between the lookup and the lock
                rig.svc.stages.drop(stage)
                dropped.append(stage)
            return stage

        rig.svc._stage = dropping  # type: ignore[method-assign]
        reply = await rig(NFS, 7, xfh(2) + h(0) + w(2, 2) + s("ab"))  # FILE_SYNC
        assert reply[:4] == w(0) and dropped
        reader = await rig.storage.open_object("docs", "f")
        assert b"".join([c async for c in reader.stream()]) == b"ab23456789"
        await reader.aclose()

    run(tmp_path, body)


def test_readdir_pages_read_one_snapshot(tmp_path: Path) -> None:
    """A directory read in pages: the client echoes the cookie verifier; removing entries
    between pages skips none of the others, and the directory is listed once."""

    async def body(rig: Rig) -> None:
        names = [f"f{i:03d}" for i in range(120)]
        for n in names:
            await rig.storage.put_object("docs", n, _chunks(b"x"))
        await rig.mount()
        listed = 0
        real = rig.svc._listing

        async def counting(d: Any) -> Any:
            nonlocal listed
            listed += 1
            return await real(d)

        rig.svc._listing = counting  # type: ignore[method-assign]
        seen: list[str] = []
        cookie, verf = 0, bytes(8)
        while True:
            body_ = await rig(NFS, 16, xfh(ROOT) + h(cookie) + verf + w(1024))
            assert body_[:8] == w(0, 1)  # OK, directory attributes follow
            pos = 8 + 84
            verf = body_[pos : pos + 8]
            pos += 8
            while struct.unpack_from(">I", body_, pos)[0] == 1:
                (n,) = struct.unpack_from(">I", body_, pos + 12)
                seen.append(body_[pos + 16 : pos + 16 + n].decode())
                pos += 16 + n + (-n % 4)
                (cookie,) = struct.unpack_from(">Q", body_, pos)
                pos += 8
            eof = struct.unpack_from(">I", body_, pos + 4)[0]
            if eof:
                break
            # meanwhile another client removes what this one has not read yet
            await rig.storage.delete_object("docs", names[len(seen) + 5])
        assert seen == names and listed == 1

    run(tmp_path, body)


def test_idle_commit_into_a_deleted_bucket_drops_the_stage(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        rig.svc.stages.idle_commit = 0.05
        await rig.mount()
        await rig(NFS, 8, xfh(ROOT) + s("f") + w(0) + bytes(24))
        await rig(NFS, 7, xfh(2) + h(0) + w(3, 0) + s("abc"))
        await rig.storage.delete_bucket("docs")  # empty in the store: f is only staged
        for _ in range(200):
            if len(rig.svc.stages) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(rig.svc.stages) == 0

    run(tmp_path, body)
