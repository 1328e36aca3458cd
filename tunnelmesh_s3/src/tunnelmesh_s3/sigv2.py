"""AWS Signature Version 2 for S3, server side, sans-IO: no sockets, no clock, no aiohttp.

What older tools still sign with: ``Authorization: AWS <access key>:<signature>`` headers, and
presigned query strings (``AWSAccessKeyId``, ``Expires``, ``Signature``) such as ``aws s3 presign``
of the AWS CLI v1 makes. The signature is the base64 HMAC-SHA1, under the secret, of::

    METHOD \\n Content-MD5 \\n Content-Type \\n Date (or Expires) \\n
    x-amz-name:value \\n ... (every x-amz-* header, sorted, values trimmed and comma-joined)
    /bucket/key?sub-resources (the path as sent, the bucket named even for virtual hosts;
                               a bucket alone is /bucket/)

It is checked as strictly as SigV4 (:mod:`.sigv4`): every ``x-amz-*`` header is part of what is
signed by construction, the signature is compared in constant time, a header-signed request must
be dated within :data:`~.sigv4.MAX_SKEW` of now, and a presigned one is refused once its
``Expires`` has passed (403 AccessDenied "Request has expired") or when it lies further ahead than
SigV4's longest presign (:data:`~.sigv4.MAX_PRESIGN_EXPIRES`). The body is not signed (as
SigV4's ``UNSIGNED-PAYLOAD``); a ``Content-MD5`` header, which is signed, is still checked
against it.

Reference: "Signing and Authenticating REST Requests" (the S3 API reference, Signature
Version 2).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
from collections.abc import Callable
from urllib.parse import unquote

from tunnelmesh_s3.sigv4 import (
    MAX_PRESIGN_EXPIRES,
    MAX_SKEW,
    UNSIGNED,
    Request,
    SigV4Error,
    Verified,
    query_pairs,
)

__all__ = ["SUBRESOURCES", "is_v2", "string_to_sign", "verify"]

SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "defaultObjectAcl",
        "delete",
        "encryption",
        "inventory",
        "legal-hold",
        "lifecycle",
        "location",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "partNumber",
        "policy",
        "replication",
        "requestPayment",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
        "restore",
        "retention",
        "select",
        "select-type",
        "storageClass",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    }
)
"""The query parameters that are part of the signed resource (the rest are not signed)."""


def is_v2(req: Request) -> bool:
    """Whether the request is signed with Signature Version 2 (header or query string)."""
    auth = req.header("authorization")
    if auth is not None:
        return auth.strip().startswith("AWS ")
    names = {name for name, _ in query_pairs(req.raw_query)}
    return b"AWSAccessKeyId" in names and b"Signature" in names


def _resource(req: Request, bucket_prefix: str) -> str:
    subresources = []
    for part in req.raw_query.split("&"):
        name, sep, value = part.partition("=")
        # values as the signer saw them before encoding them into the URL
        if name in SUBRESOURCES:
            subresources.append((name, f"{name}={unquote(value)}" if sep else name))
    subresources.sort(key=lambda item: item[0])
    resource = bucket_prefix + (req.raw_path or "/")
    if resource.count("/") == 1 and resource != "/":
        resource += "/"  # a bucket alone is "/bucket/" (S3's rule; botocore signs it so)
    if subresources:
        resource += "?" + "&".join(text for _, text in subresources)
    return resource


def _amz_headers(req: Request, extra: dict[str, list[str]]) -> str:
    values: dict[str, list[str]] = {}
    for name, value in req.headers:
        lower = name.lower()
        if lower.startswith("x-amz-"):
            values.setdefault(lower, []).append(value.strip())
    for name, found in extra.items():
        values.setdefault(name, found)
    return "".join(f"{name}:{','.join(values[name])}\n" for name in sorted(values))


def string_to_sign(
    req: Request, date: str, *, bucket_prefix: str = "", extra: dict[str, list[str]] | None = None
) -> str:
    """The SigV2 string to sign of ``req`` with ``date`` (a Date header value, "" or Expires).

    Args:
        bucket_prefix: ``/bucket`` for a virtual-host-style request (the resource names the
            bucket whatever the addressing).
        extra: ``x-amz-*`` values that a presigned URL carries in its query string.
    """
    md5 = (req.header("content-md5") or "").strip()
    ctype = (req.header("content-type") or "").strip()
    return (
        f"{req.method}\n{md5}\n{ctype}\n{date}\n"
        + _amz_headers(req, extra or {})
        + _resource(req, bucket_prefix)
    )


def _sign(secret: str, text: str) -> str:
    digest = hmac.digest(
        secret.encode("utf-8"), text.encode("utf-8", "surrogateescape"), hashlib.sha1
    )
    return base64.b64encode(digest).decode("ascii")


def verify(
    req: Request,
    lookup_secret: Callable[[str], str | None],
    *,
    now: float,
    bucket_prefix: str = "",
    max_skew: float = MAX_SKEW,
) -> Verified:
    """Check a request's SigV2 signature, in the ``Authorization`` header or the query string.

    Args:
        req: the request (:func:`is_v2` is true of it).
        lookup_secret: access key to secret, or None for an unknown key.
        now: the current Unix time.
        bucket_prefix: ``/bucket`` for a virtual-host-style request, else "".
        max_skew: how far a header-signed request's date may be from ``now``.

    Raises:
        SigV4Error: malformed, unknown key, expired, skewed or wrong signature (the S3 code
            rides on it, as for SigV4).
    """
    auth = req.header("authorization")
    extra: dict[str, list[str]] = {}
    if auth is not None:
        credential = auth.strip()[len("AWS ") :]
        access_key, sep, signature = credential.rpartition(":")
        if not sep or not access_key or not signature:
            raise SigV4Error("InvalidArgument", "malformed AWS authorization header")
        amz_date = req.header("x-amz-date")
        http_date = req.header("date")
        stamp = amz_date if amz_date is not None else http_date
        parsed = email.utils.parsedate_tz(stamp) if stamp else None
        if parsed is None:
            raise SigV4Error(
                "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
            )
        if abs(email.utils.mktime_tz(parsed) - now) > max_skew:
            raise SigV4Error(
                "RequestTimeTooSkewed",
                "the difference between the request time and the server's time is too large",
            )
        # With x-amz-date the Date line is empty (S3's rule); some signers put Date there anyway.
        dates = [http_date or ""] if amz_date is None else ["", http_date or ""]
    else:
        query: dict[bytes, bytes] = {}
        for name, value in query_pairs(req.raw_query):
            if name in query:
                raise SigV4Error(
                    "InvalidArgument", f"{name.decode(errors='replace')} appears twice"
                )
            query[name] = value
        try:
            access_key = query[b"AWSAccessKeyId"].decode()
            signature = query[b"Signature"].decode()
            expires = int(query[b"Expires"])
        except (KeyError, ValueError, UnicodeDecodeError):
            raise SigV4Error(
                "AccessDenied",
                "presigned URL is missing or mangles AWSAccessKeyId, Expires or Signature",
            ) from None
        if now > expires:
            raise SigV4Error("AccessDenied", "Request has expired")
        if expires > now + MAX_PRESIGN_EXPIRES + max_skew:
            raise SigV4Error(
                "AuthorizationQueryParametersError",
                f"Expires must be less than a week ({MAX_PRESIGN_EXPIRES} seconds) in the future",
            )
        for name, value in query.items():
            lower = name.decode("latin-1").lower()
            if lower.startswith("x-amz-"):
                extra[lower] = [value.decode("utf-8", "replace").strip()]
        dates = [str(expires)]
    secret = lookup_secret(access_key)
    if secret is None:
        raise SigV4Error(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        )
    for date in dict.fromkeys(dates):
        expected = _sign(
            secret, string_to_sign(req, date, bucket_prefix=bucket_prefix, extra=extra)
        )
        if hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            return Verified(access_key, UNSIGNED, b"", "", "", expected, auth is None)
    raise SigV4Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided.",
    )
