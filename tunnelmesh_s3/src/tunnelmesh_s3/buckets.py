"""Bucket-level S3 operations: buckets, listings, DeleteObjects, multipart upload listings."""

from __future__ import annotations

import base64
import binascii
from xml.sax.saxutils import escape

import msgspec
from aiohttp import web
from tunnelmesh.abc import ObjectInfo
from tunnelmesh.errors import BucketAlreadyExists, InvalidName, NoSuchBucket, StorageError
from tunnelmesh.storage import check_bucket_name, check_key

from tunnelmesh_s3 import acl, cors, tagging
from tunnelmesh_s3.auth import BucketAcl, FileAuthorizer
from tunnelmesh_s3.call import Call, Handler
from tunnelmesh_s3.errors import S3Error, from_storage
from tunnelmesh_s3.listing import page_buckets, page_uploads
from tunnelmesh_s3.xmlio import document, element, encode_key, iso8601, parse_delete

__all__ = ["list_buckets", "route"]

UNSUPPORTED = {
    "accelerate",
    "analytics",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "lifecycle",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "website",
}


def xml(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/xml")


def _owner(name: str) -> str:
    return f"<Owner>{element('ID', name)}{element('DisplayName', name)}</Owner>"


def route(call: Call) -> Handler | None:
    method, params = call.request.method, call.params
    if UNSUPPORTED & params.keys():
        return _not_implemented
    if "acl" in params:
        return {"GET": get_bucket_acl, "PUT": put_bucket_acl}.get(method)
    if "cors" in params:
        return {
            "GET": get_bucket_cors,
            "PUT": put_bucket_cors,
            "DELETE": delete_bucket_cors,
        }.get(method)
    if "tagging" in params:
        return {
            "GET": get_bucket_tagging,
            "PUT": put_bucket_tagging,
            "DELETE": delete_bucket_tagging,
        }.get(method)
    if method == "GET":
        if "location" in params:
            return get_location
        if "versioning" in params:
            return get_versioning
        if "uploads" in params:
            return list_uploads
        if "versions" in params:
            return list_versions
        return list_objects
    if method == "PUT" and not params:
        return create_bucket
    if method == "HEAD":
        return head_bucket
    if method == "DELETE" and not params:
        return delete_bucket
    if method == "POST" and "delete" in params:
        return delete_objects
    return None


async def _not_implemented(call: Call) -> web.Response:
    raise S3Error(
        "NotImplemented",
        "A header or query you provided implies functionality that is not implemented.",
    )


MAX_BUCKETS = 10_000
"""The most buckets one ListBuckets page may ask for (``max-buckets``), as S3."""


async def list_buckets(call: Call) -> web.Response:
    """ListBuckets: all the buckets the caller may read, or pages of them with ``max-buckets``
    (then ``ContinuationToken`` leads to the next page), ordered and resumed by name."""
    p = call.params
    prefix = p.get("prefix", "")
    token = p.get("continuation-token")
    max_buckets = MAX_BUCKETS
    if "max-buckets" in p:
        try:
            max_buckets = int(p["max-buckets"])
        except ValueError:
            raise S3Error("InvalidArgument", "max-buckets must be an integer") from None
        if not 1 <= max_buckets <= MAX_BUCKETS:
            raise S3Error("InvalidArgument", f"max-buckets must be 1 to {MAX_BUCKETS}")
    buckets, truncated = page_buckets(
        [
            b
            for b in await call.storage.list_buckets()
            if call.auth.allowed(call.principal, b.name, "read")
        ],
        prefix=prefix,
        after=_untoken(token) if token is not None else "",
        max_buckets=max_buckets,
    )
    entries = "".join(
        f"<Bucket>{element('Name', b.name)}{element('CreationDate', iso8601(b.created))}</Bucket>"
        for b in buckets
    )
    parts = [_owner(call.principal.name), f"<Buckets>{entries}</Buckets>"]
    if truncated:
        parts.append(element("ContinuationToken", _token(buckets[-1].name)))
    if "prefix" in p:
        parts.append(element("Prefix", prefix))
    return xml(document("ListAllMyBucketsResult", *parts))


async def create_bucket(call: Call) -> web.Response:
    if not call.auth.can_create_bucket(call.principal):
        raise S3Error("AccessDenied", "Access Denied")
    # an ACL asked for (x-amz-acl, x-amz-grant-*) is checked before anything is created
    grants = acl.bucket_grants_from_request(call.request.headers, b"", call.principal.key)
    if grants is not None:
        _resolve(call, grants)
    await call.request.read()  # CreateBucketConfiguration: the region is ours whatever it says
    try:
        check_bucket_name(call.bucket)
        await call.storage.create_bucket(call.bucket)
    except InvalidName as exc:
        raise S3Error("InvalidBucketName", str(exc), BucketName=call.bucket) from None
    except BucketAlreadyExists:
        if call.auth.allowed(call.principal, call.bucket, "own"):
            if call.config.region == "us-east-1":
                # S3's us-east-1 answers a re-creation by the owner with success
                return web.Response(headers={"Location": f"/{call.bucket}"})
            raise S3Error(
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you already own it.",
                BucketName=call.bucket,
            ) from None
        raise S3Error(
            "BucketAlreadyExists",
            "The requested bucket name is not available.",
            BucketName=call.bucket,
        ) from None
    await call.auth.bucket_created(call.principal, call.bucket)
    if grants is not None and (grants.read or grants.write):
        await _set_grants(call, grants)
    return web.Response(headers={"Location": f"/{call.bucket}"})


def _file_auth(call: Call) -> FileAuthorizer:
    if not isinstance(call.auth, FileAuthorizer):
        raise S3Error("NotImplemented", "This server keeps no grants it could show as an ACL.")
    return call.auth


def _resolve(call: Call, grants: acl.Grants) -> tuple[list[str], list[str]]:
    """The grants' principals checked and resolved to what grants store (peer IDs on a mesh).

    Raises:
        S3Error: InvalidArgument naming a grantee that is no principal or group.
    """
    unknown = sorted(set(call.auth.unknown_grantees([*grants.read, *grants.write])))
    if unknown:
        raise S3Error("InvalidArgument", "Invalid id: " + ", ".join(unknown))
    return call.auth.resolve_grantees(grants.read), call.auth.resolve_grantees(grants.write)


async def _set_grants(call: Call, grants: acl.Grants) -> None:
    auth = _file_auth(call)
    read, write = _resolve(call, grants)
    current = auth.acl(call.bucket)
    owner = current.owner if current is not None else call.principal.key
    await auth.set_acl(call.bucket, BucketAcl(owner=owner, read=read, write=write))


async def get_bucket_acl(call: Call) -> web.Response:
    """GetBucketAcl (the owner): the owner with FULL_CONTROL and the grants as S3 grants."""
    await call.need("own")
    await call.storage.head_bucket(call.bucket)
    current = _file_auth(call).acl(call.bucket) or BucketAcl(owner="")
    return xml(acl.to_document(current, call.auth.display))


async def put_bucket_acl(call: Call) -> web.Response:
    """PutBucketAcl (the owner): a canned ACL, grant headers or an AccessControlPolicy mapped
    onto the bucket's grants (replacing them); what cannot map is refused and changes nothing."""
    await call.need("own")
    _file_auth(call)
    body = await call.document()
    current = call.auth.acl(call.bucket) if isinstance(call.auth, FileAuthorizer) else None
    owner = current.owner if current is not None else call.principal.key
    grants = acl.bucket_grants_from_request(call.request.headers, body, owner)
    if grants is None:
        raise S3Error(
            "MissingSecurityHeader", "Your request was missing a required header: x-amz-acl"
        )
    await call.storage.head_bucket(call.bucket)
    await _set_grants(call, grants)
    return web.Response()


async def head_bucket(call: Call) -> web.Response:
    await call.need("read")
    await call.storage.head_bucket(call.bucket)
    return web.Response(headers={"x-amz-bucket-region": call.config.region})


async def delete_bucket(call: Call) -> web.Response:
    await call.need("own")
    await call.storage.delete_bucket(call.bucket)
    await call.auth.bucket_deleted(call.bucket)
    return web.Response(status=204)


async def get_bucket_tagging(call: Call) -> web.Response:
    """GetBucketTagging (readers): NoSuchTagSet when the bucket has none, as S3."""
    await call.need("read")
    await call.storage.head_bucket(call.bucket)
    tags = call.auth.bucket_settings(call.bucket).tags
    if not tags:
        raise S3Error(
            "NoSuchTagSet", "The TagSet does not exist", status=404, BucketName=call.bucket
        )
    return xml(tagging.to_document(tags))


async def put_bucket_tagging(call: Call) -> web.Response:
    """PutBucketTagging (the owner): replaces the tag set; a bad one changes nothing."""
    await call.need("own")
    tags = tagging.from_document(await call.document(), tagging.MAX_BUCKET_TAGS)
    await call.storage.head_bucket(call.bucket)
    settings = call.auth.bucket_settings(call.bucket)
    await call.auth.set_bucket_settings(call.bucket, msgspec.structs.replace(settings, tags=tags))
    return web.Response(status=204)


async def delete_bucket_tagging(call: Call) -> web.Response:
    """DeleteBucketTagging (the owner)."""
    await call.need("own")
    await call.storage.head_bucket(call.bucket)
    settings = call.auth.bucket_settings(call.bucket)
    if settings.tags:
        await call.auth.set_bucket_settings(call.bucket, msgspec.structs.replace(settings, tags=[]))
    return web.Response(status=204)


async def get_bucket_cors(call: Call) -> web.Response:
    """GetBucketCors (readers): NoSuchCORSConfiguration when the bucket has no rules."""
    await call.need("read")
    await call.storage.head_bucket(call.bucket)
    rules = call.auth.bucket_settings(call.bucket).cors
    if not rules:
        raise S3Error(
            "NoSuchCORSConfiguration",
            "The CORS configuration does not exist",
            status=404,
            BucketName=call.bucket,
        )
    return xml(cors.to_document(rules))


async def put_bucket_cors(call: Call) -> web.Response:
    """PutBucketCors (the owner): replaces the rules; a bad document changes nothing."""
    await call.need("own")
    rules = cors.parse(await call.document(cors.MAX_DOCUMENT))
    await call.storage.head_bucket(call.bucket)
    settings = call.auth.bucket_settings(call.bucket)
    await call.auth.set_bucket_settings(call.bucket, msgspec.structs.replace(settings, cors=rules))
    return web.Response()


async def delete_bucket_cors(call: Call) -> web.Response:
    """DeleteBucketCors (the owner): 204."""
    await call.need("own")
    await call.storage.head_bucket(call.bucket)
    settings = call.auth.bucket_settings(call.bucket)
    if settings.cors:
        await call.auth.set_bucket_settings(call.bucket, msgspec.structs.replace(settings, cors=[]))
    return web.Response(status=204)


async def get_location(call: Call) -> web.Response:
    await call.need("read")
    await call.storage.head_bucket(call.bucket)
    region = "" if call.config.region == "us-east-1" else call.config.region
    return xml(document("LocationConstraint", escape(region)))


async def get_versioning(call: Call) -> web.Response:
    await call.need("read")
    await call.storage.head_bucket(call.bucket)
    return xml(document("VersioningConfiguration"))


def _max(call: Call, name: str, default: int = 1000) -> int:
    raw = call.params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be an integer") from None
    if value < 0:
        raise S3Error("InvalidArgument", f"{name} must not be negative")
    return min(value, 1000)


def _encoding(call: Call) -> bool:
    """Whether the listing asked for ``encoding-type=url`` (the only encoding S3 knows)."""
    if "encoding-type" not in call.params:
        return False
    if call.params["encoding-type"] != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
    return True


def _contents(obj: ObjectInfo, url: bool, owner: str | None) -> str:
    return (
        "<Contents>"
        + element("Key", encode_key(obj.key, url))
        + element("LastModified", iso8601(obj.last_modified))
        + element("ETag", f'"{obj.etag}"')
        + element("Size", obj.size)
        + element("StorageClass", "STANDARD")
        + (_owner(owner) if owner else "")
        + "</Contents>"
    )


def _token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode("utf-8")).decode()


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect") from None


async def list_objects(call: Call) -> web.Response:
    await call.need("read")
    p = call.params
    v2 = p.get("list-type") == "2"
    url = _encoding(call)
    prefix, delimiter = p.get("prefix", ""), p.get("delimiter", "")
    max_keys = _max(call, "max-keys")
    if v2:
        token = p.get("continuation-token")
        start = _untoken(token) if token is not None else p.get("start-after", "")
    else:
        start = p.get("marker", "")
    owner = None
    if not v2 or p.get("fetch-owner") == "true":
        acl = getattr(call.auth, "acl", lambda b: None)(call.bucket)
        owner = acl.owner if acl is not None else "admin"
    page = await call.storage.list_objects(
        call.bucket, prefix=prefix, delimiter=delimiter, start_after=start, max_keys=max_keys
    )
    parts = [
        element("Name", call.bucket),
        # v1 echoes Prefix as sent even with encoding-type=url (AWS; botocore decodes it only
        # for v2), v2 encodes it
        element("Prefix", encode_key(prefix, url and v2)),
    ]
    if delimiter:
        parts.append(element("Delimiter", encode_key(delimiter, url)))
    parts.append(element("MaxKeys", max_keys))
    if url:
        parts.append(element("EncodingType", "url"))
    parts.append(element("IsTruncated", "true" if page.truncated else "false"))
    if v2:
        parts.append(element("KeyCount", len(page.objects) + len(page.prefixes)))
        if "continuation-token" in p:
            parts.append(element("ContinuationToken", p["continuation-token"]))
        if "start-after" in p:
            parts.append(element("StartAfter", encode_key(p["start-after"], url)))
        if page.truncated:
            parts.append(element("NextContinuationToken", _token(page.next_marker)))
    else:
        parts.append(element("Marker", encode_key(start, url)))
        if page.truncated:
            parts.append(element("NextMarker", encode_key(page.next_marker, url)))
    parts += [_contents(o, url, owner) for o in page.objects]
    parts += [
        f"<CommonPrefixes>{element('Prefix', encode_key(cp, url))}</CommonPrefixes>"
        for cp in page.prefixes
    ]
    return xml(document("ListBucketResult", *parts))


async def list_versions(call: Call) -> web.Response:
    """ListObjectVersions of a bucket that was never versioned (versioning is not implemented):
    each object is its one version, ``null``, the latest. Ordered and resumed like ListObjects
    (``version-id-marker`` can only be ``null``, so a page resumes after ``key-marker``)."""
    await call.need("read")
    p = call.params
    url = _encoding(call)
    prefix, delimiter = p.get("prefix", ""), p.get("delimiter", "")
    key_marker = p.get("key-marker", "")
    max_keys = _max(call, "max-keys")
    acl = getattr(call.auth, "acl", lambda b: None)(call.bucket)
    owner = acl.owner if acl is not None else "admin"
    page = await call.storage.list_objects(
        call.bucket, prefix=prefix, delimiter=delimiter, start_after=key_marker, max_keys=max_keys
    )
    parts = [
        element("Name", call.bucket),
        element("Prefix", encode_key(prefix, url)),
        element("KeyMarker", encode_key(key_marker, url)),
        element("VersionIdMarker", p.get("version-id-marker", "") if key_marker else ""),
        element("MaxKeys", max_keys),
    ]
    if delimiter:
        parts.append(element("Delimiter", encode_key(delimiter, url)))
    if url:
        parts.append(element("EncodingType", "url"))
    parts.append(element("IsTruncated", "true" if page.truncated else "false"))
    if page.truncated:
        parts.append(element("NextKeyMarker", encode_key(page.next_marker, url)))
        if page.objects and page.objects[-1].key == page.next_marker:
            parts.append(element("NextVersionIdMarker", "null"))
    parts += [
        "<Version>"
        + element("Key", encode_key(o.key, url))
        + element("VersionId", "null")
        + element("IsLatest", "true")
        + element("LastModified", iso8601(o.last_modified))
        + element("ETag", f'"{o.etag}"')
        + element("Size", o.size)
        + _owner(owner)
        + element("StorageClass", "STANDARD")
        + "</Version>"
        for o in page.objects
    ]
    parts += [
        f"<CommonPrefixes>{element('Prefix', encode_key(cp, url))}</CommonPrefixes>"
        for cp in page.prefixes
    ]
    return xml(document("ListVersionsResult", *parts))


async def delete_objects(call: Call) -> web.Response:
    await call.need("write")
    keys, quiet = parse_delete(await call.document())
    await call.storage.head_bucket(call.bucket)
    results = []
    for key in keys:
        try:
            check_key(key)
            await call.storage.delete_object(call.bucket, key)
        except NoSuchBucket:
            raise
        except StorageError as exc:
            err = from_storage(exc, call.bucket, key)
            results.append(
                f"<Error>{element('Key', key)}{element('Code', err.code)}{element('Message', err.message)}</Error>"
            )
            continue
        if not quiet:
            results.append(f"<Deleted>{element('Key', key)}</Deleted>")
    return xml(document("DeleteResult", *results))


async def list_uploads(call: Call) -> web.Response:
    await call.need("read")
    p = call.params
    url = _encoding(call)
    prefix, delimiter = p.get("prefix", ""), p.get("delimiter", "")
    key_marker = p.get("key-marker", "")
    id_marker = p.get("upload-id-marker", "") if key_marker else ""
    max_uploads = _max(call, "max-uploads")
    page = page_uploads(
        await call.storage.list_multipart_uploads(call.bucket, prefix=prefix),
        prefix=prefix,
        delimiter=delimiter,
        key_marker=key_marker,
        upload_id_marker=id_marker,
        max_uploads=max_uploads,
    )
    parts = [
        element("Bucket", call.bucket),
        element("KeyMarker", encode_key(key_marker, url)),
        element("UploadIdMarker", id_marker),
        element("Prefix", encode_key(prefix, url)),
    ]
    if delimiter:
        parts.append(element("Delimiter", encode_key(delimiter, url)))
    parts.append(element("MaxUploads", max_uploads))
    if url:
        parts.append(element("EncodingType", "url"))
    parts.append(element("IsTruncated", "true" if page.truncated else "false"))
    if page.truncated:
        parts += [
            element("NextKeyMarker", encode_key(page.next_key_marker, url)),
            element("NextUploadIdMarker", page.next_upload_id_marker),
        ]
    for u in page.uploads:
        parts.append(
            "<Upload>"
            + element("Key", encode_key(u.key, url))
            + element("UploadId", u.upload_id)
            + _owner(call.principal.name).replace("Owner>", "Initiator>")
            + _owner(call.principal.name)
            + element("StorageClass", "STANDARD")
            + element("Initiated", iso8601(u.initiated))
            + "</Upload>"
        )
    parts += [
        f"<CommonPrefixes>{element('Prefix', encode_key(cp, url))}</CommonPrefixes>"
        for cp in page.prefixes
    ]
    return xml(document("ListMultipartUploadsResult", *parts))
