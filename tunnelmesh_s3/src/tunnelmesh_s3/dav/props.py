"""WebDAV: properties: PROPFIND (``Depth`` 0 or 1) and PROPPATCH (dead properties, kept with the
object as metadata), and the live properties and ``multistatus`` answers they are written in.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from aiohttp import web

from tunnelmesh_s3.dav import locks as lk
from tunnelmesh_s3.dav.request import (
    MULTISTATUS,
    PROPS_KEY,
    STATUS_TEXT,
    DavError,
    _check_locks,
    _dead_props,
    _encode_props,
    _href,
    _http_date,
    _if_header,
    _iso,
    _read_body,
    _Req,
)
from tunnelmesh_s3.dav.xmlbody import DAV, Node, parse, serialize
from tunnelmesh_s3.shareaccess import Entry, ShareError

LIVE = (
    "resourcetype", "getcontentlength", "getlastmodified", "getetag", "getcontenttype",
    "creationdate", "displayname", "supportedlock", "lockdiscovery",
)  # fmt: skip


def _activelock(lock: lk.Lock, share_path: str) -> str:
    share, _, path = lock.root.partition("/")
    return (
        "<D:activelock>"
        f"<D:locktype><D:write/></D:locktype>"
        f"<D:lockscope><D:{'exclusive' if lock.exclusive else 'shared'}/></D:lockscope>"
        f"<D:depth>{'infinity' if lock.infinity else '0'}</D:depth>"
        + (f"<D:owner>{lock.owner_xml}</D:owner>" if lock.owner_xml else "")
        + f"<D:timeout>Second-{lock.timeout}</D:timeout>"
        f"<D:locktoken><D:href>{escape(lock.token)}</D:href></D:locktoken>"
        f"<D:lockroot><D:href>{escape(_href(share, path, False))}</D:href></D:lockroot>"
        "</D:activelock>"
    )


def _live(req: _Req, share: str, entry: Entry, name: str) -> str | None:
    lp = f"{share}/{entry.path}" if entry.path else share
    if name == "resourcetype":
        return "<D:collection/>" if entry.is_dir else ""
    if name == "getlastmodified" and entry.mtime:
        return escape(_http_date(entry.mtime))
    if name == "creationdate" and entry.mtime:
        return _iso(entry.mtime)
    if name == "displayname":
        return escape(entry.name or share)
    if name == "supportedlock":
        return "".join(
            f"<D:lockentry><D:lockscope><D:{s}/></D:lockscope><D:locktype><D:write/></D:locktype>"
            "</D:lockentry>"
            for s in ("exclusive", "shared")
        )
    if name == "lockdiscovery":
        return "".join(_activelock(lock, lp) for lock in req.locks.covering(lp, req.now))
    if entry.is_dir:
        return None
    if name == "getcontentlength":
        return str(entry.size)
    if name == "getetag":
        return escape(f'"{entry.etag}"')
    if name == "getcontenttype":
        return escape(entry.content_type)
    return None


def _propstat(props: list[str], status: int) -> str:
    return (
        f"<D:propstat><D:prop>{''.join(props)}</D:prop>"
        f"<D:status>HTTP/1.1 {status} {STATUS_TEXT.get(status, '')}</D:status></D:propstat>"
    )


def _prop_xml(ns: str, name: str, inner: str | None) -> str:
    if ns == DAV:
        return f"<D:{name}/>" if not inner else f"<D:{name}>{inner}</D:{name}>"
    return (
        f'<X:{name} xmlns:X="{escape(ns)}"/>'
        if not inner
        else (f'<X:{name} xmlns:X="{escape(ns)}">{inner}</X:{name}>')
    )


def _dead_xml(stored: str) -> str:
    return stored  # serialized with its own namespace declarations


def _response(req: _Req, share: str, entry: Entry, mode: str, wanted: list[Node]) -> str:
    dead = _dead_props(entry.metadata)
    found: list[str] = []
    missing: list[str] = []
    if mode in ("allprop", "propname"):
        for name in LIVE:
            value = _live(req, share, entry, name)
            if value is not None:
                found.append(_prop_xml(DAV, name, None if mode == "propname" else value))
        for (ns, name), stored in dead.items():
            found.append(_prop_xml(ns, name, None) if mode == "propname" else _dead_xml(stored))
    else:
        for node in wanted:
            value = _live(req, share, entry, node.name) if node.ns == DAV else None
            if value is not None:
                found.append(_prop_xml(DAV, node.name, value))
            elif (node.ns, node.name) in dead:
                found.append(_dead_xml(dead[(node.ns, node.name)]))
            else:
                missing.append(_prop_xml(node.ns, node.name, None))
    stats = (_propstat(found, 200) if found else "") + (_propstat(missing, 404) if missing else "")
    href = _href(share, entry.path, entry.is_dir)
    return f"<D:response><D:href>{escape(href)}</D:href>{stats}</D:response>"


async def do_propfind(req: _Req) -> web.StreamResponse:
    depth = req.request.headers.get("Depth", "infinity").strip().lower()
    if depth not in ("0", "1"):
        await req.request.release()
        raise DavError(
            403, "PROPFIND takes Depth 0 or 1 (infinity is refused)", "propfind-finite-depth"
        )
    body = await _read_body(req.request)
    mode, wanted = "allprop", []
    if body.strip():
        root = parse(body)
        if not root.is_(DAV, "propfind"):
            raise DavError(400, "a PROPFIND body must be a DAV:propfind element")
        if root.find(DAV, "propname") is not None:
            mode = "propname"
        elif (prop := root.find(DAV, "prop")) is not None:
            mode, wanted = "prop", prop.children
        elif root.find(DAV, "allprop") is None:
            raise DavError(400, "DAV:propfind needs allprop, propname or prop")
    if req.view is None:  # the root: the shares this caller may read
        out = [_response(req, "", Entry("", True, mtime=req.now), mode, wanted)]
        if depth == "1":
            principal = req.access.principal(req.request.remote or "")
            for name in req.access.shares(principal):
                try:
                    view = await req.access.open(name, principal)
                    entry = await view.need("")
                except ShareError:
                    continue
                out.append(_response(req, name, entry, mode, wanted))
        return web.Response(
            status=207,
            text=MULTISTATUS.format("".join(out)),
            content_type="application/xml",
            charset="utf-8",
        )
    entry = await req.view.need(req.path)
    head, _, tail = MULTISTATUS.partition("{}")
    response = web.StreamResponse(
        status=207, headers={"Content-Type": "application/xml; charset=utf-8"}
    )
    response.headers["DAV"] = "1, 2"
    response.headers["Server"] = "tunnelmesh-dav"
    # a directory of any size streams out page by page (memory stays bounded): the status is
    # sent before the listing, so a store failure midway ends the connection, not a 500
    await response.prepare(req.request)
    await response.write((head + _response(req, req.share, entry, mode, wanted)).encode())
    if depth == "1" and entry.is_dir:
        batch: list[str] = []
        async for child in req.view.listdir(req.path):
            batch.append(_response(req, req.share, child, mode, wanted))
            if len(batch) >= 256:
                await response.write("".join(batch).encode())
                batch.clear()
        await response.write("".join(batch).encode())
    await response.write(tail.encode())
    await response.write_eof()
    return response


async def do_proppatch(req: _Req) -> web.StreamResponse:
    view = req.need_view()
    tokens = await _if_header(req)
    root = parse(await _read_body(req.request))
    if not root.is_(DAV, "propertyupdate"):
        raise DavError(400, "a PROPPATCH body must be a DAV:propertyupdate element")
    entry = await view.need(req.path)
    if not view.writable:
        raise ShareError("denied", f"share {view.name}: read-only for {view.principal.name}")
    _check_locks(req, tokens, req.lock_path, subtree=False, parent=False)
    props = _dead_props(entry.metadata)
    touched: list[tuple[str, str]] = []
    protected: list[tuple[str, str]] = []
    for op in root.children:
        if op.ns != DAV or op.name not in ("set", "remove"):
            continue
        for prop in (p for c in op.all(DAV, "prop") for p in c.children):
            key = (prop.ns, prop.name)
            if prop.ns == DAV and prop.name in LIVE:
                protected.append(key)
                continue
            touched.append(key)
            if op.name == "set":
                props[key] = serialize(prop)
            else:
                props.pop(key, None)
    if protected:
        failed = [_prop_xml(ns, n, None) for ns, n in protected]
        dep = [_prop_xml(ns, n, None) for ns, n in touched]
        stats = _propstat(failed, 403) + (_propstat(dep, 424) if dep else "")
    else:
        metadata = dict(entry.metadata)
        metadata[PROPS_KEY] = _encode_props(props)
        if not props:
            metadata.pop(PROPS_KEY)
        await view.set_metadata(req.path, metadata)
        stats = _propstat([_prop_xml(ns, n, None) for ns, n in touched], 200)
    href = _href(req.share, entry.path, entry.is_dir)
    body = f"<D:response><D:href>{escape(href)}</D:href>{stats}</D:response>"
    return web.Response(
        status=207, text=MULTISTATUS.format(body), content_type="application/xml", charset="utf-8"
    )
