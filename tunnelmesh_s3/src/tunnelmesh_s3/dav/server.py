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

Where the code lives: this module builds the app and dispatches a request to its method's
handler; :mod:`.request` holds what every handler shares (:class:`DavError`, the request, the
``If`` header and lock checks); :mod:`.props` PROPFIND and PROPPATCH; :mod:`.content` MKCOL,
GET/HEAD, PUT, DELETE, COPY and MOVE; :mod:`.locking` LOCK and UNLOCK over :mod:`.locks`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from xml.sax.saxutils import escape

from aiohttp import web
from tunnelmesh.errors import StorageError

from tunnelmesh_s3.dav import locks as lk
from tunnelmesh_s3.dav.content import do_copy, do_delete, do_get, do_mkcol, do_move, do_put
from tunnelmesh_s3.dav.locking import do_lock, do_unlock
from tunnelmesh_s3.dav.props import do_propfind, do_proppatch
from tunnelmesh_s3.dav.request import SHARE_STATUS, DavError, _check_host, _Req, _split_url
from tunnelmesh_s3.dav.xmlbody import MAX_BODY, DavXmlError
from tunnelmesh_s3.metrics import S3Stats
from tunnelmesh_s3.shareaccess import ShareAccess, ShareError

__all__ = ["DavError", "build_dav_app"]


log = logging.getLogger(__name__)


METHODS = (
    "OPTIONS", "GET", "HEAD", "PUT", "DELETE", "MKCOL", "PROPFIND", "PROPPATCH", "COPY", "MOVE",
    "LOCK", "UNLOCK",
)  # fmt: skip


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


async def do_options(req: _Req) -> web.StreamResponse:
    return web.Response(
        headers={"Allow": ", ".join(METHODS), "MS-Author-Via": "DAV", "Content-Length": "0"}
    )


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
