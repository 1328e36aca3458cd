"""WebDAV: what changes or reads content: MKCOL, GET/HEAD (one ``bytes=`` range, sent as S3 sends
an object), PUT (streamed into the store, visible whole or not at all), DELETE, COPY and MOVE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from aiohttp import web
from tunnelmesh.abc import ObjectInfo

from tunnelmesh_s3.dav.request import (
    PROPS_KEY,
    DavError,
    _check_locks,
    _href,
    _http_date,
    _if_header,
    _Req,
    _split_url,
)
from tunnelmesh_s3.objects import _send_body
from tunnelmesh_s3.shareaccess import ShareError


async def do_mkcol(req: _Req) -> web.StreamResponse:
    view = req.need_view()
    tokens = await _if_header(req)
    if await req.request.content.read(1) or req.request.content_length:
        raise DavError(415, "MKCOL takes no body")
    if not view.writable:
        raise ShareError("denied", f"share {view.name}: read-only for {view.principal.name}")
    if await view.stat(req.path) is not None:
        raise DavError(405, f"{req.lock_path} exists")
    _check_locks(req, tokens, req.lock_path, subtree=False, parent=True)
    try:
        await view.mkdir(req.path)
    except ShareError as exc:
        if exc.kind in ("not_found", "not_dir"):
            raise DavError(409, f"{req.lock_path}: the parent collection does not exist") from None
        raise
    return web.Response(status=201)


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of one ``bytes=`` range; None for the whole file (no or unusable header).

    Raises:
        DavError: 416 when the range starts past the end.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[6:].strip().partition("-")
    if not sep or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "" or int(last) == 0:
            raise DavError(416, "the range is not satisfiable")
        return max(size - int(last), 0), size
    start, end = int(first), size if last == "" else min(int(last) + 1, size)
    if start >= size or end <= start:
        raise DavError(416, "the range is not satisfiable")
    return start, end


async def do_get(req: _Req) -> web.StreamResponse:
    view = req.need_view()
    entry = await view.need(req.path)
    if entry.is_dir:
        names = [
            f'<li><a href="{escape(_href(req.share, c.path, c.is_dir))}">'
            f"{escape(c.name)}{'/' if c.is_dir else ''}</a></li>"
            async for c in view.listdir(req.path)
        ]
        html = f"<!doctype html><title>{escape(req.lock_path)}</title><ul>{''.join(names)}</ul>"
        return web.Response(text=html, content_type="text/html")
    reader = await view.open(req.path)
    try:
        info = reader.info
        headers = {
            "ETag": f'"{info.etag}"',
            "Last-Modified": _http_date(info.last_modified),
            "Content-Type": info.content_type,
            "Accept-Ranges": "bytes",
        }
        inm = req.request.headers.get("If-None-Match")
        if inm is not None and (inm.strip() == "*" or f'"{info.etag}"' in inm):
            return web.Response(status=304, headers={"ETag": headers["ETag"]})
        span = _range(req.request.headers.get("Range"), info.size)
        start, end = span or (0, info.size)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        response = web.StreamResponse(status=206 if span else 200, headers=headers)
        response.content_length = end - start
        await response.prepare(req.request)
        if req.request.method == "GET" and end > start:
            try:
                await _send_body(req.request, response, reader, start, end)
            except ConnectionError:
                return response  # the client went away mid-body
        await response.write_eof()
        return response
    finally:
        await reader.aclose()


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(1024 * 1024):
        yield chunk


def _put_precondition(request: web.Request) -> Callable[[ObjectInfo | None], None] | None:
    if_match = request.headers.get("If-Match")
    if_none = request.headers.get("If-None-Match")
    if if_match is None and if_none is None:
        return None

    def check(current: ObjectInfo | None) -> None:
        etag = f'"{current.etag}"' if current is not None else None
        if (
            if_none is not None
            and current is not None
            and (if_none.strip() == "*" or (etag is not None and etag in if_none))
        ):
            raise DavError(412, "If-None-Match: the file exists")
        if if_match is not None and (
            etag is None or (if_match.strip() != "*" and etag not in if_match)
        ):
            raise DavError(412, "If-Match: the file does not match")

    return check


async def do_put(req: _Req) -> web.StreamResponse:
    view = req.need_view()
    tokens = await _if_header(req)
    if not view.writable:
        raise ShareError("denied", f"share {view.name}: read-only for {view.principal.name}")
    if req.request.headers.get("Content-Range"):
        raise DavError(400, "PUT with Content-Range (partial update) is not supported")
    existing = await view.stat(req.path)
    _check_locks(req, tokens, req.lock_path, subtree=False, parent=existing is None)
    content_type = req.request.headers.get("Content-Type", "application/octet-stream")
    metadata = dict(existing.metadata) if existing is not None and not existing.is_dir else {}
    try:
        info, created = await view.write(
            req.path,
            _body(req.request),
            content_type=content_type[:255],
            metadata={k: v for k, v in metadata.items() if k == PROPS_KEY},
            precondition=_put_precondition(req.request),
        )
    except ShareError as exc:
        if exc.kind in ("not_found", "not_dir"):
            raise DavError(409, f"{req.lock_path}: the parent collection does not exist") from None
        raise
    return web.Response(status=201 if created else 204, headers={"ETag": f'"{info.etag}"'})


async def do_delete(req: _Req) -> web.StreamResponse:
    view = req.need_view()
    tokens = await _if_header(req)
    if not view.writable:
        raise ShareError("denied", f"share {view.name}: read-only for {view.principal.name}")
    if not req.path:
        raise DavError(403, "a share's root cannot be deleted over WebDAV")
    await view.need(req.path)
    _check_locks(req, tokens, req.lock_path, subtree=True, parent=True)
    await view.remove(req.path, recursive=True)
    req.locks.drop(req.lock_path)
    return web.Response(status=204)


async def _copy_move(req: _Req, move: bool) -> web.StreamResponse:
    view = req.need_view()
    tokens = await _if_header(req)
    dest = req.request.headers.get("Destination")
    if not dest:
        raise DavError(400, "COPY and MOVE need a Destination header")
    dshare, drest = _split_url(urlsplit(dest).path or "/")
    if not dshare:
        raise DavError(403, "the destination must be inside a share")
    principal = view.principal
    target = view if dshare == view.name else await req.access.open(dshare, principal)
    dpath = target.key(drest)
    if not dpath:
        raise DavError(403, "the destination cannot be a share's root")
    overwrite = req.request.headers.get("Overwrite", "T").strip().upper()
    if overwrite not in ("T", "F"):
        raise DavError(400, "Overwrite must be T or F")
    depth = req.request.headers.get("Depth", "infinity").strip().lower()
    if depth not in ("0", "infinity") or (move and depth != "infinity"):
        raise DavError(400, "Depth must be infinity (or 0 for COPY)")
    entry = await view.need(req.path)
    if not target.writable or (move and not view.writable):
        raise ShareError("denied", f"read-only for {principal.name}")
    src_lp, dst_lp = req.lock_path, f"{dshare}/{dpath}"
    if src_lp == dst_lp:
        raise DavError(403, "the source and the destination are the same")
    if move:
        _check_locks(req, tokens, src_lp, subtree=True, parent=True)
    existing = await target.stat(dpath)
    if existing is not None and overwrite == "F":
        raise DavError(412, f"{dst_lp} exists and Overwrite is F")
    _check_locks(req, tokens, dst_lp, subtree=True, parent=existing is None)
    if existing is not None:
        await target.remove(dpath, recursive=True)
    try:
        if move:
            await view.rename(req.path, dpath, into=target)
            req.locks.drop(src_lp)
        elif entry.is_dir and depth == "0":
            await target.mkdir(dpath, metadata={
                k: v for k, v in entry.metadata.items() if k == PROPS_KEY})  # fmt: skip
        else:
            await view.copy(req.path, dpath, into=target)
    except ShareError as exc:
        if exc.kind in ("not_found", "not_dir"):
            raise DavError(409, f"{dst_lp}: the parent collection does not exist") from None
        if exc.kind == "bad_path":
            raise DavError(403, str(exc)) from None
        raise
    return web.Response(status=204 if existing is not None else 201)


async def do_copy(req: _Req) -> web.StreamResponse:
    return await _copy_move(req, move=False)


async def do_move(req: _Req) -> web.StreamResponse:
    return await _copy_move(req, move=True)
