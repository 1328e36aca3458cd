"""SigV2 without sockets: AWS's published examples, expiry, and tampering."""

from __future__ import annotations

import email.utils

import pytest
from tunnelmesh_s3.sigv4 import MAX_PRESIGN_EXPIRES, Request, SigV4Error

from tunnelmesh_s3 import sigv2

# "Signing and Authenticating REST Requests" (S3 API reference, Signature Version 2): the
# examples for the virtual-hosted bucket johnsmith.
AK = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "johnsmith.s3.amazonaws.com"


def lookup(access_key: str) -> str | None:
    return SECRET if access_key == AK else None


def when(date: str) -> float:
    parsed = email.utils.parsedate_tz(date)
    assert parsed is not None
    return float(email.utils.mktime_tz(parsed))


EXAMPLES = [
    ("GET", "Tue, 27 Mar 2007 19:36:42 +0000", [], "bWq2s1WEIj+Ydj0vQ697zp+IXMU="),
    (
        "PUT",
        "Tue, 27 Mar 2007 21:15:45 +0000",
        [("Content-Type", "image/jpeg"), ("Content-Length", "94328")],
        "MyyxeRY7whkBe+bq8fHCL/2kKUg=",
    ),
]


@pytest.mark.parametrize(("method", "date", "headers", "signature"), EXAMPLES)
def test_aws_header_examples(
    method: str, date: str, headers: list[tuple[str, str]], signature: str
) -> None:
    req = Request(
        method,
        "/photos/puppy.jpg",
        "",
        [("Host", HOST), ("Date", date), *headers, ("Authorization", f"AWS {AK}:{signature}")],
    )
    assert sigv2.is_v2(req)
    verified = sigv2.verify(req, lookup, now=when(date), bucket_prefix="/johnsmith")
    assert verified.access_key == AK and not verified.presigned
    # path-style addressing names the bucket in the path instead: the same signature
    path_style = Request(method, "/johnsmith/photos/puppy.jpg", "", req.headers)
    sigv2.verify(path_style, lookup, now=when(date))
    for tampered in [
        Request(method, "/photos/kitten.jpg", "", req.headers),
        Request("DELETE", "/photos/puppy.jpg", "", req.headers),
        Request(method, "/photos/puppy.jpg", "", [*req.headers, ("x-amz-meta-a", "1")]),
        Request(method, "/photos/puppy.jpg", "acl", req.headers),
    ]:
        with pytest.raises(SigV4Error) as err:
            sigv2.verify(tampered, lookup, now=when(date), bucket_prefix="/johnsmith")
        assert err.value.code == "SignatureDoesNotMatch"
    with pytest.raises(SigV4Error) as err:
        sigv2.verify(req, lookup, now=when(date) + 16 * 60, bucket_prefix="/johnsmith")
    assert err.value.code == "RequestTimeTooSkewed"
    with pytest.raises(SigV4Error) as err:
        sigv2.verify(req, lambda ak: None, now=when(date), bucket_prefix="/johnsmith")
    assert err.value.code == "InvalidAccessKeyId"


def test_aws_query_string_example() -> None:
    query = f"AWSAccessKeyId={AK}&Expires=1175139620&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D"
    req = Request("GET", "/photos/puppy.jpg", query, [("Host", HOST)])
    assert sigv2.is_v2(req)
    verified = sigv2.verify(req, lookup, now=1175139620 - 60, bucket_prefix="/johnsmith")
    assert verified.presigned
    with pytest.raises(SigV4Error) as err:
        sigv2.verify(req, lookup, now=1175139620 + 1, bucket_prefix="/johnsmith")
    assert (err.value.code, err.value.message) == ("AccessDenied", "Request has expired")
    with pytest.raises(SigV4Error) as err:  # further ahead than SigV4's longest presign
        sigv2.verify(
            req, lookup, now=1175139620 - MAX_PRESIGN_EXPIRES - 3600, bucket_prefix="/johnsmith"
        )
    assert err.value.code == "AuthorizationQueryParametersError"
    later = query.replace("1175139620", "1175139621")
    with pytest.raises(SigV4Error) as err:  # a longer lifetime is another signature
        sigv2.verify(
            Request("GET", "/photos/puppy.jpg", later, [("Host", HOST)]),
            lookup,
            now=1175139620 - 60,
            bucket_prefix="/johnsmith",
        )
    assert err.value.code == "SignatureDoesNotMatch"
    with pytest.raises(SigV4Error) as err:  # an x-amz-* header is signed, so cannot be added
        sigv2.verify(
            Request("GET", "/photos/puppy.jpg", query, [("Host", HOST), ("x-amz-meta-a", "1")]),
            lookup,
            now=1175139620 - 60,
            bucket_prefix="/johnsmith",
        )
    assert err.value.code == "SignatureDoesNotMatch"


def test_sigv4_requests_are_not_v2() -> None:
    assert not sigv2.is_v2(Request("GET", "/", "", [("Authorization", "AWS4-HMAC-SHA256 x")]))
    assert not sigv2.is_v2(Request("GET", "/", "X-Amz-Signature=1", []))
    assert not sigv2.is_v2(Request("GET", "/", "", []))
