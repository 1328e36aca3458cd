"""NfsService: the NFSv3 procedures (functions bound as methods of
:class:`~tunnelmesh_s3.nfs.ops.NfsService`, found by ``_nfs`` as ``_<procedure>``).

GETATTR, SETATTR, LOOKUP, ACCESS, READ, WRITE, CREATE, MKDIR, REMOVE, RMDIR, RENAME,
READDIR(PLUS), FSSTAT, FSINFO, PATHCONF and COMMIT over the shares; each takes the caller and
its decoded arguments and returns the reply body, or raises :class:`NfsError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING

from tunnelmesh_s3.nfs import nfs3
from tunnelmesh_s3.nfs.context import (
    LISTING_TTL,
    MAX_LISTING,
    MAX_LISTINGS,
    NfsError,
    _check_name,
    _Ctx,
    _join,
    _Node,
)
from tunnelmesh_s3.nfs.nfs3 import Stat, Wcc
from tunnelmesh_s3.nfs.xdr import Packer
from tunnelmesh_s3.shareaccess import Entry, ShareView

if TYPE_CHECKING:
    from tunnelmesh_s3.nfs.ops import NfsService

log = logging.getLogger("tunnelmesh_s3.nfs.ops")
"""NfsService's log: every part of it logs under the name it always had."""


async def _getattr(self: NfsService, ctx: _Ctx, a: nfs3.FhArgs) -> list[bytes]:
    node = await self._node(ctx, a.fh)
    p = Packer().uint32(Stat.OK)
    nfs3.fattr(p, self._fattr(ctx, node))
    return [p.getvalue()]


async def _setattr(self: NfsService, ctx: _Ctx, a: nfs3.SetattrArgs) -> list[bytes]:
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


async def _lookup(self: NfsService, ctx: _Ctx, a: nfs3.DiropArgs) -> list[bytes]:
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


async def _access(self: NfsService, ctx: _Ctx, a: nfs3.AccessArgs) -> list[bytes]:
    node = await self._node(ctx, a.fh)
    allowed = nfs3.ACCESS_READ | nfs3.ACCESS_LOOKUP | nfs3.ACCESS_EXECUTE
    if node.view.writable:
        allowed |= nfs3.ACCESS_MODIFY | nfs3.ACCESS_EXTEND | nfs3.ACCESS_DELETE
    p = Packer().uint32(Stat.OK)
    nfs3.post_op_attr(p, self._fattr(ctx, node))
    return [p.uint32(a.access & allowed).getvalue()]


async def _read(self: NfsService, ctx: _Ctx, a: nfs3.ReadArgs) -> list[bytes | memoryview]:
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
                chunks = [c async for c in reader.stream(a.offset, end)] if a.offset < end else []
            finally:
                await reader.aclose()
            data = b"".join(chunks)
    eof = a.offset + len(data) >= size
    p = Packer().uint32(Stat.OK)
    nfs3.post_op_attr(p, self._fattr(ctx, node))
    p.uint32(len(data)).boolean(eof).uint32(len(data))
    return [p.getvalue(), data, b"\0" * (-len(data) % 4)]


async def _write(self: NfsService, ctx: _Ctx, a: nfs3.WriteArgs) -> list[bytes]:
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


async def _create(self: NfsService, ctx: _Ctx, a: nfs3.CreateArgs) -> list[bytes]:
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


async def _create_locked(self: NfsService, d: _Node, key: str, a: nfs3.CreateArgs) -> _Node:
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


async def _mkdir(self: NfsService, ctx: _Ctx, a: nfs3.MkdirArgs) -> list[bytes]:
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


async def _remove(self: NfsService, ctx: _Ctx, a: nfs3.DiropArgs) -> list[bytes]:
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


async def _rmdir(self: NfsService, ctx: _Ctx, a: nfs3.DiropArgs) -> list[bytes]:
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


async def _rename(self: NfsService, ctx: _Ctx, a: nfs3.RenameArgs) -> list[bytes]:
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


async def _move(
    self: NfsService, view: ShareView, src: _Node, dst_dir: _Node, dst_key: str
) -> None:
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


async def _listing(self: NfsService, d: _Node) -> list[tuple[str, Entry]]:
    """The directory's entries (stored and staged), in name order (UTF-8 bytes)."""
    names: dict[str, Entry] = {}
    async for e in d.view.listdir(d.key):
        names[e.name] = e
    for s in self.stages.under(d.view.name, d.key):
        rest = s.key[len(d.key) + 1 :] if d.key else s.key
        if "/" not in rest and (s.new or s.dirty):
            names[rest] = Entry(s.key, False, s.size, s.etag, s.mtime)
    return sorted(names.items(), key=lambda kv: kv[0].encode())


async def _readdir(self: NfsService, ctx: _Ctx, a: nfs3.ReaddirArgs) -> list[bytes]:
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
    ids = await asyncio.to_thread(self.handles.ids_of, d.view.name, keys[: max(0, budget // per)])
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


async def _fsstat(self: NfsService, ctx: _Ctx, a: nfs3.FhArgs) -> list[bytes]:
    node = await self._node(ctx, a.fh)
    st = await asyncio.to_thread(os.statvfs, self.root)
    p = Packer().uint32(Stat.OK)
    nfs3.post_op_attr(p, self._fattr(ctx, node))
    free = st.f_bavail * st.f_frsize if node.view.writable else 0
    p.uint64(st.f_blocks * st.f_frsize).uint64(st.f_bfree * st.f_frsize).uint64(free)
    p.uint64(st.f_files).uint64(st.f_ffree).uint64(st.f_favail if node.view.writable else 0)
    return [p.uint32(0).getvalue()]


async def _fsinfo(self: NfsService, ctx: _Ctx, a: nfs3.FhArgs) -> list[bytes]:
    node = await self._node(ctx, a.fh)
    p = Packer().uint32(Stat.OK)
    nfs3.post_op_attr(p, self._fattr(ctx, node))
    io = nfs3.MAX_IO
    p.uint32(io).uint32(io).uint32(4096).uint32(io).uint32(io).uint32(4096).uint32(64 * 1024)
    p.uint64(nfs3.MAX_FILE).uint32(0).uint32(1000)
    return [p.uint32(nfs3.FSF_HOMOGENEOUS).getvalue()]


async def _pathconf(self: NfsService, ctx: _Ctx, a: nfs3.FhArgs) -> list[bytes]:
    node = await self._node(ctx, a.fh)
    p = Packer().uint32(Stat.OK)
    nfs3.post_op_attr(p, self._fattr(ctx, node))
    p.uint32(1).uint32(nfs3.MAX_NAME)
    return [p.boolean(True).boolean(True).boolean(False).boolean(True).getvalue()]


async def _commit(self: NfsService, ctx: _Ctx, a: nfs3.CommitArgs) -> list[bytes]:
    node = await self._node(ctx, a.fh)
    stage = self.stages.get(node.view.name, node.key)
    if stage is not None and stage.dirty:
        self._need_write(node.view)
        await self._commit_stage(stage)
    p = Packer().uint32(Stat.OK)
    nfs3.wcc(p, Wcc(after=await self._attr_of(ctx, node.view, node.key)))
    return [p.fixed(self.verifier).getvalue()]
