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

Where the code lives: this module dispatches a call, resolves handles and attributes and keeps
the staging of writes; :mod:`.procs` holds the NFSv3 procedures (functions bound as
:class:`NfsService`'s methods); :mod:`.context` what a procedure works with (the caller, a
resolved handle, :class:`NfsError`, name rules).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

from tunnelmesh.errors import NoSuchKey, StorageError

from tunnelmesh_s3.nfs import nfs3, procs
from tunnelmesh_s3.nfs.context import NfsError, _Ctx, _join, _Node, _nothing, _split_time
from tunnelmesh_s3.nfs.handles import BadHandle, Handles
from tunnelmesh_s3.nfs.nfs3 import Fattr, Ftype, Proc, Stat, Wcc
from tunnelmesh_s3.nfs.rpc import (
    GARBAGE_ARGS,
    PROC_UNAVAIL,
    PROG_MISMATCH,
    PROG_UNAVAIL,
    SYSTEM_ERR,
    CallReceived,
    accepted,
)
from tunnelmesh_s3.nfs.staging import Stage, Stages
from tunnelmesh_s3.nfs.xdr import Packer, XdrError
from tunnelmesh_s3.shareaccess import Entry, ShareAccess, ShareError, ShareView

__all__ = ["NfsError", "NfsService"]

log = logging.getLogger(__name__)

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

    # --- the parts written in other modules (functions bound here as methods: found on the
    # class as before, at the cost of a method written here) ---------------------------------

    # the NFSv3 procedures, one function each (procs.py)
    _getattr = procs._getattr
    _setattr = procs._setattr
    _lookup = procs._lookup
    _access = procs._access
    _read = procs._read
    _write = procs._write
    _create = procs._create
    _create_locked = procs._create_locked
    _mkdir = procs._mkdir
    _remove = procs._remove
    _rmdir = procs._rmdir
    _rename = procs._rename
    _move = procs._move
    _listing = procs._listing
    _readdir = procs._readdir
    _fsstat = procs._fsstat
    _fsinfo = procs._fsinfo
    _pathconf = procs._pathconf
    _commit = procs._commit
    _readdirplus = procs._readdir
