"""The S3 pages: buckets and shares, a bucket's objects, download, upload, delete.

Everything goes through :class:`tunnelmesh_admin.s3view.S3View` as the caller, so the S3
service's own grants decide. Upload and delete change state: the same-origin middleware guards
them like every other such request, and their policy is ``peer`` because S3 (not the dashboard)
decides per bucket whether this caller may write.
"""

from __future__ import annotations

from aiohttp import web
from tunnelmesh import Policy, route_policy
from tunnelmesh.coordinator import ApiFailure
from tunnelmesh.coordinator.api import COORDINATOR_KEY

from tunnelmesh_admin.pages import _render
from tunnelmesh_admin.s3view import S3View

__all__ = ["add_s3_pages"]

MAX_UPLOAD = 64 * 1024 * 1024
"""The largest object a browser uploads through the dashboard (S3 tools for larger ones)."""


def _view(request: web.Request) -> S3View:
    coord = request.app[COORDINATOR_KEY]
    assert coord.ca is not None
    return S3View(request, coord.ca.cert_pem)


@route_policy(Policy.PEER)
async def s3_index(request: web.Request) -> web.Response:
    view = _view(request)
    buckets = await view.buckets()
    shares = await view.shares()
    return _render(request, "s3.html", "s3", buckets=buckets, shares=shares)


@route_policy(Policy.PEER)
async def s3_bucket(request: web.Request) -> web.Response:
    bucket = request.match_info["bucket"]
    prefix = request.query.get("prefix", "")
    objects, prefixes = await _view(request).objects(bucket, prefix)
    return _render(
        request,
        "bucket.html",
        "s3",
        bucket=bucket,
        prefix=prefix,
        objects=objects,
        prefixes=prefixes,
        max_upload=MAX_UPLOAD,
    )


@route_policy(Policy.PEER)
async def s3_download(request: web.Request) -> web.StreamResponse:
    bucket, key = request.match_info["bucket"], request.query.get("key", "")
    status, body = await _view(request).get(bucket, key)
    if status != 200:
        raise S3View._error(status, body)
    name = key.rsplit("/", 1)[-1].replace('"', "") or "object"
    return web.Response(
        body=body,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )


@route_policy(Policy.PEER)
async def s3_upload(request: web.Request) -> web.Response:
    bucket = request.match_info["bucket"]
    key = request.query.get("key", "")
    if not key:
        raise ApiFailure(400, "malformed", "which key? (?key=NAME)")
    if request.content_length is not None and request.content_length > MAX_UPLOAD:
        raise ApiFailure(413, "too_large", f"uploads here are at most {MAX_UPLOAD} bytes")
    body = await request.content.read(MAX_UPLOAD + 1)
    if len(body) > MAX_UPLOAD:
        raise ApiFailure(413, "too_large", f"uploads here are at most {MAX_UPLOAD} bytes")
    await _view(request).put(bucket, key, body)
    return web.json_response({"status": "ok", "bucket": bucket, "key": key, "size": len(body)})


@route_policy(Policy.PEER)
async def s3_delete(request: web.Request) -> web.Response:
    bucket, key = request.match_info["bucket"], request.query.get("key", "")
    await _view(request).delete(bucket, key)
    return web.json_response({"status": "ok", "bucket": bucket, "deleted": key})


def add_s3_pages(app: web.Application, api: web.Application) -> None:
    """The S3 pages, when the coordinator (``api``) serves S3 (its credentials route exists)."""
    if not S3View.available(api):
        return
    r = app.router
    r.add_get("/s3", s3_index)
    r.add_get("/s3/{bucket}", s3_bucket)
    r.add_get("/s3/{bucket}/object", s3_download)
    r.add_put("/s3/{bucket}/object", s3_upload)
    r.add_delete("/s3/{bucket}/object", s3_delete)
