"""CORS as AWS S3 does it: Put/Get/DeleteBucketCors with boto3, preflight ``OPTIONS`` and the
``Access-Control-*`` headers of actual requests, as a browser sends them."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from s3kit import Server, boto_client, code, issue, serve
from tunnelmesh_s3.server import Running

AK, SK = "AKCORSTEST", "cors-secret-for-tests"

RULES = {
    "CORSRules": [
        {"AllowedMethods": ["GET"], "AllowedOrigins": ["*suffix"]},
        {"AllowedMethods": ["GET"], "AllowedOrigins": ["start*end"], "MaxAgeSeconds": 600},
        {
            "AllowedMethods": ["PUT", "POST"],
            "AllowedOrigins": ["https://app.example"],
            "AllowedHeaders": ["x-amz-meta-*", "content-type"],
            "ExposeHeaders": ["ETag"],
        },
    ]
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory, AK, SK)


def client(running: Running, ak: str = AK, sk: str = SK) -> Any:
    return boto_client(running, ak, sk)


@pytest.fixture(scope="module")
def s3(server: Server) -> Any:
    s3 = client(server[1])
    s3.create_bucket(Bucket="web")
    s3.put_bucket_cors(Bucket="web", CORSConfiguration=RULES)
    s3.put_object(Bucket="web", Key="page", Body=b"<p>hi</p>")
    return s3


def request(
    running: Running, method: str, target: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_put_get_delete_bucket_cors_and_no_such_cors_configuration(s3: Any) -> None:
    s3.create_bucket(Bucket="cors-crud")
    with pytest.raises(ClientError) as err:
        s3.get_bucket_cors(Bucket="cors-crud")
    assert code(err) == "NoSuchCORSConfiguration"
    s3.put_bucket_cors(Bucket="cors-crud", CORSConfiguration=RULES)
    got = s3.get_bucket_cors(Bucket="cors-crud")["CORSRules"]
    assert [r["AllowedOrigins"] for r in got] == [
        ["*suffix"],
        ["start*end"],
        ["https://app.example"],
    ]
    assert got[1]["MaxAgeSeconds"] == 600 and got[2]["AllowedHeaders"] == [
        "x-amz-meta-*",
        "content-type",
    ]
    assert s3.delete_bucket_cors(Bucket="cors-crud")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as err:
        s3.get_bucket_cors(Bucket="cors-crud")
    assert code(err) == "NoSuchCORSConfiguration"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([{"AllowedMethods": ["PATCH"], "AllowedOrigins": ["*"]}], "InvalidRequest"),
        ([{"AllowedMethods": ["GET"], "AllowedOrigins": ["*.*.example"]}], "InvalidRequest"),
        (
            [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"], "AllowedHeaders": ["a*b*"]}],
            "InvalidRequest",
        ),
        (
            [{"AllowedMethods": ["GET"], "AllowedOrigins": [f"o{i}"]} for i in range(101)],
            "MalformedXML",
        ),
    ],
    ids=["method", "two-wildcards-origin", "two-wildcards-header", "101-rules"],
)
def test_cors_rules_s3_refuses_change_nothing(s3: Any, rules: list[Any], expected: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.put_bucket_cors(Bucket="web", CORSConfiguration={"CORSRules": rules})
    assert code(err) == expected
    assert len(s3.get_bucket_cors(Bucket="web")["CORSRules"]) == 3


def test_preflight_answers_from_the_rules_without_credentials(s3: Any, server: Server) -> None:
    running = server[1]
    ok = {"Origin": "foo.suffix", "Access-Control-Request-Method": "GET"}
    status, headers, _ = request(running, "OPTIONS", "/web/page", ok)
    assert status == 200
    assert headers["access-control-allow-origin"] == "foo.suffix"
    assert headers["access-control-allow-methods"] == "GET"
    assert headers["access-control-allow-credentials"] == "true"
    status, headers, _ = request(
        running,
        "OPTIONS",
        "/web/page",
        {"Origin": "start12end", "Access-Control-Request-Method": "GET"},
    )
    assert status == 200 and headers["access-control-max-age"] == "600"
    status, headers, _ = request(
        running,
        "OPTIONS",
        "/web/up",
        {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "X-Amz-Meta-Who, Content-Type",
        },
    )
    assert status == 200 and headers["access-control-allow-methods"] == "PUT, POST"
    assert headers["access-control-allow-headers"] == "X-Amz-Meta-Who, Content-Type"
    assert headers["access-control-expose-headers"] == "ETag"
    for refused in (
        {"Origin": "foo.bar", "Access-Control-Request-Method": "GET"},  # no origin matches
        {"Origin": "0start12end", "Access-Control-Request-Method": "GET"},
        {"Origin": "foo.suffix", "Access-Control-Request-Method": "PUT"},  # method not allowed
        {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization",  # header not allowed
        },
    ):
        status, headers, body = request(running, "OPTIONS", "/web/page", refused)
        assert status == 403 and b"<Code>AccessForbidden</Code>" in body, refused
        assert "access-control-allow-origin" not in headers
    for incomplete in ({}, {"Origin": "foo.suffix"}, {"Access-Control-Request-Method": "GET"}):
        assert request(running, "OPTIONS", "/web/page", incomplete)[0] == 400
    # a bucket that does not exist answers as one without rules: nothing to learn
    a = request(running, "OPTIONS", "/no-such-bucket/k", ok)
    s3.create_bucket(Bucket="cors-none")
    b = request(running, "OPTIONS", "/cors-none/k", ok)
    assert a[0] == b[0] == 403 and code_of(a[2]) == code_of(b[2]) == "AccessForbidden"


def code_of(body: bytes) -> str:
    return body.split(b"<Code>")[1].split(b"</Code>")[0].decode()


def test_actual_requests_with_an_allowed_origin_get_the_cors_headers(
    s3: Any, server: Server
) -> None:
    running = server[1]
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "web", "Key": "page"})
    target = url[len(running.endpoint) :]
    status, headers, body = request(running, "GET", target, {"Origin": "www.suffix"})
    assert (status, body) == (200, b"<p>hi</p>")
    assert headers["access-control-allow-origin"] == "www.suffix"
    # errors carry them too (the page can read the error), a foreign origin gets none
    missing = s3.generate_presigned_url("get_object", Params={"Bucket": "web", "Key": "nope"})
    status, headers, _ = request(
        running, "GET", missing[len(running.endpoint) :], {"Origin": "www.suffix"}
    )
    assert status == 404 and headers["access-control-allow-origin"] == "www.suffix"
    status, headers, _ = request(running, "GET", target, {"Origin": "evil.example"})
    assert status == 200 and "access-control-allow-origin" not in headers
    # CORS is no access control: an unsigned request from an allowed origin is still refused
    status, headers, _ = request(running, "GET", "/web/page", {"Origin": "www.suffix"})
    assert status == 403


def test_who_may_change_cors(server: Server) -> None:
    """GetBucketCors needs read; Put/DeleteBucketCors the owner. Refused: nothing changes."""
    thread, running = server
    owner, writer, stranger = (
        client(running, *issue(server, name))
        for name in ("cors-owner", "cors-writer", "cors-stranger")
    )
    owner.create_bucket(Bucket="cors-walk")
    owner.put_bucket_cors(Bucket="cors-walk", CORSConfiguration=RULES)
    acl = running.authorizer.acl("cors-walk")
    assert acl is not None
    acl.write.append("cors-writer")
    asyncio.run_coroutine_threadsafe(
        running.authorizer.set_acl("cors-walk", acl), thread.loop
    ).result(10)
    assert len(writer.get_bucket_cors(Bucket="cors-walk")["CORSRules"]) == 3
    for who in (writer, stranger):
        for call in (
            lambda c: c.put_bucket_cors(
                Bucket="cors-walk",
                CORSConfiguration={
                    "CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]
                },
            ),
            lambda c: c.delete_bucket_cors(Bucket="cors-walk"),
        ):
            with pytest.raises(ClientError) as err:
                call(who)
            assert code(err) == "AccessDenied"
    with pytest.raises(ClientError) as err:
        stranger.get_bucket_cors(Bucket="cors-walk")
    assert code(err) == "AccessDenied"
    assert len(owner.get_bucket_cors(Bucket="cors-walk")["CORSRules"]) == 3
    owner.delete_bucket_cors(Bucket="cors-walk")
