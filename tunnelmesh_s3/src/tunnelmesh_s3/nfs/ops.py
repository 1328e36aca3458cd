"""What NFSv3, MOUNT v3 and PMAP GETPORT calls do, over the shares (:mod:`tunnelmesh_s3.shareaccess`).

:class:`NfsService` turns one decoded RPC call (:class:`~tunnelmesh_s3.nfs.rpc.CallReceived`)
from a source address into the reply's record-marked buffers. It is async because it reads and
writes the store, but has no sockets: the asyncio driver (:mod:`tunnelmesh_s3.nfs.server`) and
the tests feed it calls.

Who calls is the mesh peer that holds the source address (``ShareAccess.caller``); the AUTH_SYS
uid and gid it claims change nothing but the owner shown in attributes (every file shows as the
caller's own, so the client's permission checks pass; the share's grants decide). A caller who
is no peer, or not a member of the share, gets MNT3ERR_ACCES / NFS3ERR_ACCES; a read-only
member's change gets NFS3ERR_ACCES, with nothing changed. Handles: :mod:`.handles`; writes and
COMMIT: :mod:`.staging`.

Unsupported procedures (READLINK, SYMLINK, MKNOD, LINK) answer NFS3ERR_NOTSUPP.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tunnelmesh.errors import NoSuchKey, StorageError, TunnelmeshError

from tunnelmesh_s3.auth import Principal
from tunnelmesh_s3.nfs import nfs3
from tunnelmesh_s3.nfs.handles import BadHandle, Handles
from tunnelmesh_s3.nfs.nfs3 import Fattr, Ftype, Proc, Stat, Wcc
from tunnelmesh_s3.nfs.rpc import (
    GARBAGE_ARGS,
    PROC_UNAVAIL,
    PROG_MISMATCH,
    PROG_UNAVAIL,
    SYSTEM_ERR,
    AuthSys,
    CallReceived,
    accepted,
)
from tunnelmesh_s3.nfs.staging import Stage, Stages
from tunnelmesh_s3.nfs.xdr import Packer, XdrError
from tunnelmesh_s3.shareaccess import Entry, ShareAccess, ShareError, ShareView

__all__ = ["NfsError", "NfsService"]

log = logging.getLogger(__name__)

NOBODY = 65534
LISTING_TTL = 30.0
"""Seconds a directory listing is kept for the pages of one READDIR(PLUS) walk."""
MAX_LISTINGS = 16
MAX_LISTING = 50_000
"""Listings kept at once, and the most entries one may have to be kept (bounded memory)."""
_UNSUPPORTED = {Proc.READLINK, Proc.SYMLINK, Proc.MKNOD, Proc.LINK}
_SHARE_ERRORS = {
    "denied": Stat.ACCES,
    "not_found": Stat.NOENT,
    "exists": Stat.EXIST,
    "not_dir": Stat.NOTDIR,
    "is_dir": Stat.ISDIR,
    "not_empty": Stat.NOTEMPTY,
    "bad_path": Stat.INVAL,
}


_ACCEPT_STATS = {1: "prog_unavail", 2: "prog_mismatch", 3: "proc_unavail", 4: "garbage_args"}
_PROGRAMS = {
    nfs3.NFS_PROGRAM: ("nfs", Proc),
    nfs3.MOUNT_PROGRAM: ("mount", nfs3.MountProc),
    nfs3.PMAP_PROGRAM: ("pmap", None),
}


def _label(ev: CallReceived, reply: list[bytes | memoryview]) -> tuple[str, str]:
    """(procedure, status) of a call and its reply, from fixed sets: ``nfs_write``,
    ``mount_mnt``, ``pmap_getport``, ``other``; ``ok``, an nfsstat3 or mountstat3 name, or
    the RPC accept status (``garbage_args``, ``system_err``, ...)."""
    program, procs = _PROGRAMS.get(ev.prog, ("", None))
    if not program:
        procedure = "other"
    elif procs is None:
        procedure = {0: "pmap_null", 3: "pmap_getport"}.get(ev.proc, "other")
    else:
        try:
            procedure = f"{program}_{procs(ev.proc).name.lower()}"
        except ValueError:
            procedure = "other"
    head = bytes(reply[1][20:24])
    accept = int.from_bytes(head, "big") if len(head) == 4 else 5
    if accept != 0:
        return procedure, _ACCEPT_STATS.get(accept, "system_err")
    if len(reply) > 2 and len(reply[2]) >= 4 and procedure not in ("nfs_null", "mount_null"):
        code = int.from_bytes(bytes(reply[2][:4]), "big")
        if program == "nfs":
            return procedure, Stat(code).name.lower() if code in Stat._value2member_map_ else "ok"
        if procedure == "mount_mnt":
            return procedure, nfs3.MountStat(code).name.lower()
    return procedure, "ok"


class NfsError(TunnelmeshError):
    """Ends a procedure with ``stat`` (and the directory attributes its failure arm carries)."""

    def __init__(self, stat: Stat, message: str = "") -> None:
        super().__init__(message or stat.name)
        self.stat = stat


@dataclass(slots=True)
class _Ctx:
    principal: Principal | None
    auth: AuthSys | None

    @property
    def uid(self) -> int:
        return self.auth.uid if self.auth is not None else NOBODY

    @property
    def gid(self) -> int:
        return self.auth.gid if self.auth is not None else NOBODY


@dataclass(slots=True)
class _Node:
    view: ShareView
    id: int
    key: str  # "" for the share's root; a directory's path without a trailing "/"
    entry: Entry


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


def _split_time(t: float) -> tuple[int, int]:
    sec = int(t)
    return sec & 0xFFFF_FFFF, int((t - sec) * 1e9) % 1_000_000_000


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _check_name(name: str) -> None:
    if not name or "/" in name or "\x00" in name:
        raise NfsError(Stat.INVAL, f"bad name {name!r}")
    if name in (".", ".."):
        raise NfsError(Stat.EXIST, f"{name!r} always exists")
    if len(name.encode()) > nfs3.MAX_NAME:
        raise NfsError(Stat.NAMETOOLONG)


class NfsService:
    """NFSv3 + MOUNT v3 (+ PMAP GETPORT) over the shares of one store.

    Args:
        access: the shares and who may use them.
        root: this service's directory (handle table, secret, staging files).
        port: the port it listens on (PMAP GETPORT's answer), read at each call.
        idle_commit: seconds after the last WRITE when uncommitted data is committed anyway.
    """

    def __init__(
        self,
        access: ShareAccess,
        root: str | os.PathLike[str],
        *,
        port: Callable[[], int] = lambda: 2049,
        idle_commit: float = 10.0,
    ) -> None:
        self.access = access
        self.root = Path(root)
        self.handles = Handles(self.root)
        self.stages = Stages(self.root / "staging", self._commit_stage, idle_commit=idle_commit)
        self.port = port
        self.verifier = secrets.token_bytes(8)  # new at each start: clients resend UNSTABLE data
        self.started = time.time()
        self._dir_changed: dict[tuple[str, str], float] = {}
        self._staging = asyncio.Lock()  # one get-or-create of a stage at a time
        self._listings: OrderedDict[bytes, tuple[str, str, list[tuple[str, Entry]], float]] = (
            OrderedDict()
        )
        self.calls: dict[tuple[str, str], int] = {}
        """Calls by (procedure, status): ``tunnelmesh_nfs_calls_total`` (see :func:`_label`)."""

    async def aclose(self) -> None:
        """Commit what is staged (a clean stop loses nothing), then close."""
        for stage in list(self.stages._stages.values()):
            if stage.dirty:
                try:
                    await self._commit_stage(stage)
                except (StorageError, OSError, ShareError) as exc:
                    log.warning("nfs: %s/%s not committed at stop: %s", stage.share, stage.key, exc)
        await self.stages.aclose()
        self.handles.close()

    # --- dispatch -------------------------------------------------------------------------

    async def call(self, address: str, ev: CallReceived) -> list[bytes | memoryview]:
        """The reply to one call from ``address`` (record-marked buffers), counted."""
        reply = await self._call(address, ev)
        key = _label(ev, reply)
        self.calls[key] = self.calls.get(key, 0) + 1
        return reply

    async def _call(self, address: str, ev: CallReceived) -> list[bytes | memoryview]:
        ctx = _Ctx(self.access.caller(address), ev.auth)
        try:
            if ev.prog == nfs3.NFS_PROGRAM:
                if ev.vers != nfs3.NFS_V3:
                    return accepted(ev.xid, PROG_MISMATCH, mismatch=(3, 3))
                return await self._nfs(ctx, ev)
            if ev.prog == nfs3.MOUNT_PROGRAM:
                if ev.vers != nfs3.MOUNT_V3:
                    return accepted(ev.xid, PROG_MISMATCH, mismatch=(3, 3))
                return await self._mount(ctx, ev)
            if ev.prog == nfs3.PMAP_PROGRAM and ev.vers == nfs3.PMAP_V2:
                return self._pmap(ev)
            return accepted(ev.xid, PROG_UNAVAIL)
        except XdrError as exc:
            log.debug("nfs: garbage arguments from %s: %s", address, exc)
            return accepted(ev.xid, GARBAGE_ARGS)
        except Exception:
            log.exception("nfs: call %d/%d failed", ev.prog, ev.proc)
            return accepted(ev.xid, SYSTEM_ERR)

    def _pmap(self, ev: CallReceived) -> list[bytes | memoryview]:
        if ev.proc == 0:
            return accepted(ev.xid)
        if ev.proc != 3:  # GETPORT only: nothing registers with us
            return accepted(ev.xid, PROC_UNAVAIL)
        prog, vers, prot = nfs3.decode_getport(ev.args)
        ours = (prog, vers) in ((nfs3.NFS_PROGRAM, 3), (nfs3.MOUNT_PROGRAM, 3)) and prot == 6
        return accepted(ev.xid, body=[Packer().uint32(self.port() if ours else 0).getvalue()])

    async def _mount(self, ctx: _Ctx, ev: CallReceived) -> list[bytes | memoryview]:
        proc = ev.proc
        if proc == nfs3.MountProc.NULL:
            return accepted(ev.xid)
        if proc == nfs3.MountProc.MNT:
            return accepted(ev.xid, body=[await self._mnt(ctx, nfs3.decode_dirpath(ev.args))])
        if proc == nfs3.MountProc.DUMP:
            return accepted(ev.xid, body=[Packer().boolean(False).getvalue()])
        if proc == nfs3.MountProc.UMNT:
            nfs3.decode_dirpath(ev.args)
            return accepted(ev.xid)
        if proc == nfs3.MountProc.UMNTALL:
            return accepted(ev.xid)
        if proc == nfs3.MountProc.EXPORT:
            names = self.access.shares(ctx.principal) if ctx.principal is not None else []
            return accepted(ev.xid, body=[nfs3.exports([f"/{n}" for n in names])])
        return accepted(ev.xid, PROC_UNAVAIL)

    async def _mnt(self, ctx: _Ctx, path: str) -> bytes:
        """MNT ``/share`` (or ``/share/dir``): the root handle, or why not."""
        fail = Packer()
        if ctx.principal is None:
            return fail.uint32(nfs3.MountStat.ACCES).getvalue()
        share, _, sub = path.strip("/").partition("/")
        try:
            view = await self.access.open(share, ctx.principal)
            entry = await view.need_dir(sub)
        except ShareError as exc:
            stat = {
                "denied": nfs3.MountStat.ACCES,
                "not_dir": nfs3.MountStat.NOTDIR,
                "bad_path": nfs3.MountStat.INVAL,
            }.get(exc.kind, nfs3.MountStat.NOENT)
            log.info("nfs: MNT %s by %s refused: %s", path, ctx.principal.name, exc)
            return fail.uint32(stat).getvalue()
        id_ = await asyncio.to_thread(self.handles.id_of, share, entry.path)
        log.info("nfs: %s mounted %s", ctx.principal.name, path)
        return nfs3.mnt_ok(self.handles.encode(id_))

    async def _nfs(self, ctx: _Ctx, ev: CallReceived) -> list[bytes | memoryview]:
        try:
            proc = Proc(ev.proc)
        except ValueError:
            return accepted(ev.xid, PROC_UNAVAIL)
        if proc == Proc.NULL:
            return accepted(ev.xid)
        if proc in _UNSUPPORTED:
            return accepted(ev.xid, body=[nfs3.failure(proc, Stat.NOTSUPP)])
        args = nfs3.decode_args(proc, ev.args)
        handler = getattr(self, f"_{proc.name.lower()}")
        try:
            body: list[bytes | memoryview] = await handler(ctx, args)
        except NfsError as exc:
            body = [nfs3.failure(proc, exc.stat)]
        except ShareError as exc:
            body = [nfs3.failure(proc, _SHARE_ERRORS.get(exc.kind, Stat.IO))]
        except StorageError as exc:
            log.warning("nfs: %s failed in the store: %s", proc.name, exc)
            body = [nfs3.failure(proc, Stat.IO)]
        return accepted(ev.xid, body=body)

    # --- handles, attributes ----------------------------------------------------------------

    async def _view(self, ctx: _Ctx, share: str) -> ShareView:
        if ctx.principal is None:
            raise NfsError(Stat.ACCES, "not a mesh peer")
        try:
            return await self.access.open(share, ctx.principal)
        except ShareError as exc:
            raise NfsError(Stat.ACCES if exc.kind == "denied" else Stat.STALE) from None

    async def _entry(self, view: ShareView, key: str) -> Entry | None:
        stage = self.stages.get(view.name, key)
        if stage is not None and (stage.new or stage.dirty):
            return Entry(key, False, stage.size, stage.etag, stage.mtime)
        entry = await view.stat(key)
        if entry is None and stage is not None:
            self.stages.drop(stage)  # removed behind our back (over S3)
        return entry

    async def _node(self, ctx: _Ctx, fh: bytes) -> _Node:
        try:
            where = self.handles.decode(fh)
        except BadHandle:
            raise NfsError(Stat.BADHANDLE) from None
        if where is None:
            raise NfsError(Stat.STALE)
        id_, share, key = where
        view = await self._view(ctx, share)
        entry = await self._entry(view, key)
        if entry is None:
            raise NfsError(Stat.STALE)
        return _Node(view, id_, key, entry)

    async def _dir(self, ctx: _Ctx, fh: bytes) -> _Node:
        node = await self._node(ctx, fh)
        if not node.entry.is_dir:
            raise NfsError(Stat.NOTDIR)
        return node

    async def _child(self, parent: _Node, name: str) -> _Node | None:
        key = _join(parent.key, name)
        try:
            entry = await self._entry(parent.view, key)
        except ShareError:
            return None
        if entry is None:
            return None
        id_ = self.handles.known(parent.view.name, key)
        if id_ is None:
            id_ = await asyncio.to_thread(self.handles.id_of, parent.view.name, key)
        return _Node(parent.view, id_, key, entry)

    def _fattr(self, ctx: _Ctx, node: _Node) -> Fattr:
        e, w = node.entry, node.view.writable
        mtime = e.mtime or self.started
        if e.is_dir:
            mtime = max(mtime, self._dir_changed.get((node.view.name, node.key), self.started))
        t = _split_time(mtime)
        fsid = int.from_bytes(hashlib.sha256(node.view.name.encode()).digest()[:8], "big")
        return Fattr(
            type=Ftype.DIR if e.is_dir else Ftype.REG,
            mode=(0o755 if w else 0o555) if e.is_dir else (0o644 if w else 0o444),
            nlink=2 if e.is_dir else 1,
            uid=ctx.uid,
            gid=ctx.gid,
            size=e.size,
            used=(e.size + 4095) // 4096 * 4096,
            fsid=fsid,
            fileid=node.id,
            atime=t,
            mtime=t,
            ctime=t,
        )

    async def _attr_of(self, ctx: _Ctx, view: ShareView, key: str) -> Fattr | None:
        entry = await self._entry(view, key)
        id_ = self.handles.known(view.name, key)
        if entry is None or id_ is None:
            return None
        return self._fattr(ctx, _Node(view, id_, key, entry))

    def _changed(self, share: str, dir_key: str) -> None:
        """Note a change in a directory made over NFS (its mtime, which clients cache by)."""
        if len(self._dir_changed) >= 10_000:  # bounded: the oldest notes go (their mtimes
            for key in list(self._dir_changed)[:5_000]:  # fall back to marker/start time)
                del self._dir_changed[key]
        self._dir_changed[(share, dir_key)] = time.time()

    async def _dir_wcc(self, ctx: _Ctx, d: _Node) -> Wcc:
        return Wcc(after=await self._attr_of(ctx, d.view, d.key))

    @staticmethod
    def _need_write(view: ShareView) -> None:
        if not view.writable:
            raise NfsError(Stat.ACCES, f"share {view.name} is read-only for this peer")

    # --- staging -------------------------------------------------------------------------------

    async def _commit_stage(self, stage: Stage) -> None:
        """Put the stage's content into the store (the lock keeps writes out meanwhile)."""
        async with stage.lock:
            if not stage.dirty or stage.closed:
                return
            try:
                info = await self.access.storage.put_object(stage.share, stage.key, stage.body())
            except StorageError:
                log.warning("nfs: commit of %s/%s failed", stage.share, stage.key, exc_info=True)
                raise
            stage.new, stage.dirty, stage.etag = False, False, info.etag
            stage.mtime = info.last_modified
            self.stages.arm(stage)

    async def _stage(self, node: _Node, *, fill: bool = True) -> Stage:
        """The file's stage, made from its stored content when there is none (``fill``
        False: empty, for a truncation to 0)."""
        async with self._staging:
            return await self._get_stage(node, fill=fill)

    async def _get_stage(self, node: _Node, *, fill: bool = True) -> Stage:
        stage = self.stages.get(node.view.name, node.key)
        if stage is not None:
            if stage.new or stage.dirty:
                return stage
            try:  # a clean stage is reused only while the store still holds what it holds
                info = await self.access.storage.head_object(node.view.name, node.key)
                if info.etag == stage.etag:
                    return stage
            except NoSuchKey:
                pass
            self.stages.drop(stage)
        if self.stages.full():
            raise NfsError(Stat.JUKEBOX, "too many files being written; retry")
        stage = self.stages.new(node.view.name, node.key, new=False)
        try:
            async with stage.lock:
                reader = await node.view.open(node.key)
                try:
                    stage.etag = reader.info.etag
                    pos = 0
                    async for chunk in reader.stream() if fill else _nothing():
                        await stage.pwrite(chunk, pos)
                        pos += len(chunk)
                finally:
                    await reader.aclose()
                stage.dirty = False
                stage.mtime = reader.info.last_modified
        except BaseException:
            self.stages.drop(stage)
            raise
        return stage

    async def _change(
        self,
        node: _Node,
        change: Callable[[Stage], Awaitable[None]],
        *,
        locked: bool = False,
        fill: bool = True,
    ) -> Stage:
        """Apply ``change`` to the file's stage under its lock (``locked``: the caller holds
        the staging lock). A stage dropped while we waited for it (idle, removed) is made again."""
        for _ in range(3):
            get = self._get_stage if locked else self._stage
            stage = await get(node, fill=fill)
            async with stage.lock:
                if stage.closed:
                    continue
                await change(stage)
                return stage
        raise NfsError(Stat.JUKEBOX, "the file's stage kept going away; retry")

    async def _set_size(self, node: _Node, size: int, *, locked: bool = False) -> None:
        self._need_write(node.view)
        if size > nfs3.MAX_FILE:
            raise NfsError(Stat.FBIG)
        # Staged like a write: stored at the next COMMIT (or idle commit) together with the data
        # that follows it, so an overwrite (open with O_TRUNC, writes, COMMIT) cut by a crash
        # leaves the old file whole, never an empty or half-written one. RFC 1813 wants SETATTR
        # stable at once; the difference is that a truncation with nothing after it can be
        # undone by a crash within the idle delay (no data is lost).
        await self._change(node, lambda st: st.truncate(size), locked=locked, fill=size > 0)

    # --- procedures -----------------------------------------------------------------------------

    async def _getattr(self, ctx: _Ctx, a: nfs3.FhArgs) -> list[bytes]:
        node = await self._node(ctx, a.fh)
        p = Packer().uint32(Stat.OK)
        nfs3.fattr(p, self._fattr(ctx, node))
        return [p.getvalue()]

    async def _setattr(self, ctx: _Ctx, a: nfs3.SetattrArgs) -> list[bytes]:
        node = await self._node(ctx, a.fh)
        before = self._fattr(ctx, node)
        if a.guard is not None and a.guard != before.ctime:
            raise NfsError(Stat.NOT_SYNC)
        if a.attr.size is not None:
            if node.entry.is_dir:
                raise NfsError(Stat.ISDIR)
            if a.attr.size != node.entry.size or node.entry.size == 0:
                await self._set_size(node, a.attr.size)
        elif any(v is not None for v in (a.attr.mode, a.attr.uid, a.attr.gid)):
            self._need_write(node.view)  # accepted and ignored: the grants decide, not modes
        p = Packer().uint32(Stat.OK)
        nfs3.wcc(p, Wcc(after=await self._attr_of(ctx, node.view, node.key)))
        return [p.getvalue()]

    async def _lookup(self, ctx: _Ctx, a: nfs3.DiropArgs) -> list[bytes]:
        d = await self._dir(ctx, a.dir)
        if a.name in ("", "."):
            child: _Node | None = d
        elif a.name == "..":
            up = d.key.rpartition("/")[0]
            up_id = await asyncio.to_thread(self.handles.id_of, d.view.name, up)
            child = _Node(d.view, up_id, up, await d.view.need_dir(up))
        elif "/" in a.name or "\x00" in a.name:
            child = None
        else:
            child = await self._child(d, a.name)
        dattr = self._fattr(ctx, d)
        if child is None:
            p = Packer().uint32(Stat.NOENT)
            nfs3.post_op_attr(p, dattr)
            return [p.getvalue()]
        p = Packer().uint32(Stat.OK).opaque(self.handles.encode(child.id))
        nfs3.post_op_attr(p, self._fattr(ctx, child))
        nfs3.post_op_attr(p, dattr)
        return [p.getvalue()]

    async def _access(self, ctx: _Ctx, a: nfs3.AccessArgs) -> list[bytes]:
        node = await self._node(ctx, a.fh)
        allowed = nfs3.ACCESS_READ | nfs3.ACCESS_LOOKUP | nfs3.ACCESS_EXECUTE
        if node.view.writable:
            allowed |= nfs3.ACCESS_MODIFY | nfs3.ACCESS_EXTEND | nfs3.ACCESS_DELETE
        p = Packer().uint32(Stat.OK)
        nfs3.post_op_attr(p, self._fattr(ctx, node))
        return [p.uint32(a.access & allowed).getvalue()]

    async def _read(self, ctx: _Ctx, a: nfs3.ReadArgs) -> list[bytes | memoryview]:
        node = await self._node(ctx, a.fh)
        if node.entry.is_dir:
            raise NfsError(Stat.ISDIR)
        size = node.entry.size
        count = min(a.count, nfs3.MAX_IO)
        end = min(size, a.offset + count)
        data = b""
        if a.offset < end:
            stage = self.stages.get(node.view.name, node.key)
            if stage is not None and (stage.new or stage.dirty):
                data = await stage.pread(end - a.offset, a.offset)
            else:
                reader = await node.view.open(node.key)
                try:
                    size = reader.info.size
                    end = min(size, a.offset + count)
                    chunks = (
                        [c async for c in reader.stream(a.offset, end)] if a.offset < end else []
                    )
                finally:
                    await reader.aclose()
                data = b"".join(chunks)
        eof = a.offset + len(data) >= size
        p = Packer().uint32(Stat.OK)
        nfs3.post_op_attr(p, self._fattr(ctx, node))
        p.uint32(len(data)).boolean(eof).uint32(len(data))
        return [p.getvalue(), data, b"\0" * (-len(data) % 4)]

    async def _write(self, ctx: _Ctx, a: nfs3.WriteArgs) -> list[bytes]:
        node = await self._node(ctx, a.fh)
        if node.entry.is_dir:
            raise NfsError(Stat.ISDIR)
        self._need_write(node.view)
        if a.offset + len(a.data) > nfs3.MAX_FILE:
            raise NfsError(Stat.FBIG)
        stage = await self._change(node, lambda st: st.pwrite(a.data, a.offset))
        self.stages.arm(stage)
        committed = nfs3.Stable.UNSTABLE
        if a.stable != nfs3.Stable.UNSTABLE:
            await self._commit_stage(stage)
            committed = nfs3.Stable.FILE_SYNC
        p = Packer().uint32(Stat.OK)
        nfs3.wcc(p, Wcc(after=await self._attr_of(ctx, node.view, node.key)))
        return [p.uint32(len(a.data)).uint32(committed).fixed(self.verifier).getvalue()]

    async def _create(self, ctx: _Ctx, a: nfs3.CreateArgs) -> list[bytes]:
        d = await self._dir(ctx, a.dir)
        self._need_write(d.view)
        _check_name(a.name)
        key = _join(d.key, a.name)
        d.view.key(key)  # refuses what can never be a key
        async with self._staging:
            node = await self._create_locked(d, key, a)
        attr = await self._attr_of(ctx, d.view, node.key)
        p = Packer().uint32(Stat.OK)
        nfs3.post_op_fh(p, self.handles.encode(node.id))
        nfs3.post_op_attr(p, attr)
        nfs3.wcc(p, await self._dir_wcc(ctx, d))
        return [p.getvalue()]

    async def _create_locked(self, d: _Node, key: str, a: nfs3.CreateArgs) -> _Node:
        existing = await self._child(d, a.name)
        if existing is not None:
            if existing.entry.is_dir:
                raise NfsError(Stat.EXIST)
            stage = self.stages.get(d.view.name, key)
            if a.how == nfs3.CreateMode.GUARDED:
                raise NfsError(Stat.EXIST)
            if a.how == nfs3.CreateMode.EXCLUSIVE and (stage is None or stage.verf != a.verf):
                raise NfsError(Stat.EXIST)
            if a.attr.size is not None and a.attr.size != existing.entry.size:
                await self._set_size(existing, a.attr.size, locked=True)
            return existing
        if self.stages.full():
            raise NfsError(Stat.JUKEBOX)
        stage = self.stages.new(d.view.name, key, new=True)
        stage.verf = a.verf
        id_ = await asyncio.to_thread(self.handles.id_of, d.view.name, key)
        self._changed(d.view.name, d.key)
        return _Node(d.view, id_, key, Entry(key, False, 0, "", stage.mtime))

    async def _mkdir(self, ctx: _Ctx, a: nfs3.MkdirArgs) -> list[bytes]:
        d = await self._dir(ctx, a.dir)
        self._need_write(d.view)
        _check_name(a.name)
        key = _join(d.key, a.name)
        if self.stages.get(d.view.name, key) is not None:
            raise NfsError(Stat.EXIST)
        await d.view.mkdir(key)
        self._changed(d.view.name, d.key)
        id_ = await asyncio.to_thread(self.handles.id_of, d.view.name, key)
        p = Packer().uint32(Stat.OK)
        nfs3.post_op_fh(p, self.handles.encode(id_))
        nfs3.post_op_attr(p, await self._attr_of(ctx, d.view, key))
        nfs3.wcc(p, await self._dir_wcc(ctx, d))
        return [p.getvalue()]

    async def _remove(self, ctx: _Ctx, a: nfs3.DiropArgs) -> list[bytes]:
        d = await self._dir(ctx, a.dir)
        self._need_write(d.view)
        child = await self._child(d, a.name) if a.name not in (".", "..") else None
        if child is None:
            raise NfsError(Stat.NOENT)
        if child.entry.is_dir:
            raise NfsError(Stat.ISDIR)
        stage = self.stages.get(d.view.name, child.key)
        if stage is not None:
            async with stage.lock:
                self.stages.drop(stage)
        await d.view.storage.delete_object(d.view.name, child.key)
        self._changed(d.view.name, d.key)
        p = Packer().uint32(Stat.OK)
        nfs3.wcc(p, await self._dir_wcc(ctx, d))
        return [p.getvalue()]

    async def _rmdir(self, ctx: _Ctx, a: nfs3.DiropArgs) -> list[bytes]:
        d = await self._dir(ctx, a.dir)
        self._need_write(d.view)
        if a.name in (".", ".."):
            raise NfsError(Stat.INVAL)
        child = await self._child(d, a.name)
        if child is None:
            raise NfsError(Stat.NOENT)
        if not child.entry.is_dir:
            raise NfsError(Stat.NOTDIR)
        if self.stages.under(d.view.name, child.key):
            raise NfsError(Stat.NOTEMPTY)
        await d.view.remove(child.key)
        self._changed(d.view.name, d.key)
        p = Packer().uint32(Stat.OK)
        nfs3.wcc(p, await self._dir_wcc(ctx, d))
        return [p.getvalue()]

    async def _rename(self, ctx: _Ctx, a: nfs3.RenameArgs) -> list[bytes]:
        src_dir = await self._dir(ctx, a.from_dir)
        dst_dir = await self._dir(ctx, a.to_dir)
        if src_dir.view.name != dst_dir.view.name:
            raise NfsError(Stat.XDEV)
        view = src_dir.view
        self._need_write(view)
        if a.from_name in (".", "..") or a.to_name in (".", ".."):
            raise NfsError(Stat.INVAL)
        _check_name(a.to_name)
        src = await self._child(src_dir, a.from_name)
        if src is None:
            raise NfsError(Stat.NOENT)
        dst_key = _join(dst_dir.key, a.to_name)
        view.key(dst_key)
        if src.key != dst_key:
            await self._move(view, src, dst_dir, dst_key)
            self._changed(view.name, src_dir.key)
            self._changed(view.name, dst_dir.key)
        p = Packer().uint32(Stat.OK)
        nfs3.wcc(p, await self._dir_wcc(ctx, src_dir))
        nfs3.wcc(p, await self._dir_wcc(ctx, dst_dir))
        return [p.getvalue()]

    async def _move(self, view: ShareView, src: _Node, dst_dir: _Node, dst_key: str) -> None:
        if src.entry.is_dir and (dst_key + "/").startswith(src.key + "/"):
            raise NfsError(Stat.INVAL, "a directory cannot move into itself")
        dst = await self._child(dst_dir, dst_key.rpartition("/")[2])
        if dst is not None:
            if src.entry.is_dir != dst.entry.is_dir:
                raise NfsError(Stat.EXIST if src.entry.is_dir else Stat.ISDIR)
            if dst.entry.is_dir:
                if self.stages.under(view.name, dst.key):
                    raise NfsError(Stat.NOTEMPTY)
                await view.remove(dst.key)  # must be empty: not_empty otherwise
        stage = self.stages.get(view.name, src.key)
        if stage is not None:
            await self._commit_stage(stage)
            self.stages.drop(stage)
        dst_stage = self.stages.get(view.name, dst_key)
        if dst_stage is not None:
            self.stages.drop(dst_stage)
        for s in self.stages.under(view.name, src.key) if src.entry.is_dir else ():
            await self._commit_stage(s)
            self.stages.drop(s)
        if src.entry.is_dir:
            await view.rename(src.key, dst_key)
        else:
            # one atomic replace of the destination (the store's copy is a put), then the source
            await view.storage.copy_object(view.name, src.key, view.name, dst_key)
            await view.storage.delete_object(view.name, src.key)
        await asyncio.to_thread(self.handles.move, view.name, src.key, dst_key)

    async def _listing(self, d: _Node) -> list[tuple[str, Entry]]:
        """The directory's entries (stored and staged), in name order (UTF-8 bytes)."""
        names: dict[str, Entry] = {}
        async for e in d.view.listdir(d.key):
            names[e.name] = e
        for s in self.stages.under(d.view.name, d.key):
            rest = s.key[len(d.key) + 1 :] if d.key else s.key
            if "/" not in rest and (s.new or s.dirty):
                names[rest] = Entry(s.key, False, s.size, s.etag, s.mtime)
        return sorted(names.items(), key=lambda kv: kv[0].encode())

    async def _readdir(self, ctx: _Ctx, a: nfs3.ReaddirArgs) -> list[bytes]:
        d = await self._dir(ctx, a.dir)
        # Cookie 0 lists the directory and keeps the list under a fresh cookie verifier; the
        # next pages (the client echoes the verifier) read that snapshot, so a directory read in
        # pages costs one listing, and entries removed meanwhile shift nothing. An unknown or
        # expired verifier lists again.
        now = time.monotonic()
        snap = self._listings.get(a.verf) if a.cookie else None
        if snap is not None and snap[:2] == (d.view.name, d.key) and now - snap[3] < LISTING_TTL:
            ordered, verf = snap[2], a.verf
        else:
            ordered, verf = await self._listing(d), secrets.token_bytes(8)
            if len(ordered) <= MAX_LISTING:
                self._listings[verf] = (d.view.name, d.key, ordered, now)
                while len(self._listings) > MAX_LISTINGS:
                    self._listings.popitem(last=False)
        if a.cookie > len(ordered):
            raise NfsError(Stat.BAD_COOKIE)
        todo = ordered[a.cookie :]
        keys = [e.path for _, e in todo]
        budget = min(a.count, nfs3.MAX_IO) - 128  # status, dir attributes, verifier, end markers
        per = 140 if a.plus else 24  # the least bytes an entry takes
        ids = await asyncio.to_thread(
            self.handles.ids_of, d.view.name, keys[: max(0, budget // per)]
        )
        entries: list[nfs3.DirEntry] = []
        size = 0
        for i, ((name, e), id_) in enumerate(zip(todo, ids, strict=False)):
            node = _Node(d.view, id_, e.path, e)
            de = nfs3.DirEntry(id_, name, a.cookie + i + 1)
            if a.plus:
                de = nfs3.DirEntry(
                    id_, name, a.cookie + i + 1, self._fattr(ctx, node), self.handles.encode(id_)
                )
            n = nfs3.entry_size(de, a.plus)
            if size + n > budget:
                break
            size += n
            entries.append(de)
        if not entries and todo:
            raise NfsError(Stat.TOOSMALL)
        eof = a.cookie + len(entries) == len(ordered)
        return [nfs3.readdir_ok(self._fattr(ctx, d), verf, entries, eof, a.plus)]

    _readdirplus = _readdir

    async def _fsstat(self, ctx: _Ctx, a: nfs3.FhArgs) -> list[bytes]:
        node = await self._node(ctx, a.fh)
        st = await asyncio.to_thread(os.statvfs, self.root)
        p = Packer().uint32(Stat.OK)
        nfs3.post_op_attr(p, self._fattr(ctx, node))
        free = st.f_bavail * st.f_frsize if node.view.writable else 0
        p.uint64(st.f_blocks * st.f_frsize).uint64(st.f_bfree * st.f_frsize).uint64(free)
        p.uint64(st.f_files).uint64(st.f_ffree).uint64(st.f_favail if node.view.writable else 0)
        return [p.uint32(0).getvalue()]

    async def _fsinfo(self, ctx: _Ctx, a: nfs3.FhArgs) -> list[bytes]:
        node = await self._node(ctx, a.fh)
        p = Packer().uint32(Stat.OK)
        nfs3.post_op_attr(p, self._fattr(ctx, node))
        io = nfs3.MAX_IO
        p.uint32(io).uint32(io).uint32(4096).uint32(io).uint32(io).uint32(4096).uint32(64 * 1024)
        p.uint64(nfs3.MAX_FILE).uint32(0).uint32(1000)
        return [p.uint32(nfs3.FSF_HOMOGENEOUS).getvalue()]

    async def _pathconf(self, ctx: _Ctx, a: nfs3.FhArgs) -> list[bytes]:
        node = await self._node(ctx, a.fh)
        p = Packer().uint32(Stat.OK)
        nfs3.post_op_attr(p, self._fattr(ctx, node))
        p.uint32(1).uint32(nfs3.MAX_NAME)
        return [p.boolean(True).boolean(True).boolean(False).boolean(True).getvalue()]

    async def _commit(self, ctx: _Ctx, a: nfs3.CommitArgs) -> list[bytes]:
        node = await self._node(ctx, a.fh)
        stage = self.stages.get(node.view.name, node.key)
        if stage is not None and stage.dirty:
            self._need_write(node.view)
            await self._commit_stage(stage)
        p = Packer().uint32(Stat.OK)
        nfs3.wcc(p, Wcc(after=await self._attr_of(ctx, node.view, node.key)))
        return [p.fixed(self.verifier).getvalue()]
