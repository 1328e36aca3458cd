"""Multipart uploads: create, upload a part (or copy one from an object), list parts, complete
(conditional, with S3's composite checksum), abort. :func:`tunnelmesh_s3.objects.route` sends
these requests here."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

from aiohttp import web

from tunnelmesh_s3 import acl
from tunnelmesh_s3.body import CHECKSUM_ALGORITHMS
from tunnelmesh_s3.buckets import xml
from tunnelmesh_s3.call import Call
from tunnelmesh_s3.errors import S3Error
from tunnelmesh_s3.listing import page_parts
from tunnelmesh_s3.objectrequest import (
    _RANGE,
    DEFAULT_TYPE,
    _body,
    _check_conditions,
    _checksum_headers,
    _copy_source,
    _put_condition,
    stored_headers,
    user_metadata,
)
from tunnelmesh_s3.xmlio import document, element, iso8601, parse_complete

__all__ = [
    "abort_upload",
    "complete_upload",
    "create_upload",
    "list_parts",
    "upload_part",
    "upload_part_copy",
]


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
