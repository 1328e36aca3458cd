"""The S3 service as an aiohttp application: addressing, authentication, dispatch, errors.

:func:`build_app` is what both the coordinator (on its mesh IP) and ``tunnelmesh s3 serve``
mount. Every request goes through :func:`_handle`:

1. find the bucket and key, path-style (``/bucket/key``) or virtual-host-style
   (``bucket.<domain>/key``), from the *raw* request target, so that no normalisation can turn
   ``/a/../b`` into another bucket's key;
2. check the SigV4 signature (header or presigned query) against the authorizer's secret, or
   the legacy SigV2 one (:mod:`.sigv2`) that older tools and ``aws s3 presign`` of CLI v1 make;
3. dispatch on method, bucket, key and sub-resource to :mod:`.buckets`, :mod:`.objects` or the
   JSON admin API (:mod:`.admin`, under ``/_tunnelmesh/``, a name no bucket can take);
4. render any :class:`~tunnelmesh_s3.errors.S3Error` as S3's XML error document.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from aiohttp import web
from tunnelmesh.abc import Storage
from tunnelmesh.errors import StorageError

from tunnelmesh_s3 import admin, buckets, cors, objects, post, sigv2, sigv4
from tunnelmesh_s3.auth import Authorizer, SecretLookup
from tunnelmesh_s3.call import MAX_OBJECT_SIZE, Call, Handler
from tunnelmesh_s3.errors import S3Error, from_storage
from tunnelmesh_s3.metrics import S3Stats
from tunnelmesh_s3.xmlio import error_document

__all__ = ["MAX_OBJECT_SIZE", "Call", "S3Config", "build_app"]

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/_tunnelmesh/"
CLIENT_CLOSED = 499
"""The status a request is counted with when its client hung up before the answer (nginx's
499; never sent)."""


@dataclass(frozen=True)
class S3Config:
    """Service settings.

    Attributes:
        region: the region in every credential scope (clients must sign for it).
        domains: host names under which ``<bucket>.<domain>`` is virtual-host addressing.
        admin_api: serve the JSON admin API (shares, grants, credentials) under ``/_tunnelmesh/``.
        clock: the time source (tests move it).
    """

    region: str = "us-east-1"
    domains: Sequence[str] = ("localhost",)
    admin_api: bool = True
    clock: Callable[[], float] = time.time


STORAGE_KEY = web.AppKey("storage", Storage)
AUTH_KEY = web.AppKey("authorizer", Authorizer)
CONFIG_KEY = web.AppKey("s3config", S3Config)
STATS_KEY = web.AppKey("s3stats", S3Stats)
BUCKET_KEY = web.RequestKey("s3_bucket", str)
# The handler that serves the request of this task (metrics); _handle sets and reads it.
_operation: contextvars.ContextVar[str] = contextvars.ContextVar("s3_operation")
# Request IDs: a random prefix per process, then a counter (unique, and no system call each).
_REQUEST_PREFIX = secrets.token_hex(4).upper()
_request_numbers = itertools.count(secrets.randbelow(1 << 31))


def split_target(host: str, raw_path: str, domains: Sequence[str]) -> tuple[str, str]:
    """(bucket, key) of a request; "" for the parts it lacks.

    Raises:
        S3Error: the path is not valid percent-encoded UTF-8.
    """
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error("InvalidURI", "Couldn't parse the specified URI.", status=400) from None
    hostname = host.rpartition(":")[0] if host.count(":") == 1 else host
    hostname = hostname.lower().rstrip(".")
    for domain in domains:
        if hostname.endswith("." + domain) and len(hostname) > len(domain) + 1:
            return hostname[: -len(domain) - 1], path[1:]
    bucket, _, key = path[1:].partition("/")
    return bucket, key


def _params(raw_query: str) -> dict[str, str]:
    params = {}
    for name, value in sigv4.query_pairs(raw_query):
        try:
            params[name.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidArgument", "query parameters must be UTF-8") from None
    return params


def build_app(
    storage: Storage, authorizer: Authorizer, config: S3Config | None = None
) -> web.Application:
    """The S3 service as an aiohttp application over ``storage`` (already started).

    The caller owns ``storage``: it starts it before serving and closes it after.
    """
    app = web.Application(client_max_size=2 * 1024 * 1024)
    app[STORAGE_KEY] = storage
    app[AUTH_KEY] = authorizer
    app[CONFIG_KEY] = config or S3Config()
    # [\s\S]: a key may hold a newline, which "." does not match
    app.router.add_route("*", r"/{tail:[\s\S]*}", _handle, expect_handler=_expect)
    from tunnelmesh.metrics import add_collector, remove_collector

    from tunnelmesh_s3.metrics import S3Collector

    stats = app[STATS_KEY] = S3Stats()
    collector = S3Collector(stats)

    async def serve_metrics(_app: web.Application) -> None:
        add_collector(collector)  # on the process's /metrics while the app runs

    async def stop_metrics(_app: web.Application) -> None:
        remove_collector(collector)

    app.on_response_prepare.append(_cors_headers)
    app.on_startup.append(serve_metrics)
    app.on_cleanup.append(stop_metrics)
    return app


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An actual request from a browser (with ``Origin``) gets the CORS headers of the first
    rule of its bucket that allows its origin and method (S3 adds them to errors too)."""
    origin = request.headers.get("Origin")
    bucket = request.get(BUCKET_KEY)
    if not origin or not bucket or request.method == "OPTIONS":
        return
    rules = request.app[AUTH_KEY].bucket_settings(bucket).cors
    if rules:
        for name, value in cors.response_headers(rules, origin, request.method).items():
            response.headers.setdefault(name, value)


async def _expect(request: web.Request) -> None:
    """Nothing before authentication: ``100-continue`` is answered once the signature checked
    (:func:`_continue`), so that a refused upload is never sent; any other expectation is
    ignored, as S3 does (aiohttp's default handler answers it 417)."""


async def _continue(request: web.Request) -> None:
    if request.version == (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim response is not part of the body count


async def _handle(request: web.Request) -> web.StreamResponse:
    _operation.set("unrouted")
    request_id = f"{_REQUEST_PREFIX}{next(_request_numbers) & 0xFFFFFFFF:08X}"
    raw_path, _, raw_query = request.raw_path.partition("?")
    try:
        response = await _dispatch(request, raw_path, raw_query, request_id)
    except S3Error as err:
        response = _error(request, err, raw_path, request_id)
    except sigv4.SigV4Error as exc:
        response = _error(request, S3Error(exc.code, exc.message), raw_path, request_id)
    except StorageError as exc:
        if type(exc) is StorageError:
            log.exception("storage failure on %s %s", request.method, raw_path)
        response = _error(request, from_storage(exc), raw_path, request_id)
    except ConnectionResetError:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            raise
        # the client hung up while its body was read: the write stored nothing, and there is
        # nobody to answer (aiohttp would log this as a 500 with a traceback)
        log.debug("%s %s: the client closed the connection", request.method, raw_path)
        response = web.Response(status=CLIENT_CLOSED)
    request.app[STATS_KEY].count(_operation.get(), response.status)
    if not response.prepared:
        response.headers["x-amz-request-id"] = request_id
        response.headers.setdefault("Server", "tunnelmesh-s3")
    return response


def _error(request: web.Request, err: S3Error, resource: str, request_id: str) -> web.Response:
    if err.status >= 500:
        log.warning("%s %s -> %s %s", request.method, resource, err.code, err.message)
    if request.method == "HEAD":
        return web.Response(status=err.status, headers={"x-amz-error-code": err.code})
    return web.Response(
        status=err.status,
        body=error_document(err, resource, request_id),
        content_type="application/xml",
    )


async def _dispatch(
    request: web.Request, raw_path: str, raw_query: str, request_id: str
) -> web.StreamResponse:
    app = request.app
    storage, authorizer, config = app[STORAGE_KEY], app[AUTH_KEY], app[CONFIG_KEY]
    host = request.headers.get("Host", "")
    bucket, key = split_target(host, raw_path, config.domains)
    params = _params(raw_query)
    request[BUCKET_KEY] = bucket
    if request.method == "OPTIONS":
        # a CORS preflight: browsers send it without credentials; answered from the bucket's
        # rules alone (cors.py), it changes nothing
        _operation.set("cors_preflight")
        rules = authorizer.bucket_settings(bucket).cors if bucket else []
        return web.Response(headers=cors.preflight(rules, request.headers))
    if post.is_form_upload(
        request.method, bucket, key, raw_query, request.headers.get("Content-Type", "")
    ):
        # a browser form: no Authorization header, its signed policy is in the body
        _operation.set("post_object")
        await _continue(request)
        return await post.post_object(request, storage, authorizer, config, bucket, request_id)
    lookup = SecretLookup(authorizer)
    req = sigv4.Request(
        request.method,
        raw_path,
        raw_query,
        # decoded so that encoding back (utf-8, surrogateescape) gives the bytes as sent: the
        # signature covers those bytes, whatever their charset (clients send UTF-8 metadata)
        [
            (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for k, v in request.raw_headers
        ],
    )
    if sigv2.is_v2(req):
        prefix = f"/{bucket}" if _virtual(host, config) else ""
        verified = sigv2.verify(req, lookup, now=config.clock(), bucket_prefix=prefix)
    else:
        verified = sigv4.verify(req, lookup, region=config.region, now=config.clock())
    await _continue(request)
    call = Call(
        request,
        storage,
        authorizer,
        config,
        lookup.principals[verified.access_key],
        verified,
        bucket,
        key,
        params,
        request_id=request_id,
    )
    if config.admin_api and raw_path.startswith(ADMIN_PREFIX) and not _virtual(host, config):
        _operation.set("admin")
        return await admin.handle(call, unquote_to_bytes(raw_path[len(ADMIN_PREFIX) :]).decode())
    handler: Handler | None
    if not bucket:
        handler = buckets.list_buckets if request.method == "GET" else None
    elif not key:
        handler = buckets.route(call)
    else:
        handler = objects.route(call)
    if handler is None:
        raise S3Error(
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
            Method=request.method,
            ResourceType="BUCKET" if not key else "OBJECT",
        )
    _operation.set(handler.__name__)
    try:
        return await handler(call)
    except StorageError as exc:
        if type(exc) is StorageError:
            raise
        raise from_storage(exc, bucket, key) from None


def _virtual(host: str, config: S3Config) -> bool:
    hostname = host.rpartition(":")[0] if host.count(":") == 1 else host
    return any(hostname.lower().endswith("." + d) for d in config.domains)
