"""POST object uploads: S3's HTML form upload (``POST /bucket`` with ``multipart/form-data``).

The request has no ``Authorization`` header; the form's signed policy authenticates it
(:mod:`.postpolicy`). Parsing is bounded before anything is allocated for it: the fields before
the file may take :data:`MAX_FIELDS` bytes in all (``MaxPostPreDataLengthExceeded`` past that),
fields after the file are ignored (as S3), and the file streams into the backend chunk by chunk,
its size checked against the policy's ``content-length-range`` as it goes and its
``x-amz-checksum-*`` at the end. The caller must be allowed to write the bucket. Any failure
raises before the backend commits, so a refused form stores nothing.

On success: 204 (or ``success_action_status`` 200 or 201, the latter with a ``PostResponse``
document), or a 303 to ``success_action_redirect`` (or ``redirect``) with ``bucket``, ``key``
and ``etag`` added to its query. The redirect target is a form field, so the policy has to
allow it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import BodyPartReader, MultipartReader, web
from tunnelmesh.abc import Storage

from tunnelmesh_s3 import acl, objectrequest, objects, postpolicy, sigv4, tagging
from tunnelmesh_s3.auth import Authorizer, SecretLookup
from tunnelmesh_s3.body import CHECKSUM_ALGORITHMS
from tunnelmesh_s3.call import MAX_OBJECT_SIZE, Call
from tunnelmesh_s3.errors import S3Error
from tunnelmesh_s3.xmlio import document, element

if TYPE_CHECKING:
    from tunnelmesh_s3.app import S3Config

__all__ = ["MAX_FIELDS", "is_form_upload", "post_object"]

MAX_FIELDS = 20 * 1024
"""Bytes of form fields (names and values) allowed before the file, as S3 (20 KB)."""

FIELD_OVERHEAD = 64
"""What each field counts beyond its name and value (so that many empty fields are bounded)."""

CHUNK = 1024 * 1024


def is_form_upload(method: str, bucket: str, key: str, raw_query: str, content_type: str) -> bool:
    """Whether a request is a POST object upload (to the bucket, no sub-resource, a form)."""
    return (
        method == "POST"
        and bool(bucket)
        and not key
        and not raw_query
        and content_type.lower().startswith("multipart/form-data")
    )


async def _fields(reader: MultipartReader) -> tuple[dict[str, str], BodyPartReader]:
    """The fields before the file (names lower-cased) and the file's part."""
    fields: dict[str, str] = {}
    budget = MAX_FIELDS
    while True:
        part = await reader.next()
        if part is None:
            raise S3Error("InvalidArgument", "POST requires exactly one file upload per request.")
        if not isinstance(part, BodyPartReader):
            raise S3Error("InvalidArgument", "nested multipart form fields are not accepted")
        name = (part.name or "").lower()
        if name == "file":
            return fields, part
        budget -= len(name) + FIELD_OVERHEAD
        value = bytearray()
        while budget >= 0 and (chunk := await part.read_chunk(min(budget + 1, CHUNK))):
            value += chunk
            budget -= len(chunk)
        if budget < 0:
            raise S3Error(
                "MaxPostPreDataLengthExceeded",
                "Your POST request fields preceding the upload file were too large.",
            )
        if name in fields:
            raise S3Error("InvalidArgument", f"the form field {name!r} is given twice")
        try:
            fields[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidArgument", f"the form field {name!r} is not UTF-8") from None


async def _file(
    part: BodyPartReader, policy: postpolicy.Policy, checksums: dict[str, str]
) -> AsyncIterator[bytes]:
    """The file's bytes; raises (so that nothing is stored) when its size is outside the
    policy's range or a declared checksum does not match."""
    hashers = {alg: CHECKSUM_ALGORITHMS[alg]() for alg in checksums}
    high = MAX_OBJECT_SIZE if policy.max_size is None else min(policy.max_size, MAX_OBJECT_SIZE)
    size = 0
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if size > high:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        for hasher in hashers.values():
            hasher.update(chunk)
        yield chunk
    if size < policy.min_size:
        raise S3Error(
            "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size"
        )
    for alg, value in checksums.items():
        if base64.b64encode(hashers[alg].digest()).decode() != value:
            raise S3Error(
                "BadDigest",
                f"The {alg.upper()} you specified did not match the calculated checksum.",
            )


async def post_object(
    request: web.Request,
    storage: Storage,
    auth: Authorizer,
    config: S3Config,
    bucket: str,
    request_id: str,
) -> web.StreamResponse:
    """Store the form's file under its ``key`` once its policy checks."""
    fields, part = await _fields(await request.multipart())
    key = fields.get("key")
    if key is None:
        raise S3Error("InvalidArgument", "Bucket POST must contain a field named 'key'.")
    if "${filename}" in key:
        filename = (part.filename or "").replace("\\", "/").rpartition("/")[2]
        key = key.replace("${filename}", filename)
        fields["key"] = key
    lookup = SecretLookup(auth)
    policy = postpolicy.verify(
        fields, bucket=bucket, lookup_secret=lookup, region=config.region, now=config.clock()
    )
    verified = sigv4.Verified(policy.access_key, sigv4.UNSIGNED, b"", "", "", "")
    call = Call(
        request,
        storage,
        auth,
        config,
        lookup.principals[policy.access_key],
        verified,
        bucket,
        key,
        request_id=request_id,
    )
    objects.check_object_key(key)
    await call.need("write")
    if "acl" in fields:
        acl.check_object_acl({"x-amz-acl": fields["acl"]})
    checksums = {}
    for alg in CHECKSUM_ALGORITHMS:
        if (value := fields.get(f"x-amz-checksum-{alg}")) is not None:
            checksums[alg] = value.strip()
    headers = objectrequest.stored_headers(fields, tags=False)
    if (doc := fields.get("tagging")) is not None:
        tags = tagging.from_document(doc.encode("utf-8"), tagging.MAX_OBJECT_TAGS)
        if tags:
            headers[tagging.HEADER] = tagging.encode(tags)
    info = await call.storage.put_object(
        call.bucket,
        key,
        _file(part, policy, checksums),
        content_type=fields.get("content-type", objectrequest.DEFAULT_TYPE),
        metadata=objectrequest.user_metadata(fields),
        headers=headers,
        checksums=checksums,
    )
    etag = f'"{info.etag}"'
    location = f"/{quote(call.bucket)}/{quote(key)}"
    redirect = fields.get("success_action_redirect") or fields.get("redirect")
    if redirect:
        sep = "&" if "?" in redirect else "?"
        target = (
            f"{redirect}{sep}bucket={quote(call.bucket, safe='')}&key={quote(key, safe='')}"
            f"&etag={quote(etag, safe='')}"
        )
        return web.Response(status=303, headers={"Location": target, "ETag": etag})
    status = fields.get("success_action_status", "204")
    if status == "201":
        body = document(
            "PostResponse",
            element("Location", location),
            element("Bucket", call.bucket),
            element("Key", key),
            element("ETag", etag),
        )
        return web.Response(
            status=201,
            body=body,
            content_type="application/xml",
            headers={"ETag": etag, "Location": location},
        )
    return web.Response(
        status=200 if status == "200" else 204, headers={"ETag": etag, "Location": location}
    )
