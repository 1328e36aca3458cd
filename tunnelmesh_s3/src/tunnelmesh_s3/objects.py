"""Object-level S3 operations: put, get (ranged, conditional), head, delete, copy, multipart."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDict
from tunnelmesh.abc import LocalFiles, ObjectInfo, ObjectReader, PartInfo
from tunnelmesh.errors import NoSuchKey
from tunnelmesh.storage import check_key

from tunnelmesh_s3 import acl, tagging
from tunnelmesh_s3.auth import BucketAcl
from tunnelmesh_s3.body import CHECKSUM_ALGORITHMS, Body
from tunnelmesh_s3.buckets import UNSUPPORTED, xml
from tunnelmesh_s3.call import MAX_OBJECT_SIZE, Call, Handler
from tunnelmesh_s3.errors import S3Error
from tunnelmesh_s3.listing import page_parts
from tunnelmesh_s3.xmlio import document, element, iso8601, parse_complete

__all__ = ["route"]

log = logging.getLogger(__name__)

STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)
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
DEFAULT_TYPE = "binary/octet-stream"
SMALL_BODY = 64 * 1024
"""A GET of at most this many bytes from a backend without local files is read into memory and
answered in one response write (headers and body together)."""
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
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


# --- helpers -----------------------------------------------------------------------------------


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name.lower()[len("x-amz-meta-") :]: value
        for name, value in headers.items()
        if name.lower().startswith("x-amz-meta-")
    }


def _without_aws_chunked(value: str) -> str:
    """A Content-Encoding without its ``aws-chunked`` coding (how this request was framed, not
    how the object is encoded); every other byte kept as sent (metadata round-trips exactly)."""
    codings = value.split(",")
    if all(c.strip().lower() != "aws-chunked" for c in codings):
        return value
    return ",".join(c for c in codings if c.strip().lower() != "aws-chunked").strip()


def stored_headers(headers: Mapping[str, str], *, tags: bool = True) -> dict[str, str]:
    """The request headers an object keeps; with ``tags``, its ``x-amz-tagging`` (checked,
    in canonical form)."""
    out = {}
    value = headers.get(tagging.HEADER) if tags else None
    if value is not None and (parsed := tagging.from_header(value)):
        out[tagging.HEADER] = tagging.encode(parsed)
    for name in STORED_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            value = _without_aws_chunked(value)
            if not value:
                continue
        out[name] = value
    return out


def _object_headers(info: ObjectInfo, checksums: bool = False) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    headers["ETag"] = f'"{info.etag}"'
    headers["Last-Modified"] = http_date(info.last_modified)
    headers["Content-Type"] = info.content_type
    headers["Accept-Ranges"] = "bytes"
    for name, value in info.headers.items():
        if name == tagging.HEADER:  # S3 tells how many tags, never what they are
            headers["x-amz-tagging-count"] = str(len(tagging.decode(value)))
        else:
            headers[name] = value
    for name, value in info.metadata.items():
        headers[f"x-amz-meta-{name}"] = value
    if info.parts:
        headers["x-amz-mp-parts-count"] = str(info.parts)
    if checksums:
        for alg, value in info.checksums.items():
            headers[f"x-amz-checksum-{alg}"] = value
    return headers


@functools.lru_cache(maxsize=256)
def _http_date_of(seconds: int) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def http_date(when: float) -> str:
    """An HTTP date (``Last-Modified``) of a Unix time (formatted once per second)."""
    return _http_date_of(int(when))


def _local_files(reader: ObjectReader) -> LocalFiles | None:
    """The reader as :class:`~tunnelmesh.abc.LocalFiles` when it is one, else None: checked
    once per reader class (a runtime protocol check costs microseconds each)."""
    key = (type(reader), LocalFiles)
    found = _LOCAL_FILES.get(key)
    if found is None:
        found = _LOCAL_FILES[key] = isinstance(reader, LocalFiles)
    return reader if found else None  # type: ignore[return-value]


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/").strip('"') == etag:
            return True
    return False


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    parsed = email.utils.parsedate_tz(value)
    return None if parsed is None else float(email.utils.mktime_tz(parsed))


def _check_conditions(
    headers: Mapping[str, str], info: ObjectInfo, *, prefix: str = "", read: bool = True
) -> int | None:
    """The status a conditional request ends with (304 or 412), or None to go on."""
    modified = int(info.last_modified)
    if_match = headers.get(f"{prefix}if-match")
    if if_match is not None:
        if not _etag_matches(if_match, info.etag):
            return 412
    elif (
        since := _http_date(headers.get(f"{prefix}if-unmodified-since"))
    ) is not None and modified > since:
        return 412
    if_none = headers.get(f"{prefix}if-none-match")
    if if_none is not None:
        if _etag_matches(if_none, info.etag):
            return 304 if read and not prefix else 412
    elif (
        since := _http_date(headers.get(f"{prefix}if-modified-since"))
    ) is not None and modified <= since:
        return 304 if read and not prefix else 412
    return None


def _span(call: Call, info: ObjectInfo) -> tuple[int, int] | None:
    """[start, end) that a GET or HEAD asks for: its ``partNumber`` or its ``Range``."""
    raw = call.params.get("partNumber")
    if raw is None:
        return _range(call.request.headers.get("Range"), info.size)
    if "Range" in call.request.headers:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000")
    number = int(raw)
    if not info.parts:  # stored in one piece: it is its own part 1
        if number != 1:
            raise S3Error("InvalidPart", "The requested partnumber is not satisfiable")
        return None
    if number > len(info.part_sizes):
        raise S3Error("InvalidPart", "The requested partnumber is not satisfiable")
    start = sum(info.part_sizes[: number - 1])
    return start, start + info.part_sizes[number - 1]


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a ``Range: bytes=`` header, None for the whole object.

    Raises:
        S3Error: InvalidRange when the range starts past the end.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or m.group(1) == m.group(2) == "":
        return None  # unparseable or multi-range: S3 sends the whole object
    first, last = m.group(1), m.group(2)
    if first == "":
        length = int(last)
        if length == 0:
            raise S3Error(
                "InvalidRange", "The requested range is not satisfiable", ActualObjectSize=str(size)
            )
        return max(size - length, 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or (last != "" and int(last) < start):
        raise S3Error(
            "InvalidRange", "The requested range is not satisfiable", ActualObjectSize=str(size)
        )
    return start, end


def _body(call: Call) -> Body:
    headers = call.request.headers
    if (
        call.request.content_length is None
        and "chunked" not in headers.get("Transfer-Encoding", "").lower()
        and call.verified.chunk_decoder() is None
    ):
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.")
    return Body(call.request, call.verified, max_size=MAX_OBJECT_SIZE)


def _part_number(call: Call) -> int:
    try:
        number = int(call.params["partNumber"])
    except ValueError:
        number = 0
    if not 1 <= number <= 10_000:
        raise S3Error(
            "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive"
        )
    return number


def _copy_source(call: Call) -> tuple[str, str]:
    raw = call.request.headers["x-amz-copy-source"]
    source = unquote(raw.partition("?")[0]).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )
    try:
        check_key(key)
    except Exception as exc:
        raise S3Error("InvalidArgument", str(exc)) from None
    return bucket, key


def _checksum_headers(checksums: Mapping[str, str]) -> dict[str, str]:
    return {
        f"x-amz-checksum-{alg}": value
        for alg, value in checksums.items()
        if alg in CHECKSUM_ALGORITHMS
    }


# --- objects -----------------------------------------------------------------------------------


def _put_condition(call: Call) -> Callable[[ObjectInfo | None], None] | None:
    """The check of a conditional PUT (``If-None-Match: *`` / ``If-Match``), or None."""
    headers = call.request.headers
    if_none, if_match = headers.get("If-None-Match"), headers.get("If-Match")
    if if_none is None and if_match is None:
        return None
    key = call.key

    def check(current: ObjectInfo | None) -> None:
        if (
            if_none is not None and current is not None and _etag_matches(if_none, current.etag)
        ) or (
            if_match is not None and (current is None or not _etag_matches(if_match, current.etag))
        ):
            if current is None:
                raise S3Error("NoSuchKey", "The specified key does not exist.", Key=key)
            raise S3Error(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
                Condition="If-None-Match" if if_none is not None else "If-Match",
            )

    return check


def _conflict(check: Callable[[ObjectInfo | None], None]) -> Callable[[ObjectInfo | None], None]:
    """A condition that held when the request began, checked again at the commit: failing
    there, another write came in meanwhile, which S3 answers 409 ConditionalRequestConflict
    (retry the request)."""

    def at_commit(current: ObjectInfo | None) -> None:
        try:
            check(current)
        except S3Error:
            raise S3Error(
                "ConditionalRequestConflict",
                "The conditional request cannot succeed due to a conflicting operation against "
                "this resource.",
                Key=current.key if current is not None else "",
            ) from None

    return at_commit


async def put_object(call: Call) -> web.Response:
    """PutObject; conditional (``If-None-Match``/``If-Match``): refused before the body is
    uploaded when the condition fails (412, or 404 NoSuchKey for ``If-Match`` on no object),
    and checked again atomically with the commit (409 when another write won meanwhile)."""
    await call.need("write")
    headers = call.request.headers
    acl.check_object_acl(headers)
    condition = _put_condition(call)
    if condition is not None:
        try:
            current: ObjectInfo | None = await call.storage.head_object(call.bucket, call.key)
        except NoSuchKey:
            current = None
        condition(current)
        condition = _conflict(condition)
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
    """GetObjectAttributes: the attributes named in ``x-amz-object-attributes``."""
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
        sizes = [
            PartInfo(number=n, size=size, etag="", last_modified=0)
            for n, size in enumerate(info.part_sizes, 1)
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
                f"<Part>{element('PartNumber', p.number)}{element('Size', p.size)}</Part>"
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
    await _sendfile(asyncio.get_running_loop(), transport, files, start, end)


async def _sendfile(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    files: Sequence[tuple[str, int]],
    start: int,
    end: int,
) -> None:
    offset = 0
    for path, length in files:
        first, last = max(start - offset, 0), min(end - offset, length)
        offset += length
        if first >= last:
            continue
        with open(path, "rb") as f:  # a local open: no waiting on the network
            if transport.is_closing():
                raise ConnectionResetError("the client closed the connection")
            # asyncio copies in a thread where the transport cannot sendfile (TLS)
            await loop.sendfile(transport, f, first, last - first)


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
    info = await call.storage.copy_object(
        src_bucket,
        src_key,
        call.bucket,
        call.key,
        content_type=headers.get("Content-Type", DEFAULT_TYPE) if replace else None,
        metadata=user_metadata(headers) if replace else None,
        headers=_copied_headers(headers, source, replace, replace_tags),
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


# --- ACLs (an object's are its bucket's: acl.py) ------------------------------------------------


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


# --- tags --------------------------------------------------------------------------------------


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


# --- multipart ---------------------------------------------------------------------------------


async def create_upload(call: Call) -> web.Response:
    await call.need("write")
    headers = call.request.headers
    acl.check_object_acl(headers)
    algorithm = headers.get("x-amz-checksum-algorithm", "").lower()
    if algorithm and algorithm not in CHECKSUM_ALGORITHMS:
        raise S3Error("InvalidRequest", f"Checksum algorithm {algorithm.upper()} is not supported")
    upload = await call.storage.create_multipart_upload(
        call.bucket,
        call.key,
        content_type=headers.get("Content-Type", DEFAULT_TYPE),
        metadata=user_metadata(headers),
        headers=stored_headers(headers),
        checksum_algorithm=algorithm,
    )
    response = xml(
        document(
            "InitiateMultipartUploadResult",
            element("Bucket", call.bucket),
            element("Key", call.key),
            element("UploadId", upload.upload_id),
        )
    )
    if algorithm:
        response.headers["x-amz-checksum-algorithm"] = algorithm.upper()
    return response


async def upload_part(call: Call) -> web.Response:
    await call.need("write")
    number = _part_number(call)
    body = _body(call)
    part = await call.storage.upload_part(
        call.bucket, call.key, call.params["uploadId"], number, body, checksums=body.checksums
    )
    return web.Response(headers={"ETag": f'"{part.etag}"', **_checksum_headers(body.checksums)})


async def upload_part_copy(call: Call) -> web.Response:
    src_bucket, src_key = _copy_source(call)
    await call.need("read", src_bucket)
    await call.need("write")
    number = _part_number(call)
    reader = await call.storage.open_object(src_bucket, src_key)
    try:
        info = reader.info
        if _check_conditions(call.request.headers, info, prefix="x-amz-copy-source-", read=False):
            raise S3Error(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            )
        start, end = 0, info.size
        if (spec := call.request.headers.get("x-amz-copy-source-range")) is not None:
            m = _RANGE.match(spec.strip())
            if m is None or not m.group(1) or not m.group(2) or int(m.group(1)) > int(m.group(2)):
                raise S3Error(
                    "InvalidArgument",
                    "The x-amz-copy-source-range value must be of the form bytes=first-last",
                )
            if int(m.group(2)) >= info.size:
                raise S3Error(
                    "InvalidRange",
                    "The x-amz-copy-source-range is outside the source object",
                    status=400,
                )
            start, end = int(m.group(1)), int(m.group(2)) + 1
        part = await call.storage.upload_part(
            call.bucket, call.key, call.params["uploadId"], number, reader.stream(start, end)
        )
    finally:
        await reader.aclose()
    return xml(
        document(
            "CopyPartResult",
            element("LastModified", iso8601(part.last_modified)),
            element("ETag", f'"{part.etag}"'),
        )
    )


async def list_parts(call: Call) -> web.Response:
    await call.need("read")
    upload_id = call.params["uploadId"]
    parts = await call.storage.list_parts(call.bucket, call.key, upload_id)
    try:
        marker = int(call.params.get("part-number-marker", "0") or 0)
        max_parts = min(int(call.params.get("max-parts", "1000")), 1000)
    except ValueError:
        raise S3Error(
            "InvalidArgument", "part-number-marker and max-parts must be integers"
        ) from None
    if marker < 0 or max_parts < 0:
        raise S3Error("InvalidArgument", "part-number-marker and max-parts must not be negative")
    parts, truncated = page_parts(parts, marker=marker, max_parts=max_parts)
    body = [
        element("Bucket", call.bucket),
        element("Key", call.key),
        element("UploadId", upload_id),
        element("PartNumberMarker", marker),
        element("NextPartNumberMarker", parts[-1].number if parts else marker),
        element("MaxParts", max_parts),
        element("IsTruncated", "true" if truncated else "false"),
        element("StorageClass", "STANDARD"),
    ]
    body += [
        "<Part>"
        + element("PartNumber", p.number)
        + element("LastModified", iso8601(p.last_modified))
        + element("ETag", f'"{p.etag}"')
        + element("Size", p.size)
        + "".join(
            element(f"Checksum{alg.upper()}", value) for alg, value in sorted(p.checksums.items())
        )
        + "</Part>"
        for p in parts
    ]
    return xml(document("ListPartsResult", *body))


async def complete_upload(call: Call) -> web.Response:
    """CompleteMultipartUpload; conditional (``If-None-Match``/``If-Match``) as PutObject, the
    condition checked atomically with the completion (refused: the upload stays). A repeated
    completion returns the completed object, whatever its conditions say now."""
    await call.need("write")
    listed = parse_complete(await call.document(own_checksums=False))
    upload_id = call.params["uploadId"]
    info = await call.storage.complete_multipart_upload(
        call.bucket,
        call.key,
        upload_id,
        [(number, etag) for number, etag, _ in listed],
        precondition=_put_condition(call),
        checksums=await _composite_checksum(call, upload_id, listed),
    )
    host = call.request.headers.get("Host", "")
    checksums = [
        element(f"Checksum{alg.upper()}", value) for alg, value in sorted(info.checksums.items())
    ]
    response = xml(
        document(
            "CompleteMultipartUploadResult",
            element("Location", f"http://{host}/{call.bucket}/{call.key}"),
            element("Bucket", call.bucket),
            element("Key", call.key),
            element("ETag", f'"{info.etag}"'),
            *checksums,
        )
    )
    response.headers.update(_checksum_headers(info.checksums))
    return response


async def _composite_checksum(
    call: Call, upload_id: str, listed: Sequence[tuple[int, str, Mapping[str, str]]]
) -> dict[str, str]:
    """S3's checksum of a multipart object whose upload named a checksum algorithm: that
    algorithm over the parts' own checksums, then ``-<part count>``. Every part listed must have
    been uploaded with its checksum, and a checksum listed with a part or sent for the whole
    (``x-amz-checksum-<alg>``) must match (BadDigest otherwise). {} for other uploads."""
    upload = next(
        (
            u
            for u in await call.storage.list_multipart_uploads(call.bucket, prefix=call.key)
            if u.upload_id == upload_id and u.key == call.key
        ),
        None,
    )
    if upload is None or not upload.checksum_algorithm:
        return {}  # a completed upload's retry, or no algorithm: the backend decides
    alg = upload.checksum_algorithm
    stored = {p.number: p for p in await call.storage.list_parts(call.bucket, call.key, upload_id)}
    wanted = {number: (etag, checksums) for number, etag, checksums in listed}  # last wins
    hasher = CHECKSUM_ALGORITHMS[alg]()
    for number in sorted(wanted):
        part = stored.get(number)
        value = part.checksums.get(alg) if part is not None else None
        given = wanted[number][1].get(alg)
        if part is not None and (value is None or (given is not None and given != value)):
            raise S3Error(
                "BadDigest", f"The {alg.upper()} of part {number} is missing or does not match."
            )
        if value is not None:
            hasher.update(base64.b64decode(value))
    composite = f"{base64.b64encode(hasher.digest()).decode()}-{len(wanted)}"
    declared = call.request.headers.get(f"x-amz-checksum-{alg}")
    if declared is not None and declared.strip() != composite:
        raise S3Error(
            "BadDigest", f"The {alg.upper()} you specified did not match the calculated checksum."
        )
    return {alg: composite}


async def abort_upload(call: Call) -> web.Response:
    await call.need("write")
    await call.storage.abort_multipart_upload(call.bucket, call.key, call.params["uploadId"])
    return web.Response(status=204)
