"""Object-level S3 operations: put, get (ranged, conditional), head, delete, copy, attributes,
the object ACL and tags; multipart uploads are in :mod:`.multipart`, what these share in
:mod:`.objectrequest`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiohttp import web
from multidict import CIMultiDict
from tunnelmesh.abc import LocalFiles, ObjectInfo, ObjectReader, PartInfo
from tunnelmesh.errors import StorageError
from tunnelmesh.storage import check_key

from tunnelmesh_s3 import acl, tagging
from tunnelmesh_s3.auth import BucketAcl
from tunnelmesh_s3.buckets import UNSUPPORTED, xml
from tunnelmesh_s3.call import Call, Handler
from tunnelmesh_s3.errors import S3Error
from tunnelmesh_s3.listing import page_parts
from tunnelmesh_s3.multipart import (
    abort_upload,
    complete_upload,
    create_upload,
    list_parts,
    upload_part,
    upload_part_copy,
)
from tunnelmesh_s3.objectrequest import (
    DEFAULT_TYPE,
    _body,
    _check_conditions,
    _checksum_headers,
    _copy_source,
    _object_headers,
    _span,
    _write_condition,
    http_date,
    stored_headers,
    user_metadata,
)
from tunnelmesh_s3.xmlio import document, element, iso8601

__all__ = ["route"]

log = logging.getLogger(__name__)

RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
OBJECT_UNSUPPORTED = frozenset({"cors", "legal-hold", "restore", "retention", "select", "torrent"})
"""Object sub-resources answered NotImplemented (never ignored: a GET must not pass for one)."""
ATTRIBUTES = frozenset({"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"})
SMALL_BODY = 64 * 1024
"""A GET of at most this many bytes from a backend without local files is read into memory and
answered in one response write (headers and body together)."""
_LOCAL_FILES: dict[tuple[type, type], bool] = {}


def route(call: Call) -> Handler | None:
    method, params = call.request.method, call.params
    if (UNSUPPORTED | OBJECT_UNSUPPORTED) & params.keys():
        return _not_implemented
    check_object_key(call.key)
    if "acl" in params:
        return {"GET": get_object_acl, "PUT": put_object_acl}.get(method)
    if "tagging" in params:
        return {
            "GET": get_object_tagging,
            "PUT": put_object_tagging,
            "DELETE": delete_object_tagging,
        }.get(method)
    upload = "uploadId" in params
    copy = "x-amz-copy-source" in call.request.headers
    if method == "PUT":
        if upload and "partNumber" in params:
            return upload_part_copy if copy else upload_part
        return copy_object if copy else put_object
    if method in ("GET", "HEAD"):
        if method == "GET" and upload:
            return list_parts
        if method == "GET" and "attributes" in params:
            return get_attributes
        return get_object
    if method == "DELETE":
        return abort_upload if upload else delete_object
    if method == "POST":
        if "uploads" in params:
            return create_upload
        if upload:
            return complete_upload
    return None


def check_object_key(key: str) -> None:
    """Raise KeyTooLongError or InvalidArgument for a key S3 (or this server) refuses."""
    try:
        check_key(key)
    except Exception as exc:
        raise S3Error(
            "KeyTooLongError" if "limit" in str(exc) else "InvalidArgument",
            str(exc),
            Key=key[:256],
        ) from None


async def _not_implemented(call: Call) -> web.Response:
    raise S3Error(
        "NotImplemented",
        "A header or query you provided implies functionality that is not implemented.",
    )


def _local_files(reader: ObjectReader) -> LocalFiles | None:
    """The reader as :class:`~tunnelmesh.abc.LocalFiles` when it is one, else None: checked
    once per reader class (a runtime protocol check costs microseconds each)."""
    key = (type(reader), LocalFiles)
    found = _LOCAL_FILES.get(key)
    if found is None:
        found = _LOCAL_FILES[key] = isinstance(reader, LocalFiles)
    return reader if found else None  # type: ignore[return-value]


async def put_object(call: Call) -> web.Response:
    """PutObject; conditional (``If-None-Match``/``If-Match``): refused before the body is
    uploaded when the condition fails (412, or 404 NoSuchKey for ``If-Match`` on no object),
    and checked again atomically with the commit (409 when another write won meanwhile)."""
    await call.need("write")
    headers = call.request.headers
    acl.check_object_acl(headers)
    condition = await _write_condition(call)
    body = _body(call)
    info = await call.storage.put_object(
        call.bucket,
        call.key,
        body,
        content_type=headers.get("Content-Type", DEFAULT_TYPE),
        metadata=user_metadata(headers),
        headers=stored_headers(headers),
        checksums=body.checksums,
        precondition=condition,
    )
    return web.Response(headers={"ETag": f'"{info.etag}"', **_checksum_headers(body.checksums)})


async def get_attributes(call: Call) -> web.Response:
    """GetObjectAttributes: the attributes named in ``x-amz-object-attributes``; a multipart
    object's ObjectParts (paged by ``x-amz-max-parts``/``x-amz-part-number-marker``) lists each
    part's size and the checksums it was uploaded with."""
    await call.need("read")
    wanted = {
        a.strip() for a in call.request.headers.get("x-amz-object-attributes", "").split(",")
    } - {""}
    if not wanted or wanted - ATTRIBUTES:
        raise S3Error(
            "InvalidArgument",
            "x-amz-object-attributes must name some of " + ", ".join(sorted(ATTRIBUTES)),
        )
    info = await call.storage.head_object(call.bucket, call.key)
    body = []
    if "ETag" in wanted:
        body.append(element("ETag", info.etag))
    if "Checksum" in wanted and info.checksums:
        body.append(
            "<Checksum>"
            + "".join(
                element(f"Checksum{alg.upper()}", value)
                for alg, value in sorted(info.checksums.items())
            )
            + "</Checksum>"
        )
    if "ObjectParts" in wanted and info.parts:
        try:
            marker = int(call.request.headers.get("x-amz-part-number-marker", "0") or 0)
            max_parts = min(int(call.request.headers.get("x-amz-max-parts", "1000")), 1000)
        except ValueError:
            raise S3Error(
                "InvalidArgument", "max-parts and part-number-marker are integers"
            ) from None
        checksums = info.part_checksums or [{}] * len(info.part_sizes)
        sizes = [
            PartInfo(number=n, size=size, etag="", last_modified=0, checksums=part_checksums)
            for n, (size, part_checksums) in enumerate(
                zip(info.part_sizes, checksums, strict=True), 1
            )
        ]
        page, truncated = page_parts(sizes, marker=max(marker, 0), max_parts=max(max_parts, 0))
        body.append(
            "<ObjectParts>"
            + element("PartsCount", info.parts)
            + element("PartNumberMarker", marker)
            + (element("NextPartNumberMarker", page[-1].number) if page else "")
            + element("MaxParts", max_parts)
            + element("IsTruncated", "true" if truncated else "false")
            + "".join(
                f"<Part>{element('PartNumber', p.number)}{element('Size', p.size)}"
                + "".join(
                    element(f"Checksum{alg.upper()}", value)
                    for alg, value in sorted(p.checksums.items())
                )
                + "</Part>"
                for p in page
            )
            + "</ObjectParts>"
        )
    if "StorageClass" in wanted:
        body.append(element("StorageClass", "STANDARD"))
    if "ObjectSize" in wanted:
        body.append(element("ObjectSize", info.size))
    response = xml(document("GetObjectAttributesResponse", *body))
    response.headers["Last-Modified"] = http_date(info.last_modified)
    return response


async def get_object(call: Call) -> web.StreamResponse:
    await call.need("read")
    request = call.request
    want_checksums = request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"
    if request.method == "HEAD":
        info = await call.storage.head_object(call.bucket, call.key)
        return _head_response(call, info, want_checksums)
    reader = await call.storage.open_object(call.bucket, call.key)
    try:
        info = reader.info
        status = _check_conditions(request.headers, info)
        if status is not None:
            return _condition_response(info, status)
        span = _span(call, info)
        headers = _object_headers(info, checksums=want_checksums and span is None)
        _apply_overrides(call, headers)
        start, end = span if span is not None else (0, info.size)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        headers["x-amz-request-id"] = call.request_id
        status = 206 if span is not None else 200
        if end - start <= SMALL_BODY and _local_files(reader) is None:
            data = b"".join([chunk async for chunk in reader.stream(start, end)])
            return web.Response(status=status, headers=headers, body=data)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        try:
            await _send_body(request, response, reader, start, end)
            await response.write_eof()
        except ConnectionError:
            # the client went away mid-body (a reader that stops early): nothing to answer
            log.debug("GET %s/%s: the client closed the connection", call.bucket, call.key)
        return response
    finally:
        await reader.aclose()


SENDFILE_CHUNK = 1 << 20
"""Bytes read and written at a time where the loop has no ``sendfile``."""


async def _send_body(
    request: web.Request, response: web.StreamResponse, reader: ObjectReader, start: int, end: int
) -> None:
    """Send bytes [start, end) of the object: ``sendfile`` from its files when the backend keeps
    it in local files (:class:`~tunnelmesh.abc.LocalFiles`), else the reader's stream.

    The reader stays open meanwhile, so its files stay whole and unchanged (the backend frees
    an overwritten or deleted object's files only after its last reader closes).
    """
    local = _local_files(reader)
    files = local.local_files() if local is not None else None
    transport = request.transport
    if files is None or transport is None:
        async for chunk in reader.stream(start, end):
            await response.write(chunk)
        return
    await _sendfile(asyncio.get_running_loop(), transport, files, start, end, response.write)


async def _sendfile(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    files: Sequence[tuple[str, int]],
    start: int,
    end: int,
    write: Callable[[bytes], Awaitable[None]],
) -> None:
    """``loop.sendfile`` each file's part of [start, end); on a loop without it (uvloop: the
    coordinator's own peer runs on uvloop) the parts are read and written in chunks through
    ``write`` instead (it raised before sending anything; the body went out empty)."""
    offset = 0
    for path, length in files:
        first, last = max(start - offset, 0), min(end - offset, length)
        offset += length
        if first >= last:
            continue
        with open(path, "rb") as f:  # a local open: no waiting on the network
            if transport.is_closing():
                raise ConnectionResetError("the client closed the connection")
            try:
                # asyncio copies in a thread where the transport cannot sendfile (TLS)
                await loop.sendfile(transport, f, first, last - first)
                continue
            except NotImplementedError:
                pass
            f.seek(first)
            left = last - first
            while left:
                chunk = await loop.run_in_executor(None, f.read, min(left, SENDFILE_CHUNK))
                if not chunk:
                    raise StorageError(f"{path} ended {left} bytes early")
                left -= len(chunk)
                await write(chunk)


def _apply_overrides(call: Call, headers: CIMultiDict[str]) -> None:
    if not call.params:
        return
    for param, header in RESPONSE_OVERRIDES.items():
        if param in call.params:
            headers[header] = call.params[param]


def _condition_response(info: ObjectInfo, status: int) -> web.Response:
    if status == 304:
        return web.Response(
            status=304,
            headers={
                "ETag": f'"{info.etag}"',
                "Last-Modified": http_date(info.last_modified),
            },
        )
    raise S3Error(
        "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"
    )


def _head_response(call: Call, info: ObjectInfo, want_checksums: bool) -> web.Response:
    status = _check_conditions(call.request.headers, info)
    if status == 304:
        return _condition_response(info, 304)
    if status == 412:
        return web.Response(status=412, headers={"x-amz-error-code": "PreconditionFailed"})
    span = _span(call, info)
    headers = _object_headers(info, checksums=want_checksums and span is None)
    _apply_overrides(call, headers)
    length = info.size
    if span is not None:
        headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{info.size}"
        length = span[1] - span[0]
    headers["Content-Length"] = str(length)
    response = web.Response(status=206 if span is not None else 200, headers=headers)
    return response


async def delete_object(call: Call) -> web.Response:
    await call.need("write")
    await call.storage.delete_object(call.bucket, call.key)
    return web.Response(status=204)


async def copy_object(call: Call) -> web.Response:
    """CopyObject; ``x-amz-copy-source-if-*`` are conditions on the source, ``If-None-Match``/
    ``If-Match`` conditional writes on the destination, checked as PutObject checks them
    (before the copy, then atomically with its commit: 412, 404 NoSuchKey, 409)."""
    src_bucket, src_key = _copy_source(call)
    await call.need("read", src_bucket)
    await call.need("write")
    headers = call.request.headers
    acl.check_object_acl(headers)
    source = await call.storage.head_object(src_bucket, src_key)
    if _check_conditions(headers, source, prefix="x-amz-copy-source-", read=False) is not None:
        raise S3Error(
            "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"
        )
    replace = _directive(headers, "x-amz-metadata-directive")
    replace_tags = _directive(headers, "x-amz-tagging-directive")
    if (src_bucket, src_key) == (call.bucket, call.key) and not (replace or replace_tags):
        raise S3Error(
            "InvalidRequest",
            "This copy request is illegal because it is trying to copy an object to itself without "
            "changing the object's metadata, storage class, website redirect location or encryption "
            "attributes.",
        )
    condition = await _write_condition(call)
    info = await call.storage.copy_object(
        src_bucket,
        src_key,
        call.bucket,
        call.key,
        content_type=headers.get("Content-Type", DEFAULT_TYPE) if replace else None,
        metadata=user_metadata(headers) if replace else None,
        headers=_copied_headers(headers, source, replace, replace_tags),
        precondition=condition,
    )
    return xml(
        document(
            "CopyObjectResult",
            element("LastModified", iso8601(info.last_modified)),
            element("ETag", f'"{info.etag}"'),
        )
    )


def _directive(headers: Mapping[str, str], name: str) -> bool:
    """Whether a copy's ``x-amz-metadata-directive``/``x-amz-tagging-directive`` is REPLACE
    (COPY, the default, keeps the source's)."""
    value = headers.get(name, "COPY")
    if value.upper() not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", f"Unknown {name}: {value}")
    return value.upper() == "REPLACE"


def _copied_headers(
    headers: Mapping[str, str], source: ObjectInfo, replace: bool, replace_tags: bool
) -> dict[str, str] | None:
    """A copy's stored headers: the request's or the source's (metadata directive), with the
    request's or the source's tags (tagging directive); None keeps all of the source's."""
    if not replace and not replace_tags:
        return None
    out = (
        stored_headers(headers, tags=False)
        if replace
        else {k: v for k, v in source.headers.items() if k != tagging.HEADER}
    )
    if replace_tags:
        out.update(stored_headers({tagging.HEADER: headers.get(tagging.HEADER, "")}))
    elif tagging.HEADER in source.headers:
        out[tagging.HEADER] = source.headers[tagging.HEADER]
    return out


async def get_object_acl(call: Call) -> web.Response:
    """GetObjectAcl (the bucket's owner): the bucket's owner and grants, which are the object's."""
    await call.need("own")
    await call.storage.head_object(call.bucket, call.key)
    current = getattr(call.auth, "acl", lambda b: None)(call.bucket) or BucketAcl(owner="")
    return xml(acl.to_document(current, call.auth.display))


async def put_object_acl(call: Call) -> web.Response:
    """PutObjectAcl (writers): only what an object's ACL already is (``private``,
    ``bucket-owner-full-control``, or a policy granting the owner alone) is accepted, and
    changes nothing; anything else is AccessControlListNotSupported."""
    await call.need("write")
    acl.check_object_acl(call.request.headers)
    body = await call.document()
    if body:
        current = getattr(call.auth, "acl", lambda b: None)(call.bucket)
        owner = current.owner if current is not None else ""
        grants = acl.bucket_grants_from_request({}, body, owner)
        if grants is not None and (grants.read or grants.write):
            raise acl.object_grants_refused()
    await call.storage.head_object(call.bucket, call.key)
    return web.Response()


async def get_object_tagging(call: Call) -> web.Response:
    """GetObjectTagging (readers): the tag set, sorted by key; empty when it has none."""
    await call.need("read")
    info = await call.storage.head_object(call.bucket, call.key)
    return xml(tagging.to_document(tagging.decode(info.headers.get(tagging.HEADER))))


async def put_object_tagging(call: Call) -> web.Response:
    """PutObjectTagging (writers): replaces the object's tags in place (its data, ETag and
    Last-Modified stay); a tag set past S3's limits is InvalidTag and changes nothing."""
    await call.need("write")
    tags = tagging.from_document(await call.document(), tagging.MAX_OBJECT_TAGS)
    await call.storage.update_object_headers(
        call.bucket, call.key, {tagging.HEADER: tagging.encode(tags) if tags else None}
    )
    return web.Response()


async def delete_object_tagging(call: Call) -> web.Response:
    """DeleteObjectTagging (writers): 204, the object keeps everything but its tags."""
    await call.need("write")
    await call.storage.update_object_headers(call.bucket, call.key, {tagging.HEADER: None})
    return web.Response(status=204)
