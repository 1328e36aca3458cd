"""WebDAV: LOCK and UNLOCK (class 2) over :mod:`.locks`' table: exclusive and shared write locks,
depth 0 or infinity, bounded timeouts, refreshes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from xml.sax.saxutils import escape

from aiohttp import web

from tunnelmesh_s3.dav import locks as lk
from tunnelmesh_s3.dav.props import _activelock
from tunnelmesh_s3.dav.request import DavError, _if_header, _read_body, _Req
from tunnelmesh_s3.dav.xmlbody import DAV, parse, serialize
from tunnelmesh_s3.shareaccess import ShareError


async def do_lock(req: _Req) -> web.StreamResponse:
    view = req.need_view()
    tokens = await _if_header(req)
    body = await _read_body(req.request)
    timeout = lk.parse_timeout(req.request.headers.get("Timeout"))
    owner = view.principal.key
    if not body.strip():  # a refresh: the token comes in the If header
        for token in tokens:
            lock = req.locks.refresh(token, owner, timeout, req.now)
            if lock is not None and lock.covers(req.lock_path):
                return _lock_response(lock, 200)
        raise DavError(
            412,
            "a lock refresh needs the lock's token in an If header",
            "lock-token-matches-request-uri",
        )
    root = parse(body)
    if not root.is_(DAV, "lockinfo"):
        raise DavError(400, "a LOCK body must be a DAV:lockinfo element")
    scope = root.find(DAV, "lockscope")
    if scope is None or not scope.children or scope.children[0].ns != DAV:
        raise DavError(400, "DAV:lockinfo needs a lockscope")
    exclusive = scope.children[0].name == "exclusive"
    locktype = root.find(DAV, "locktype")
    if locktype is None or locktype.find(DAV, "write") is None:
        raise DavError(400, "only write locks exist")
    owner_node = root.find(DAV, "owner")
    owner_xml = (
        escape(owner_node.text) + "".join(serialize(c) for c in owner_node.children)
        if owner_node is not None
        else ""
    )
    depth = req.request.headers.get("Depth", "infinity").strip().lower()
    if depth not in ("0", "infinity"):
        raise DavError(400, "LOCK takes Depth 0 or infinity")
    if not view.writable:
        raise ShareError("denied", f"share {view.name}: read-only for {view.principal.name}")
    if not req.path:
        raise DavError(403, "a share's root cannot be locked")
    entry = await view.stat(req.path)
    try:
        lock = req.locks.lock(
            req.lock_path,
            exclusive=exclusive,
            infinity=depth == "infinity",
            owner_key=owner,
            owner_xml=owner_xml,
            timeout=timeout,
            now=req.now,
        )
    except lk.LockConflict as exc:
        raise DavError(423, str(exc), "no-conflicting-lock") from None
    if entry is None:  # LOCK of an unmapped URL makes an empty file (RFC 4918 7.3)
        try:
            await view.write(req.path, _empty())
        except ShareError as exc:
            req.locks.unlock(lock.token, req.lock_path, owner, req.now)
            if exc.kind in ("not_found", "not_dir"):
                raise DavError(
                    409, f"{req.lock_path}: the parent collection does not exist"
                ) from None
            raise
    return _lock_response(lock, 201 if entry is None else 200)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


def _lock_response(lock: lk.Lock, status: int) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>\n<D:prop xmlns:D="DAV:"><D:lockdiscovery>'
        f"{_activelock(lock, lock.root)}</D:lockdiscovery></D:prop>"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="application/xml",
        charset="utf-8",
        headers={"Lock-Token": f"<{lock.token}>"},
    )


async def do_unlock(req: _Req) -> web.StreamResponse:
    view = req.need_view()
    header = req.request.headers.get("Lock-Token", "").strip()
    if not (header.startswith("<") and header.endswith(">")):
        raise DavError(400, "UNLOCK needs a Lock-Token header: <token>")
    if not req.locks.unlock(header[1:-1], req.lock_path, view.principal.key, req.now):
        raise DavError(
            409, "no such lock of yours on this resource", "lock-token-matches-request-uri"
        )
    return web.Response(status=204)
