"""WebDAV (RFC 4918, classes 1 and 2) over the shares of the S3 store, as an aiohttp app.

URLs are ``/<share>/<path>``; ``/`` lists the shares the caller may read. The caller is the
mesh peer the connection comes from (:class:`~tunnelmesh_s3.shareaccess.ShareAccess`): there is
no login, the mesh already authenticated every packet by key. Share membership and read-only
grants decide as over S3; a read-only member's write gets 403.

Methods: OPTIONS (``DAV: 1, 2``), PROPFIND (``Depth`` 0 or 1; ``infinity``, and a missing
``Depth`` which means it, get 403 with ``propfind-finite-depth``), PROPPATCH (dead properties,
kept with the object as metadata), MKCOL, GET/HEAD (one ``bytes=`` range), PUT (streamed into
the store, visible whole or not at all), DELETE, COPY and MOVE (``Destination``, ``Overwrite``,
``Depth``), LOCK/UNLOCK (:mod:`.locks`: exclusive and shared write locks, depth 0 or infinity,
bounded timeouts; every write to a locked resource needs its token in an ``If`` header from the
peer that holds the lock, else 423).

Bad input (a malformed path, ``If`` header or XML body; a body over the bound; an unknown
method) is answered 4xx with a sentence saying what was wrong, changes nothing, and is counted
(``tunnelmesh_dav_requests_total{method,status}``).
"""

from __future__ import annotations

import base64
import email.utils
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit
from xml.sax.saxutils import escape

import msgspec
from aiohttp import web
from tunnelmesh.abc import ObjectInfo
from tunnelmesh.errors import StorageError, TunnelmeshError

from tunnelmesh_s3.dav import locks as lk
from tunnelmesh_s3.dav.xmlbody import DAV, MAX_BODY, DavXmlError, Node, parse, serialize
from tunnelmesh_s3.metrics import S3Stats
from tunnelmesh_s3.objects import _send_body
from tunnelmesh_s3.shareaccess import Entry, ShareAccess, ShareError, ShareView

__all__ = ["DavError", "build_dav_app"]

log = logging.getLogger(__name__)

METHODS = (
    "OPTIONS", "GET", "HEAD", "PUT", "DELETE", "MKCOL", "PROPFIND", "PROPPATCH", "COPY", "MOVE",
    "LOCK", "UNLOCK",
)  # fmt: skip
PROPS_KEY = "davprops"  # user metadata holding the dead properties
MAX_PROPS_BYTES = 16 * 1024
MULTISTATUS = (
    '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">{}</D:multistatus>'
)
STATUS_TEXT = {
    200: "OK", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 423: "Locked",
    424: "Failed Dependency",
}  # fmt: skip
SHARE_STATUS = {
    "denied": 403,
    "not_found": 404,
    "exists": 405,
    "not_dir": 409,
    "is_dir": 405,
    "not_empty": 409,
    "bad_path": 400,
}


class DavError(TunnelmeshError):
    """A WebDAV error response: an HTTP status, a sentence, and maybe a precondition element."""

    def __init__(self, status: int, message: str, condition: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.condition = condition


DAV_ACCESS = web.AppKey("dav_access", ShareAccess)
DAV_LOCKS = web.AppKey("dav_locks", lk.LockTable)
DAV_STATS = web.AppKey("dav_stats", S3Stats)
DAV_DOMAINS: web.AppKey[tuple[str, ...]] = web.AppKey("dav_domains")
DAV_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("dav_clock")


def build_dav_app(
    access: ShareAccess,
    *,
    domains: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The WebDAV service over ``access``'s shares (its storage already started).

    Args:
        domains: the DNS suffixes a request's ``Host`` may name besides an IP address (the
            mesh's: ``tunnelmesh``, ``tm``, its domain). Any other name gets 403: a browser on
            a peer led to this address by a rebound DNS name must not act as that peer.
    """
    app = web.Application(client_max_size=MAX_BODY)
    app[DAV_DOMAINS] = tuple(d.lower().strip(".") for d in domains)
    app[DAV_ACCESS] = access
    app[DAV_LOCKS] = lk.LockTable()
    app[DAV_STATS] = S3Stats()
    app[DAV_CLOCK] = clock
    app.router.add_route("*", r"/{tail:[\s\S]*}", _handle)
    from tunnelmesh.metrics import add_collector, remove_collector

    from tunnelmesh_s3.metrics import DavCollector

    collector = DavCollector(app[DAV_STATS])

    async def serve_metrics(_app: web.Application) -> None:
        add_collector(collector)

    async def stop_metrics(_app: web.Application) -> None:
        remove_collector(collector)

    app.on_startup.append(serve_metrics)
    app.on_cleanup.append(stop_metrics)
    return app


@dataclass
class _Req:
    """One request as handlers see it."""

    request: web.Request
    access: ShareAccess
    locks: lk.LockTable
    now: float
    share: str  # "" for the root
    path: str  # in the share, without leading or trailing "/"
    view: ShareView | None

    @property
    def lock_path(self) -> str:
        return f"{self.share}/{self.path}" if self.path else self.share

    def need_view(self) -> ShareView:
        if self.view is None:
            raise DavError(405, "the root lists the shares; it holds no files")
        return self.view


async def _handle(request: web.Request) -> web.StreamResponse:
    method = request.method if request.method in METHODS else "other"
    try:
        response = await _dispatch(request)
    except DavError as err:
        response = _error(err)
    except ShareError as err:
        response = _error(DavError(SHARE_STATUS[err.kind], str(err)))
    except (DavXmlError, lk.IfHeaderError) as err:
        response = _error(DavError(400, str(err)))
    except StorageError as err:
        log.warning("dav: %s %s: %s", request.method, request.raw_path, err)
        response = _error(DavError(500, "the store failed"))
    except ConnectionError:
        # the client went away mid-body: the store kept nothing of it (writes are atomic)
        log.debug("dav: %s %s: the client closed the connection", request.method, request.raw_path)
        response = _error(DavError(400, "the client closed the connection mid-request"))
    request.app[DAV_STATS].count(method, response.status)
    if not response.prepared:
        response.headers.setdefault("DAV", "1, 2")
        response.headers.setdefault("Server", "tunnelmesh-dav")
    return response


def _error(err: DavError) -> web.Response:
    if err.condition:
        body = (
            f'<?xml version="1.0" encoding="utf-8"?>\n<D:error xmlns:D="DAV:"><D:{err.condition}/>'
            f"<D:responsedescription>{escape(err.message)}</D:responsedescription></D:error>"
        )
        return web.Response(status=err.status, text=body, content_type="application/xml")
    return web.Response(status=err.status, text=err.message + "\n")


def _split_url(raw_path: str) -> tuple[str, str]:
    """(share, path) of a request target or Destination path."""
    try:
        text = unquote_to_bytes(raw_path.partition("?")[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise DavError(400, "the path is not valid percent-encoded UTF-8") from None
    if not text.startswith("/"):
        raise DavError(400, "the path must start with /")
    share, _, rest = text[1:].partition("/")
    return share, rest


async def _dispatch(request: web.Request) -> web.StreamResponse:
    app = request.app
    _check_host(request.headers.get("Host", ""), app[DAV_DOMAINS])
    access = app[DAV_ACCESS]
    principal = access.principal(request.remote or "")
    share, rest = _split_url(request.raw_path)
    view = await access.open(share, principal) if share else None
    path = view.key(rest) if view is not None else ""
    req = _Req(request, access, app[DAV_LOCKS], app[DAV_CLOCK](), share, path, view)
    handler = _HANDLERS.get(request.method)
    if handler is None:
        await request.release()
        raise DavError(405, f"method {request.method[:32]} is not allowed")
    return await handler(req)


# --- helpers --------------------------------------------------------------------------------


def _check_host(host: str, domains: tuple[str, ...]) -> None:
    """403 unless ``Host`` is an IP address or a name under one of the mesh's ``domains``."""
    name = host.strip()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    name = name.lower().rstrip(".")
    if name and any(name == d or name.endswith("." + d) for d in domains):
        return
    raise DavError(403, f"Host {host[:64]!r} is not a name of this mesh (DNS rebinding guard)")


def _href(share: str, path: str, is_dir: bool) -> str:
    if not share:
        return "/"
    url = "/" + quote(share) + ("/" + quote(path) if path else "")
    return url + "/" if is_dir else url


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def _read_body(request: web.Request) -> bytes:
    """The request body, at most :data:`MAX_BODY` bytes (413 beyond)."""
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > MAX_BODY:
            raise DavError(413, f"request body over {MAX_BODY} bytes")
    return bytes(data)


def _dead_props(metadata: object) -> dict[tuple[str, str], str]:
    """The dead properties kept in an object's metadata: (ns, name) to serialized XML."""
    raw = getattr(metadata, "get", lambda _k: None)(PROPS_KEY)
    if not raw:
        return {}
    try:
        items = msgspec.json.decode(base64.b64decode(raw), type=list[tuple[str, str, str]])
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return {}
    return {(ns, name): value for ns, name, value in items}


def _encode_props(props: dict[tuple[str, str], str]) -> str:
    raw = msgspec.json.encode([[ns, name, v] for (ns, name), v in sorted(props.items())])
    if len(raw) > MAX_PROPS_BYTES:
        raise DavError(507, f"dead properties over {MAX_PROPS_BYTES} bytes", "")
    return base64.b64encode(raw).decode()


def _etag(entry: Entry) -> str | None:
    return f'"{entry.etag}"' if entry.etag and not entry.is_dir else None


async def _if_header(req: _Req) -> set[str]:
    """Check the ``If`` header (412 when it fails); return the lock tokens it submits."""
    header = req.request.headers.get("If")
    if header is None:
        return set()
    lists = lk.parse_if(header)
    paths: dict[str, Entry | None] = {}
    tagged: dict[str, str | None] = {}
    view = req.view
    if view is not None:
        paths[req.lock_path] = await view.stat(req.path)
    for lst in lists:
        if lst.resource is None or lst.resource in tagged:
            continue
        share, rest = _split_url(urlsplit(lst.resource).path or "/")
        tagged[lst.resource] = None
        if view is not None and share == view.name:
            key = view.key(rest)
            lp = f"{share}/{key}" if key else share
            tagged[lst.resource] = lp
            if lp not in paths:
                paths[lp] = await view.stat(key)

    def etag_of(lp: str) -> str | None:
        entry = paths.get(lp)
        return _etag(entry) if entry is not None else None

    def tokens_of(lp: str) -> set[str]:
        return {lock.token for lock in req.locks.covering(lp, req.now)}

    if not lk.evaluate_if(lists, req.lock_path, tagged.get, tokens_of, etag_of):
        raise DavError(412, "the If header's conditions do not hold")
    return lk.submitted_tokens(lists)


def _check_locks(req: _Req, tokens: set[str], path: str, *, subtree: bool, parent: bool) -> None:
    """423 when a lock forbids writing ``path`` (or its subtree, or its parent's membership)."""
    owner = req.need_view().principal.key
    blocked = req.locks.blocking(path, tokens, owner, req.now, subtree=subtree)
    if blocked is None and parent and "/" in path:
        blocked = req.locks.blocking(path.rpartition("/")[0], tokens, owner, req.now, subtree=False)
    if blocked is not None:
        raise DavError(
            423, f"{blocked.root} is locked; submit its lock token", "lock-token-submitted"
        )


# --- properties -----------------------------------------------------------------------------

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


# --- methods --------------------------------------------------------------------------------


async def do_options(req: _Req) -> web.StreamResponse:
    return web.Response(
        headers={"Allow": ", ".join(METHODS), "MS-Author-Via": "DAV", "Content-Length": "0"}
    )


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


_HANDLERS = {
    "OPTIONS": do_options,
    "PROPFIND": do_propfind,
    "PROPPATCH": do_proppatch,
    "MKCOL": do_mkcol,
    "GET": do_get,
    "HEAD": do_get,
    "PUT": do_put,
    "DELETE": do_delete,
    "COPY": do_copy,
    "MOVE": do_move,
    "LOCK": do_lock,
    "UNLOCK": do_unlock,
}
