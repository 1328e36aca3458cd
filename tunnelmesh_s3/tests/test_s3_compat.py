"""Behaviours where S3 clients rely on exactly what AWS S3 does; each test is named after one.

Real clients over loopback: boto3 (SigV4, and the legacy SigV2 as ``signature_version="s3"``),
the AWS CLI v1 (its ``aws s3 presign`` makes SigV2 URLs), and raw requests signed by botocore's
signers where a client would hide the detail.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.auth import HmacV1Auth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from tunnelmesh_s3.objectrequest import _without_aws_chunked
from tunnelmesh_s3.server import Running, ServerThread

from tunnelmesh_s3 import sigv2, sigv4

AK, SK = "AKCOMPATTEST", "compat-secret-for-tests"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with ServerThread(tmp_path_factory.mktemp("s3"), access_key=AK, secret_key=SK) as running:
        yield running


def client(running: Running, signature: str = "s3v4", **config: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=running.endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name=config.pop("region", "us-east-1"),
        config=Config(retries={"max_attempts": 1}, signature_version=signature, **config),
    )


@pytest.fixture(scope="module")
def s3(running: Running) -> Any:
    s3 = client(running)
    s3.create_bucket(Bucket="compat")
    return s3


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def send(
    running: Running,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes = b"",
) -> tuple[int, bytes, http.client.HTTPResponse]:
    """Send a request exactly as given (no client-side cleanup)."""
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        headers.setdefault("Host", f"127.0.0.1:{running.port}")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp
    finally:
        conn.close()


def v4_headers(
    running: Running, method: str, target: str, body: bytes = b"", **extra: str
) -> dict[str, str]:
    aws = AWSRequest(method=method, url=f"{running.endpoint}{target}", data=body)
    for name, value in extra.items():
        aws.headers[name] = value
    aws.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(aws)
    return dict(aws.headers.items())


def fetch(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, method=method)) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# --- authentication ---


def test_unsigned_x_amz_header_is_access_denied(s3: Any, running: Running) -> None:
    headers = v4_headers(running, "PUT", "/compat/mitm", b"data")
    headers["x-amz-meta-added"] = "by a man in the middle"
    status, body, _ = send(running, "PUT", "/compat/mitm", headers, b"data")
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    assert b"x-amz-meta-added" in body
    # a presigned URL may not carry added x-amz-* headers either (a copy source, say)
    url = s3.generate_presigned_url("put_object", Params={"Bucket": "compat", "Key": "mitm"})
    target = url[len(running.endpoint) :]
    status, body, _ = send(running, "PUT", target, {"x-amz-copy-source": "/compat/other"}, b"x")
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket="compat", Key="mitm")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404  # nothing changed


def test_signed_x_amz_headers_are_accepted(s3: Any, running: Running) -> None:
    headers = v4_headers(running, "PUT", "/compat/signed", b"data", **{"x-amz-meta-ok": "yes"})
    status, _, _ = send(running, "PUT", "/compat/signed", headers, b"data")
    assert status == 200
    assert s3.head_object(Bucket="compat", Key="signed")["Metadata"] == {"ok": "yes"}


def test_sigv2_authorization_header_is_verified(s3: Any, running: Running) -> None:
    v2 = client(running, "s3")
    v2.put_object(Bucket="compat", Key="v2/a b+é", Body=b"signed with v2", ContentType="text/x")
    got = v2.get_object(Bucket="compat", Key="v2/a b+é", ResponseContentType="text/y")
    assert got["Body"].read() == b"signed with v2" and got["ContentType"] == "text/y"
    assert [o["Key"] for o in v2.list_objects(Bucket="compat", Prefix="v2/")["Contents"]] == [
        "v2/a b+é"
    ]
    # multipart: sub-resources (uploads, uploadId, partNumber) are part of what V2 signs
    uid = v2.create_multipart_upload(Bucket="compat", Key="v2/mp")["UploadId"]
    etag = v2.upload_part(Bucket="compat", Key="v2/mp", UploadId=uid, PartNumber=1, Body=b"p")
    v2.complete_multipart_upload(
        Bucket="compat",
        Key="v2/mp",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag["ETag"]}]},
    )
    assert s3.get_object(Bucket="compat", Key="v2/mp")["Body"].read() == b"p"


def _v2_headers(running: Running, method: str, target: str, secret: str = SK) -> dict[str, str]:
    aws = AWSRequest(method=method, url=f"{running.endpoint}{target}")
    HmacV1Auth(Credentials(AK, secret)).add_auth(aws)
    return dict(aws.headers.items())


def test_sigv2_is_as_strict_as_sigv4(s3: Any, running: Running) -> None:
    s3.put_object(Bucket="compat", Key="v2strict", Body=b"x")
    ok = _v2_headers(running, "GET", "/compat/v2strict")
    assert send(running, "GET", "/compat/v2strict", dict(ok))[0] == 200
    # a wrong secret, another path, another method, an added x-amz-* header: all refused
    status, body, _ = send(
        running, "GET", "/compat/v2strict", _v2_headers(running, "GET", "/compat/v2strict", "wrong")
    )
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert send(running, "GET", "/compat/other", dict(ok))[0] == 403
    assert send(running, "DELETE", "/compat/v2strict", dict(ok))[0] == 403
    status, body, _ = send(running, "GET", "/compat/v2strict", {**ok, "x-amz-meta-added": "1"})
    assert status == 403 and b"SignatureDoesNotMatch" in body
    # the same expiry rules: a header-signed request dated an hour away is refused
    stale = dict(ok)
    stale["Date"] = formatdate(time.time() - 3600, usegmt=True)
    req = sigv4.Request("GET", "/compat/v2strict", "", list(stale.items()))
    sig = HmacV1Auth(Credentials(AK, SK)).sign_string(sigv2.string_to_sign(req, stale["Date"]))
    stale["Authorization"] = f"AWS {AK}:{sig}"
    status, body, _ = send(running, "GET", "/compat/v2strict", stale)
    assert status == 403 and b"RequestTimeTooSkewed" in body
    status, body, _ = send(
        running, "GET", "/compat/v2strict", {**ok, "Authorization": "AWS nokey:x"}
    )
    assert status == 403 and b"InvalidAccessKeyId" in body
    assert s3.get_object(Bucket="compat", Key="v2strict")["Body"].read() == b"x"


def test_sigv2_presigned_url_is_verified(s3: Any, running: Running) -> None:
    s3.put_object(Bucket="compat", Key="v2/presigned", Body=b"shared")
    v2 = client(running, "s3")
    url = v2.generate_presigned_url(
        "get_object", Params={"Bucket": "compat", "Key": "v2/presigned"}, ExpiresIn=300
    )
    assert "AWSAccessKeyId=" in url and "Signature=" in url
    assert fetch(url) == (200, b"shared")
    # another key with the same signature
    assert fetch(url.replace("v2/presigned", "v2/other"))[0] == 403
    # PUT: a presigned upload stores exactly that key
    put = v2.generate_presigned_url(
        "put_object", Params={"Bucket": "compat", "Key": "v2/uploaded"}, ExpiresIn=300
    )
    target = put[len(running.endpoint) :]
    assert send(running, "PUT", target, {}, b"via presigned v2")[0] == 200
    # Content-Type is part of what V2 signs: one the signer did not see is refused
    assert send(running, "PUT", target, {"Content-Type": "text/html"}, b"<evil/>")[0] == 403
    assert s3.get_object(Bucket="compat", Key="v2/uploaded")["Body"].read() == b"via presigned v2"


def test_sigv2_presigned_url_expires_like_sigv4(s3: Any, running: Running) -> None:
    v2 = client(running, "s3")
    s3.put_object(Bucket="compat", Key="v2/exp", Body=b"x")
    url = v2.generate_presigned_url(
        "get_object", Params={"Bucket": "compat", "Key": "v2/exp"}, ExpiresIn=-10
    )
    status, body = fetch(url)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    assert b"Request has expired" in body
    url = v2.generate_presigned_url(
        "get_object", Params={"Bucket": "compat", "Key": "v2/exp"}, ExpiresIn=8 * 24 * 3600
    )
    status, body = fetch(url)
    assert status == 400 and b"AuthorizationQueryParametersError" in body


def test_aws_cli_v1_presign_makes_a_url_this_server_accepts(s3: Any, running: Running) -> None:
    s3.put_object(Bucket="compat", Key="cli/shared.txt", Body=b"from aws s3 presign")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": AK,
        "AWS_SECRET_ACCESS_KEY": SK,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    aws = Path(sys.executable).with_name("aws")
    out = subprocess.run(
        [
            str(aws),
            "s3",
            "presign",
            "s3://compat/cli/shared.txt",
            "--endpoint-url",
            running.endpoint,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    query = parse_qs(urlsplit(out).query)
    assert "AWSAccessKeyId" in query or "X-Amz-Signature" in query
    assert fetch(out) == (200, b"from aws s3 presign")


def test_expired_presigned_url_is_403_request_has_expired(s3: Any) -> None:
    s3.put_object(Bucket="compat", Key="exp", Body=b"x")
    for expires in (1, 0, -1000):
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": "compat", "Key": "exp"}, ExpiresIn=expires
        )
        if expires:
            time.sleep(2.1)  # the URL's lifetime passes (whole seconds in X-Amz-Date)
        status, body = fetch(url)
        assert status == 403, body
        assert b"<Code>AccessDenied</Code>" in body and b"Request has expired" in body


def test_presigned_url_valid_longer_than_a_week_is_400(s3: Any) -> None:
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "compat", "Key": "exp"}, ExpiresIn=604801
    )
    status, body = fetch(url)
    assert status == 400 and b"AuthorizationQueryParametersError" in body


def test_signature_covers_header_bytes_as_sent(s3: Any) -> None:
    """botocore sends a non-ASCII metadata value as UTF-8 and signs those bytes."""

    def utf8_metadata(**kwargs: Any) -> None:
        kwargs["params"]["headers"]["x-amz-meta-meta1"] = "Hello World\xe9"

    s3.meta.events.register("before-call.s3.PutObject", utf8_metadata)
    try:
        s3.put_object(Bucket="compat", Key="utf8-meta", Body=b"x")
    finally:
        s3.meta.events.unregister("before-call.s3.PutObject", utf8_metadata)
    # http.client reads header bytes as Latin-1: these are the UTF-8 bytes that were sent
    got = s3.head_object(Bucket="compat", Key="utf8-meta")["Metadata"]["meta1"]
    assert got.encode("latin-1") == "Hello World\xe9".encode()


# --- requests and responses ---


def test_100_continue_only_after_the_signature_checks(s3: Any, running: Running) -> None:
    import socket

    def interim(headers: dict[str, str]) -> bytes:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            lines = ["PUT /compat/continued HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
            sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n")
            return sock.recv(4096)

    base = {"Host": f"127.0.0.1:{running.port}", "Content-Length": "4", "Expect": "100-continue"}
    assert interim(base).startswith(b"HTTP/1.1 403")  # refused before the body is sent
    signed = v4_headers(running, "PUT", "/compat/continued", b"body")
    assert interim({**base, **signed}).startswith(b"HTTP/1.1 100 Continue")


def test_expect_header_other_than_100_continue_is_ignored(s3: Any, running: Running) -> None:
    s3.put_object(Bucket="compat", Key="expect", Body=b"x")
    headers = v4_headers(running, "GET", "/compat/expect")
    status, body, _ = send(running, "GET", "/compat/expect", {**headers, "Expect": "202-accepted"})
    assert (status, body) == (200, b"x")


def test_list_objects_echoes_prefix_url_encoded_only_in_v2_with_encoding_type_url(
    s3: Any, running: Running
) -> None:
    """AWS encodes Prefix only in ListObjectsV2 (botocore decodes it there and only there:
    botocore always asks for encoding-type=url, so a v1 Prefix encoded reached users as %0A)."""
    s3.put_object(Bucket="compat", Key="a b+c/é\n", Body=b"x")
    raw, encoded = b"<Prefix>a b+c/\xc3\xa9\n</Prefix>", b"<Prefix>a%20b%2Bc/%C3%A9%0A</Prefix>"
    for query, prefix in [
        ("prefix=a%20b%2Bc%2F%C3%A9%0A", raw),
        ("encoding-type=url&prefix=a%20b%2Bc%2F%C3%A9%0A", raw),
        ("list-type=2&prefix=a%20b%2Bc%2F%C3%A9%0A", raw),
        ("list-type=2&encoding-type=url&prefix=a%20b%2Bc%2F%C3%A9%0A", encoded),
    ]:
        target = f"/compat?{query}"
        status, body, _ = send(running, "GET", target, v4_headers(running, "GET", target))
        assert status == 200 and prefix in body, (query, body)
    assert s3.list_objects(Bucket="compat", Prefix="a b+c/é\n")["Prefix"] == "a b+c/é\n"
    assert s3.list_objects_v2(Bucket="compat", Prefix="a b+c/é\n")["Prefix"] == "a b+c/é\n"


def test_content_encoding_and_metadata_round_trip_byte_exact(s3: Any, running: Running) -> None:
    sent = {
        "Content-Encoding": "deflate, gzip",
        "Cache-Control": "no-cache,  max-age=0",
        "Content-Disposition": 'attachment; filename="a  b.txt"',
        "x-amz-meta-spaced": "one,two, three  four",
    }
    headers = v4_headers(running, "PUT", "/compat/enc", b"z", **sent)
    assert send(running, "PUT", "/compat/enc", headers, b"z")[0] == 200
    _, _, resp = send(running, "HEAD", "/compat/enc", v4_headers(running, "HEAD", "/compat/enc"))
    for name, value in sent.items():
        assert resp.getheader(name) == value
    # aws-chunked is how a request is framed, not how the object is encoded
    assert _without_aws_chunked("aws-chunked") == ""
    assert _without_aws_chunked("aws-chunked, gzip") == "gzip"
    assert _without_aws_chunked("deflate, aws-chunked, gzip") == "deflate, gzip"
    assert _without_aws_chunked("deflate, gzip") == "deflate, gzip"


# --- buckets ---


def test_recreating_your_bucket_in_us_east_1_is_200(s3: Any) -> None:
    s3.create_bucket(Bucket="mine-again")
    s3.put_object(Bucket="mine-again", Key="kept", Body=b"x")
    assert s3.create_bucket(Bucket="mine-again")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object(Bucket="mine-again", Key="kept")["Body"].read() == b"x"


def test_recreating_your_bucket_elsewhere_is_bucket_already_owned_by_you(tmp_path: Path) -> None:
    with ServerThread(tmp_path, access_key=AK, secret_key=SK, region="eu-west-1") as running:
        s3 = client(running, region="eu-west-1")
        where = {"LocationConstraint": "eu-west-1"}
        s3.create_bucket(Bucket="mine", CreateBucketConfiguration=where)
        with pytest.raises(ClientError) as err:
            s3.create_bucket(Bucket="mine", CreateBucketConfiguration=where)
        assert code(err) == "BucketAlreadyOwnedByYou"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409


# --- multipart ---


def test_second_complete_multipart_upload_returns_the_completed_object(s3: Any) -> None:
    uid = s3.create_multipart_upload(Bucket="compat", Key="twice")["UploadId"]
    part = s3.upload_part(Bucket="compat", Key="twice", UploadId=uid, PartNumber=1, Body=b"data")
    parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    first = s3.complete_multipart_upload(
        Bucket="compat", Key="twice", UploadId=uid, MultipartUpload=parts
    )
    again = s3.complete_multipart_upload(
        Bucket="compat", Key="twice", UploadId=uid, MultipartUpload=parts
    )
    assert again["ETag"] == first["ETag"] and again["Key"] == "twice"
    assert s3.get_object(Bucket="compat", Key="twice")["Body"].read() == b"data"
    with pytest.raises(ClientError) as err:  # the upload itself is gone
        s3.list_parts(Bucket="compat", Key="twice", UploadId=uid)
    assert code(err) == "NoSuchUpload"
    with pytest.raises(ClientError) as err:  # an upload that never was
        s3.complete_multipart_upload(
            Bucket="compat", Key="twice", UploadId="nope", MultipartUpload=parts
        )
    assert code(err) == "NoSuchUpload"


def test_repeated_part_number_in_complete_takes_the_last_etag(s3: Any) -> None:
    """A part re-sent while its first send was still running (ceph's s3-tests
    test_multipart_resend_first_finishes_last): the client lists part 1 twice, and S3 assembles
    part 1 once, from the ETag listed last."""
    uid = s3.create_multipart_upload(Bucket="compat", Key="resent")["UploadId"]
    b = s3.upload_part(Bucket="compat", Key="resent", UploadId=uid, PartNumber=1, Body=b"B" * 8)
    a = s3.upload_part(Bucket="compat", Key="resent", UploadId=uid, PartNumber=1, Body=b"A" * 8)
    parts = [{"PartNumber": 1, "ETag": b["ETag"]}, {"PartNumber": 1, "ETag": a["ETag"]}]
    s3.complete_multipart_upload(
        Bucket="compat", Key="resent", UploadId=uid, MultipartUpload={"Parts": parts}
    )
    got = s3.get_object(Bucket="compat", Key="resent")
    assert got["Body"].read() == b"A" * 8 and got["ETag"].endswith('-1"')
    # descending numbers are still out of order
    uid = s3.create_multipart_upload(Bucket="compat", Key="resent")["UploadId"]
    p = {
        n: s3.upload_part(
            Bucket="compat", Key="resent", UploadId=uid, PartNumber=n, Body=b"x" * (5 * MiB)
        )["ETag"]
        for n in (1, 2)
    }
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="compat",
            Key="resent",
            UploadId=uid,
            MultipartUpload={
                "Parts": [{"PartNumber": 2, "ETag": p[2]}, {"PartNumber": 1, "ETag": p[1]}]
            },
        )
    assert code(err) == "InvalidPartOrder"


def test_sigv2_virtual_host_request_signs_the_bucket(s3: Any, running: Running) -> None:
    """The V2 resource names the bucket whatever the addressing: /bucket/key, /bucket/."""
    s3.put_object(Bucket="compat", Key="vh/k", Body=b"virtual v2")
    host = f"compat.localhost:{running.port}"
    for target, auth_path, want in [
        ("/vh/k", "/compat/vh/k", b"virtual v2"),
        ("/?prefix=vh/", "/compat/", b"<Key>vh/k</Key>"),
    ]:
        aws = AWSRequest(method="GET", url=f"http://{host}{target}", auth_path=auth_path)
        HmacV1Auth(Credentials(AK, SK)).add_auth(aws)
        status, body, _ = send(running, "GET", target, {**aws.headers, "Host": host})
        assert status == 200 and want in body
        # the same signature for another bucket's host is refused
        status, _, _ = send(
            running, "GET", target, {**aws.headers, "Host": f"other.localhost:{running.port}"}
        )
        assert status == 403


def test_get_object_attributes(s3: Any) -> None:
    s3.put_object(Bucket="compat", Key="attrs", Body=b"12345", ChecksumAlgorithm="SHA256")
    got = s3.get_object_attributes(
        Bucket="compat",
        Key="attrs",
        ObjectAttributes=["ETag", "ObjectSize", "StorageClass", "Checksum"],
    )
    head = s3.head_object(Bucket="compat", Key="attrs", ChecksumMode="ENABLED")
    assert got["ETag"] == head["ETag"].strip('"') and got["ObjectSize"] == 5
    assert got["StorageClass"] == "STANDARD"
    assert got["Checksum"]["ChecksumSHA256"] == head["ChecksumSHA256"]
    uid = s3.create_multipart_upload(Bucket="compat", Key="attrs-mp")["UploadId"]
    parts = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(
                Bucket="compat", Key="attrs-mp", UploadId=uid, PartNumber=n, Body=body
            )["ETag"],
        }
        for n, body in ((1, b"a" * (5 * MiB)), (2, b"b"))
    ]
    s3.complete_multipart_upload(
        Bucket="compat", Key="attrs-mp", UploadId=uid, MultipartUpload={"Parts": parts}
    )
    got = s3.get_object_attributes(
        Bucket="compat", Key="attrs-mp", ObjectAttributes=["ObjectParts"]
    )
    assert got["ObjectParts"]["TotalPartsCount"] == 2
    with pytest.raises(ClientError) as err:
        s3.get_object_attributes(Bucket="compat", Key="attrs", ObjectAttributes=["Nope"])
    assert code(err) == "InvalidArgument"


def test_get_object_attributes_object_parts_lists_each_parts_checksum(
    s3: Any, running: Running
) -> None:
    """GetObjectAttributes(ObjectParts) of a multipart object uploaded with a checksum algorithm:
    each Part carries the checksum its part was uploaded with (ChecksumCRC32C here), as AWS
    lists them, on every page of MaxParts/PartNumberMarker; the object's own Checksum is the
    composite."""
    import google_crc32c

    key = "attrs-crc32c"
    uid = s3.create_multipart_upload(Bucket="compat", Key=key, ChecksumAlgorithm="CRC32C")[
        "UploadId"
    ]
    datas = [b"A" * (5 * MiB), b"B" * (5 * MiB), b"C" * 100]
    sums = [base64.b64encode(google_crc32c.value(d).to_bytes(4, "big")).decode() for d in datas]
    parts = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(
                Bucket="compat",
                Key=key,
                UploadId=uid,
                PartNumber=n,
                Body=data,
                ChecksumCRC32C=crc,
            )["ETag"],
            "ChecksumCRC32C": crc,
        }
        for n, (data, crc) in enumerate(zip(datas, sums, strict=True), 1)
    ]
    done = s3.complete_multipart_upload(
        Bucket="compat", Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
    )
    got = s3.get_object_attributes(
        Bucket="compat", Key=key, ObjectAttributes=["ObjectParts", "Checksum"]
    )
    assert got["Checksum"]["ChecksumCRC32C"] == done["ChecksumCRC32C"]
    assert got["ObjectParts"]["TotalPartsCount"] == 3
    assert [
        (p["PartNumber"], p["Size"], p["ChecksumCRC32C"]) for p in got["ObjectParts"]["Parts"]
    ] == [(n, len(data), crc) for n, (data, crc) in enumerate(zip(datas, sums, strict=True), 1)]
    page = s3.get_object_attributes(
        Bucket="compat", Key=key, ObjectAttributes=["ObjectParts"], MaxParts=1, PartNumberMarker=1
    )["ObjectParts"]
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    assert [(p["PartNumber"], p["ChecksumCRC32C"]) for p in page["Parts"]] == [(2, sums[1])]
    # parts uploaded without checksums (botocore adds a CRC32 unless told not to) list none
    bare = client(running, request_checksum_calculation="when_required")
    uid = bare.create_multipart_upload(Bucket="compat", Key="attrs-bare")["UploadId"]
    etag = bare.upload_part(
        Bucket="compat", Key="attrs-bare", UploadId=uid, PartNumber=1, Body=b"bare"
    )["ETag"]
    bare.complete_multipart_upload(
        Bucket="compat",
        Key="attrs-bare",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    (part,) = bare.get_object_attributes(
        Bucket="compat", Key="attrs-bare", ObjectAttributes=["ObjectParts"]
    )["ObjectParts"]["Parts"]
    assert part == {"PartNumber": 1, "Size": 4}


def test_upload_part_copy_range_outside_the_source_is_invalid_range(s3: Any) -> None:
    s3.put_object(Bucket="compat", Key="five", Body=b"12345")
    uid = s3.create_multipart_upload(Bucket="compat", Key="copied")["UploadId"]
    with pytest.raises(ClientError) as err:
        s3.upload_part_copy(
            Bucket="compat",
            Key="copied",
            UploadId=uid,
            PartNumber=1,
            CopySource={"Bucket": "compat", "Key": "five"},
            CopySourceRange="bytes=0-21",
        )
    assert code(err) == "InvalidRange"
    s3.abort_multipart_upload(Bucket="compat", Key="copied", UploadId=uid)


def test_get_object_part_number_returns_that_part(s3: Any) -> None:
    sizes = [5 * MiB, 5 * MiB, 1000]
    data = b"".join(bytes([65 + i]) * size for i, size in enumerate(sizes))
    uid = s3.create_multipart_upload(Bucket="compat", Key="by-part")["UploadId"]
    with pytest.raises(ClientError) as err:  # not an object until completed
        s3.get_object(Bucket="compat", Key="by-part", PartNumber=1)
    assert code(err) == "NoSuchKey"
    parts, at = [], 0
    for n, size in enumerate(sizes, 1):
        body = data[at : at + size]
        at += size
        etag = s3.upload_part(
            Bucket="compat", Key="by-part", UploadId=uid, PartNumber=n, Body=body
        )["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    done = s3.complete_multipart_upload(
        Bucket="compat", Key="by-part", UploadId=uid, MultipartUpload={"Parts": parts}
    )
    at = 0
    for n, size in enumerate(sizes, 1):
        head = s3.head_object(Bucket="compat", Key="by-part", PartNumber=n)
        got = s3.get_object(Bucket="compat", Key="by-part", PartNumber=n)
        assert head["PartsCount"] == got["PartsCount"] == 3 and got["ETag"] == done["ETag"]
        assert head["ContentLength"] == got["ContentLength"] == size
        assert got["Body"].read() == data[at : at + size]
        at += size
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="compat", Key="by-part", PartNumber=4)
    assert code(err) == "InvalidPart"
    attrs = s3.get_object_attributes(
        Bucket="compat",
        Key="by-part",
        ObjectAttributes=["ObjectParts"],
        MaxParts=1,
        PartNumberMarker=1,
    )["ObjectParts"]
    assert attrs["TotalPartsCount"] == 3 and attrs["IsTruncated"]
    assert attrs["NextPartNumberMarker"] == 2
    assert [(p["PartNumber"], p["Size"]) for p in attrs["Parts"]] == [(2, 5 * MiB)]
    # an object stored whole is its own part 1
    s3.put_object(Bucket="compat", Key="whole", Body=b"body")
    assert s3.get_object(Bucket="compat", Key="whole", PartNumber=1)["Body"].read() == b"body"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="compat", Key="whole", PartNumber=2)
    assert code(err) == "InvalidPart"


def test_request_documents_are_checked_against_their_signed_payload_hash(
    s3: Any, running: Running
) -> None:
    """S3 verifies a DeleteObjects or CompleteMultipartUpload document against the signed
    ``x-amz-content-sha256`` like any body: a man in the middle cannot swap the keys to delete
    (XAmzContentSHA256Mismatch, nothing deleted)."""
    s3.put_object(Bucket="compat", Key="keep-me", Body=b"precious")
    signed = b"<Delete><Object><Key>other</Key></Object></Delete>"
    swapped = b"<Delete><Object><Key>keep-me</Key></Object></Delete>"
    headers = v4_headers(running, "POST", "/compat?delete", signed)
    status, body, _ = send(running, "POST", "/compat?delete", headers, swapped)
    assert status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in body
    assert s3.get_object(Bucket="compat", Key="keep-me")["Body"].read() == b"precious"
    # a document longer than any S3 document is refused before it is read
    headers = v4_headers(running, "POST", "/compat?delete", b"x")
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        conn.putrequest("POST", "/compat?delete", skip_host=True, skip_accept_encoding=True)
        headers.setdefault("Host", f"127.0.0.1:{running.port}")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(3 * MiB))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 400 and b"<Code>EntityTooLarge</Code>" in resp.read()
    finally:
        conn.close()


# --- conditional writes ---


def _multipart(s3: Any, key: str, data: bytes) -> tuple[str, dict[str, Any]]:
    uid = s3.create_multipart_upload(Bucket="compat", Key=key)["UploadId"]
    etag = s3.upload_part(Bucket="compat", Key=key, UploadId=uid, PartNumber=1, Body=data)["ETag"]
    return uid, {"Parts": [{"PartNumber": 1, "ETag": etag}]}


def test_complete_multipart_upload_if_none_match_and_if_match_as_put_object(s3: Any) -> None:
    """CompleteMultipartUpload takes If-None-Match: * and If-Match like PutObject: 412
    PreconditionFailed when the object exists (or has another ETag), 404 NoSuchKey for If-Match
    on no object; a refused completion changes nothing and its upload can still complete."""
    key = "cond-mp"
    uid, parts = _multipart(s3, key, b"first")
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="compat", Key=key, UploadId=uid, MultipartUpload=parts, IfMatch="*"
        )
    assert code(err) == "NoSuchKey"
    first = s3.complete_multipart_upload(
        Bucket="compat", Key=key, UploadId=uid, MultipartUpload=parts, IfNoneMatch="*"
    )
    uid, parts = _multipart(s3, key, b"second")
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(ClientError) as err:
            s3.complete_multipart_upload(
                Bucket="compat", Key=key, UploadId=uid, MultipartUpload=parts, **condition
            )
        assert code(err) == "PreconditionFailed"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket="compat", Key=key)["Body"].read() == b"first"
    assert [
        p["PartNumber"] for p in s3.list_parts(Bucket="compat", Key=key, UploadId=uid)["Parts"]
    ] == [1]
    second = s3.complete_multipart_upload(
        Bucket="compat", Key=key, UploadId=uid, MultipartUpload=parts, IfMatch=first["ETag"]
    )
    assert s3.get_object(Bucket="compat", Key=key)["Body"].read() == b"second"
    # a retried completion returns the completed object, whatever its condition says now
    again = s3.complete_multipart_upload(
        Bucket="compat", Key=key, UploadId=uid, MultipartUpload=parts, IfMatch=first["ETag"]
    )
    assert again["ETag"] == second["ETag"]


def test_copy_object_if_none_match_and_if_match_on_the_destination_as_put_object(s3: Any) -> None:
    """CopyObject takes the conditional-write headers for its destination as PutObject does
    (AWS: If-None-Match: * copies only when no object has the destination key, If-Match only
    onto the object with that ETag): 412 PreconditionFailed, 404 NoSuchKey for If-Match on no
    object; a refused copy changes nothing at the destination."""
    src = s3.put_object(Bucket="compat", Key="cond-copy-src", Body=b"source")
    dst = {"Bucket": "compat", "Key": "cond-copy-dst", "CopySource": "compat/cond-copy-src"}
    with pytest.raises(ClientError) as err:
        s3.copy_object(**dst, IfMatch=src["ETag"])
    assert code(err) == "NoSuchKey"
    with pytest.raises(ClientError):
        s3.head_object(Bucket="compat", Key="cond-copy-dst")
    s3.copy_object(**dst, IfNoneMatch="*")
    assert s3.get_object(Bucket="compat", Key="cond-copy-dst")["Body"].read() == b"source"
    old = s3.put_object(Bucket="compat", Key="cond-copy-dst", Body=b"old", Metadata={"m": "old"})
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(ClientError) as err:
            s3.copy_object(**dst, **condition)
        assert code(err) == "PreconditionFailed"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        got = s3.get_object(Bucket="compat", Key="cond-copy-dst")
        assert (got["Body"].read(), got["ETag"], got["Metadata"]) == (
            b"old",
            old["ETag"],
            {"m": "old"},
        )
    copied = s3.copy_object(**dst, IfMatch=old["ETag"])
    assert copied["CopyObjectResult"]["ETag"] == src["ETag"]
    assert s3.get_object(Bucket="compat", Key="cond-copy-dst")["Body"].read() == b"source"


def test_put_object_if_none_match_losing_a_race_mid_upload_is_409_conditional_request_conflict(
    s3: Any, running: Running
) -> None:
    """A conditional PUT whose condition held when it began but not when it commits (another
    write came in while its body was on the way) gets 409 ConditionalRequestConflict, as S3
    answers a conflicting operation; the other write stays."""
    # the first 32 MiB can only all leave once the server reads the body (loopback buffers are
    # a few MiB), and it reads the body only after the condition checked: no timing involved
    key, data = "cond-race", b"x" * (33 * MiB)
    headers = v4_headers(running, "PUT", f"/compat/{key}", data, **{"If-None-Match": "*"})
    headers["Host"] = f"127.0.0.1:{running.port}"
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        conn.putrequest("PUT", f"/compat/{key}", skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data[: 32 * MiB])
        s3.put_object(Bucket="compat", Key=key, Body=b"won the race")
        conn.send(data[32 * MiB :])
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 409 and b"<Code>ConditionalRequestConflict</Code>" in body
    assert s3.get_object(Bucket="compat", Key=key)["Body"].read() == b"won the race"
    # the same PUT again is refused before its body: the object exists
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="compat", Key=key, Body=data, IfNoneMatch="*")
    assert code(err) == "PreconditionFailed"


# --- checksums ---


def test_crc32c_checksum_is_verified_stored_and_returned_with_checksum_mode(s3: Any) -> None:
    """x-amz-checksum-crc32c (newer AWS SDKs' default algorithm) as S3: verified before the
    object is stored, returned by HEAD/GET with ChecksumMode=ENABLED; a wrong one is BadDigest
    and stores nothing."""
    import google_crc32c

    data = b"123456789" * 100_000
    expected = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
    # the value given (botocore computes CRC32C only with its optional awscrt)
    put = s3.put_object(Bucket="compat", Key="crc32c", Body=data, ChecksumCRC32C=expected)
    assert put["ChecksumCRC32C"] == expected
    assert (
        s3.head_object(Bucket="compat", Key="crc32c", ChecksumMode="ENABLED")["ChecksumCRC32C"]
        == expected
    )
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="compat", Key="crc32c-bad", Body=data, ChecksumCRC32C="AAAAAA==")
    assert code(err) == "BadDigest"
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket="compat", Key="crc32c-bad")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # the standard check value of CRC-32C
    from tunnelmesh_s3.body import CHECKSUM_ALGORITHMS

    hasher = CHECKSUM_ALGORITHMS["crc32c"]()
    hasher.update(b"123456789")
    assert hasher.digest().hex() == "e3069283"


def test_multipart_upload_with_a_checksum_algorithm_gets_s3s_composite_checksum(s3: Any) -> None:
    """CreateMultipartUpload(ChecksumAlgorithm=SHA256): each part keeps its SHA-256 (ListParts
    shows it), and the object's checksum is the SHA-256 of the parts' digests, ``-<count>``,
    returned by CompleteMultipartUpload (also when retried) and by HEAD with ChecksumMode; a
    wrong checksum for the whole, or a part without its checksum, is BadDigest and completes
    nothing."""
    key = "mp-sha256"
    created = s3.create_multipart_upload(Bucket="compat", Key=key, ChecksumAlgorithm="SHA256")
    assert created["ChecksumAlgorithm"] == "SHA256"
    uid = created["UploadId"]
    datas = [b"A" * (5 * MiB), b"B" * 100]
    digests = [hashlib.sha256(d).digest() for d in datas]
    parts = []
    for n, (data, digest) in enumerate(zip(datas, digests, strict=True), 1):
        b64 = base64.b64encode(digest).decode()
        got = s3.upload_part(
            Bucket="compat", Key=key, UploadId=uid, PartNumber=n, Body=data, ChecksumSHA256=b64
        )
        parts.append({"PartNumber": n, "ETag": got["ETag"], "ChecksumSHA256": b64})
    listed = s3.list_parts(Bucket="compat", Key=key, UploadId=uid)["Parts"]
    assert [p["ChecksumSHA256"] for p in listed] == [p["ChecksumSHA256"] for p in parts]
    composite = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode() + "-2"
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="compat",
            Key=key,
            UploadId=uid,
            MultipartUpload={"Parts": parts},
            ChecksumSHA256="bad",
        )
    assert code(err) == "BadDigest"
    done = s3.complete_multipart_upload(
        Bucket="compat",
        Key=key,
        UploadId=uid,
        MultipartUpload={"Parts": parts},
        ChecksumSHA256=composite,
    )
    assert done["ChecksumSHA256"] == composite
    again = s3.complete_multipart_upload(
        Bucket="compat", Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
    )
    assert again["ChecksumSHA256"] == composite and again["ETag"] == done["ETag"]
    assert "ChecksumSHA256" not in s3.head_object(Bucket="compat", Key=key)
    head = s3.head_object(Bucket="compat", Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == composite
    # a part uploaded without the upload's checksum cannot complete it
    uid = s3.create_multipart_upload(Bucket="compat", Key="mp-nosum", ChecksumAlgorithm="SHA256")[
        "UploadId"
    ]
    etag = s3.upload_part(
        Bucket="compat",
        Key="mp-nosum",
        UploadId=uid,
        PartNumber=1,
        Body=b"x",
        ChecksumAlgorithm="CRC32",
    )["ETag"]
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="compat",
            Key="mp-nosum",
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        )
    assert code(err) == "BadDigest"
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket="compat", Key="mp-nosum")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert len(s3.list_parts(Bucket="compat", Key="mp-nosum", UploadId=uid)["Parts"]) == 1
