"""boto3 against the standalone server over loopback: the S3 API as a real SDK uses it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import io
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from s3kit import Server, boto_client, code, issue, serve
from tunnelmesh.storage.conformance import body
from tunnelmesh_s3.server import Running, ServerThread

from tunnelmesh_s3 import sigv4

AK, SK = "AKADMINTEST", "admin-secret-for-tests"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory, AK, SK)


def client(running: Running, ak: str = AK, sk: str = SK, **config: Any) -> Any:
    return boto_client(running, ak, sk, **config)


@pytest.fixture(scope="module")
def s3(server: Server) -> Any:
    return client(server[1])


def test_buckets(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt-a")
    s3.create_bucket(Bucket="bkt-b")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert {"bkt-a", "bkt-b"} <= set(names)
    s3.head_bucket(Bucket="bkt-a")
    assert s3.get_bucket_location(Bucket="bkt-a")["LocationConstraint"] is None
    s3.create_bucket(Bucket="bkt-a")  # yours already: 200 in us-east-1 (test_s3_compat)
    s3.put_object(Bucket="bkt-b", Key="x", Body=b"1")
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket="bkt-b")
    assert code(err) == "BucketNotEmpty"
    s3.delete_object(Bucket="bkt-b", Key="x")
    s3.delete_bucket(Bucket="bkt-b")
    with pytest.raises(ClientError) as err:
        s3.head_bucket(Bucket="bkt-b")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as err:
        s3.list_objects_v2(Bucket="bkt-b")
    assert code(err) == "NoSuchBucket"


def test_objects_metadata_and_digests(s3: Any) -> None:
    s3.create_bucket(Bucket="objs")
    data = b"hello world" * 1000
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    put = s3.put_object(
        Bucket="objs",
        Key="dir/ünï cødé+sign.txt",
        Body=data,
        ContentType="text/plain",
        Metadata={"colour": "blue"},
        CacheControl="no-cache",
        ContentMD5=md5,
    )
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket="objs", Key="dir/ünï cødé+sign.txt")
    assert got["Body"].read() == data
    assert (got["ContentType"], got["Metadata"], got["CacheControl"]) == (
        "text/plain",
        {"colour": "blue"},
        "no-cache",
    )
    head = s3.head_object(Bucket="objs", Key="dir/ünï cødé+sign.txt")
    assert head["ContentLength"] == len(data)
    # checksums: botocore sends CRC32 by default; SHA256 on request; both come back on demand
    s3.put_object(Bucket="objs", Key="sha", Body=data, ChecksumAlgorithm="SHA256")
    head = s3.head_object(Bucket="objs", Key="sha", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    got = s3.get_object(Bucket="objs", Key="sha", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    # a wrong Content-MD5 is refused and stores nothing
    with pytest.raises(ClientError) as err:
        s3.put_object(
            Bucket="objs", Key="bad-md5", Body=data, ContentMD5=base64.b64encode(b"0" * 16).decode()
        )
    assert code(err) == "BadDigest"
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket="objs", Key="bad-md5")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="objs", Key="missing")
    assert code(err) == "NoSuchKey"
    # empty object
    s3.put_object(Bucket="objs", Key="empty", Body=b"")
    assert s3.get_object(Bucket="objs", Key="empty")["Body"].read() == b""


def test_ranges_and_conditions(s3: Any) -> None:
    s3.create_bucket(Bucket="cond")
    data = bytes(range(256)) * 4
    etag = s3.put_object(Bucket="cond", Key="k", Body=data)["ETag"]
    for spec, want in (
        ("bytes=2-5", data[2:6]),
        ("bytes=-3", data[-3:]),
        ("bytes=1000-", data[1000:]),
        ("bytes=10-99999", data[10:]),
    ):
        got = s3.get_object(Bucket="cond", Key="k", Range=spec)
        assert got["Body"].read() == want, spec
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith(f"/{len(data)}")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="cond", Key="k", Range="bytes=5000-")
    assert code(err) == "InvalidRange"
    assert s3.get_object(Bucket="cond", Key="k", IfMatch=etag)["Body"].read() == data
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="cond", Key="k", IfMatch='"0000"')
    assert code(err) == "PreconditionFailed"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="cond", Key="k", IfNoneMatch=etag)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    future = time.time() + 3600
    past = time.time() - 3600
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="cond", Key="k", IfModifiedSince=future)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    assert s3.get_object(Bucket="cond", Key="k", IfModifiedSince=past)["Body"].read() == data
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="cond", Key="k", IfUnmodifiedSince=past)
    assert code(err) == "PreconditionFailed"
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket="cond", Key="k", IfNoneMatch=etag)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    # conditional write: create only if absent
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="cond", Key="k", Body=b"other", IfNoneMatch="*")
    assert code(err) == "PreconditionFailed"
    s3.put_object(Bucket="cond", Key="new", Body=b"first", IfNoneMatch="*")
    assert s3.get_object(Bucket="cond", Key="k")["Body"].read() == data


def test_copy(s3: Any) -> None:
    s3.create_bucket(Bucket="copy-src")
    s3.create_bucket(Bucket="copy-dst")
    src = s3.put_object(Bucket="copy-src", Key="a", Body=b"payload", Metadata={"m": "1"})
    res = s3.copy_object(Bucket="copy-dst", Key="b", CopySource={"Bucket": "copy-src", "Key": "a"})
    assert res["CopyObjectResult"]["ETag"] == src["ETag"]
    assert s3.head_object(Bucket="copy-dst", Key="b")["Metadata"] == {"m": "1"}
    s3.copy_object(
        Bucket="copy-dst",
        Key="b",
        CopySource="copy-src/a",
        Metadata={"m": "2"},
        MetadataDirective="REPLACE",
    )
    assert s3.head_object(Bucket="copy-dst", Key="b")["Metadata"] == {"m": "2"}
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket="copy-src", Key="a", CopySource="copy-src/a")
    assert code(err) == "InvalidRequest"
    with pytest.raises(ClientError) as err:
        s3.copy_object(
            Bucket="copy-dst", Key="c", CopySource="copy-src/a", CopySourceIfMatch='"nope"'
        )
    assert code(err) == "PreconditionFailed"


def test_delete_objects(s3: Any) -> None:
    s3.create_bucket(Bucket="multi-del")
    for i in range(5):
        s3.put_object(Bucket="multi-del", Key=f"k{i}", Body=b"x")
    res = s3.delete_objects(
        Bucket="multi-del",
        Delete={
            "Objects": [{"Key": f"k{i}"} for i in range(3)] + [{"Key": "absent"}, {"Key": "a/../b"}]
        },
    )
    assert sorted(d["Key"] for d in res["Deleted"]) == ["absent", "k0", "k1", "k2"]
    assert [(e["Key"], e["Code"]) for e in res["Errors"]] == [("a/../b", "InvalidArgument")]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="multi-del")["Contents"]] == ["k3", "k4"]


def test_listing_2500_keys_paginated(s3: Any, server: Server) -> None:
    s3.create_bucket(Bucket="many")
    keys = [f"dir{i % 3}/key-{i:05d}" for i in range(2500)]
    # 100 through boto3 from 16 threads, the rest straight into the store (botocore's CPU
    # cost per request would make 2,500 PUTs the slowest test of the suite)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket="many", Key=k, Body=k.encode()), keys[:100]))
    thread, running = server

    async def fill() -> None:
        sem = asyncio.Semaphore(64)

        async def one(key: str) -> None:
            async with sem:
                await running.storage.put_object("many", key, body(key.encode()))

        await asyncio.gather(*(one(k) for k in keys[100:]))

    asyncio.run_coroutine_threadsafe(fill(), thread.loop).result(120)
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="many"))
    assert len(pages) == 3
    assert [o["Key"] for p in pages for o in p["Contents"]] == sorted(keys)
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket="many", PaginationConfig={"PageSize": 700}
        )
    )
    assert [len(p["Contents"]) for p in pages] == [700, 700, 700, 400]
    v1 = list(s3.get_paginator("list_objects").paginate(Bucket="many", Prefix="dir1/"))
    assert [o["Key"] for p in v1 for o in p["Contents"]] == sorted(
        k for k in keys if k.startswith("dir1/")
    )
    res = s3.list_objects_v2(Bucket="many", Delimiter="/")
    assert [p["Prefix"] for p in res["CommonPrefixes"]] == ["dir0/", "dir1/", "dir2/"]
    assert "Contents" not in res
    res = s3.list_objects_v2(Bucket="many", Prefix="dir2/key-0249", StartAfter="dir2/key-02491")
    assert [o["Key"] for o in res["Contents"]] == [
        "dir2/key-02492",
        "dir2/key-02495",
        "dir2/key-02498",
    ]


def test_multipart_low_level(s3: Any) -> None:
    s3.create_bucket(Bucket="mpu")
    parts_data = [b"a" * 5 * MiB, b"b" * 5 * MiB, b"tail"]
    up = s3.create_multipart_upload(Bucket="mpu", Key="big", ContentType="x/y", Metadata={"k": "v"})
    uid = up["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="mpu")["Uploads"]] == [uid]
    etags = [
        s3.upload_part(Bucket="mpu", Key="big", UploadId=uid, PartNumber=n, Body=d)["ETag"]
        for n, d in enumerate(parts_data, 1)
    ]
    listed = s3.list_parts(Bucket="mpu", Key="big", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * MiB), (2, 5 * MiB), (3, 4)]
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="mpu",
            Key="big",
            UploadId=uid,
            MultipartUpload={
                "Parts": [{"PartNumber": 3, "ETag": etags[2]}, {"PartNumber": 1, "ETag": etags[0]}]
            },
        )
    assert code(err) == "InvalidPartOrder"
    done = s3.complete_multipart_upload(
        Bucket="mpu",
        Key="big",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    digest = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest()
    assert done["ETag"] == f'"{digest}-3"'
    head = s3.head_object(Bucket="mpu", Key="big")
    assert (head["ContentLength"], head["ContentType"], head["Metadata"]) == (
        10 * MiB + 4,
        "x/y",
        {"k": "v"},
    )
    assert (
        s3.get_object(Bucket="mpu", Key="big", Range=f"bytes={5 * MiB - 2}-{5 * MiB + 1}")[
            "Body"
        ].read()
        == b"aabb"
    )
    # upload part copy, then abort
    up2 = s3.create_multipart_upload(Bucket="mpu", Key="copy")["UploadId"]
    cp = s3.upload_part_copy(
        Bucket="mpu",
        Key="copy",
        UploadId=up2,
        PartNumber=1,
        CopySource="mpu/big",
        CopySourceRange="bytes=0-9",
    )
    assert cp["CopyPartResult"]["ETag"] == f'"{hashlib.md5(b"a" * 10).hexdigest()}"'
    s3.abort_multipart_upload(Bucket="mpu", Key="copy", UploadId=up2)
    with pytest.raises(ClientError) as err:
        s3.list_parts(Bucket="mpu", Key="copy", UploadId=up2)
    assert code(err) == "NoSuchUpload"


def test_transfer_manager_multipart(s3: Any) -> None:
    """s3transfer: parallel 5 MiB parts up, parallel ranged GETs down."""
    s3.create_bucket(Bucket="xfer")
    data = hashlib.sha256(b"seed").digest() * (13 * MiB // 32)
    cfg = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4
    )
    s3.upload_fileobj(io.BytesIO(data), "xfer", "obj", Config=cfg)
    assert s3.head_object(Bucket="xfer", Key="obj")["ETag"].endswith('-3"')
    out = io.BytesIO()
    s3.download_fileobj("xfer", "obj", out, Config=cfg)
    assert out.getvalue() == data


def test_presigned_get_and_put(s3: Any, server: Server) -> None:
    s3.create_bucket(Bucket="presign")
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "presign", "Key": "up load"}, ExpiresIn=300
    )
    req = urllib.request.Request(url, data=b"via presigned put", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    url = s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": "presign", "Key": "up load", "ResponseContentType": "text/x-test"},
        ExpiresIn=300,
    )
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"via presigned put"
        assert resp.headers["Content-Type"] == "text/x-test"
    # tampered: a different key under the same signature
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.replace("up%20load", "other"), timeout=10)
    assert err.value.code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in err.value.read()
    # expired: signed two hours ago for one hour
    running = server[1]
    query = sigv4.presign(
        "GET",
        f"127.0.0.1:{running.port}",
        "/presign/up%20load",
        access_key=AK,
        secret=SK,
        region="us-east-1",
        now=time.time() - 7200,
        expires=3600,
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{running.endpoint}/presign/up%20load?{query}", timeout=10)
    body = err.value.read()
    assert err.value.code == 403 and b"<Code>AccessDenied</Code>" in body and b"expired" in body


def test_wrong_credentials_change_nothing(s3: Any, server: Server) -> None:
    s3.create_bucket(Bucket="authz")
    wrong_secret = client(server[1], AK, "not-the-secret")
    with pytest.raises(ClientError) as err:
        wrong_secret.put_object(Bucket="authz", Key="k", Body=b"x")
    assert code(err) == "SignatureDoesNotMatch"
    unknown = client(server[1], "AKUNKNOWN", SK)
    with pytest.raises(ClientError) as err:
        unknown.create_bucket(Bucket="authz-2")
    assert code(err) == "InvalidAccessKeyId"
    assert s3.list_objects_v2(Bucket="authz")["KeyCount"] == 0
    assert "authz-2" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_dot_dot_keys_are_refused(s3: Any, server: Server) -> None:
    s3.create_bucket(Bucket="dots")
    s3.create_bucket(Bucket="victim")
    s3.put_object(Bucket="victim", Key="secret", Body=b"keep")
    for key in ("../victim/secret", "a/../../victim/secret", "a/./b", ".."):
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="dots", Key=key, Body=b"evil")
        assert code(err) == "InvalidArgument", key
    # raw requests with dot segments, percent-encoded or not, signed for exactly that path
    running = server[1]
    for path in ("/dots/../victim/secret", "/dots/a/%2E%2E/%2e%2e/victim/secret"):
        status, body = raw_signed(running, "PUT", path, b"evil")
        assert status == 400 and b"<Code>InvalidArgument</Code>" in body, (path, body)
    assert s3.get_object(Bucket="victim", Key="secret")["Body"].read() == b"keep"
    assert s3.list_objects_v2(Bucket="dots")["KeyCount"] == 0


def raw_signed(
    running: Running,
    method: str,
    path: str,
    body: bytes = b"",
    host: str | None = None,
    query: str = "",
) -> tuple[int, bytes]:
    """A request signed by botocore's signer and sent as-is (no client-side path cleanup)."""
    host = host or f"127.0.0.1:{running.port}"
    aws = AWSRequest(
        method=method, url=f"http://{host}{path}" + (f"?{query}" if query else ""), data=body
    )
    aws.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(aws)
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        conn.putrequest(
            method, path + (f"?{query}" if query else ""), skip_host=True, skip_accept_encoding=True
        )
        conn.putheader("Host", host)
        for name, value in aws.headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_virtual_host_addressing(s3: Any, server: Server) -> None:
    s3.create_bucket(Bucket="vhost")
    running = server[1]
    status, _ = raw_signed(
        running, "PUT", "/dir/file.txt", b"virtual", host=f"vhost.localhost:{running.port}"
    )
    assert status == 200
    assert s3.get_object(Bucket="vhost", Key="dir/file.txt")["Body"].read() == b"virtual"
    status, body = raw_signed(
        running, "GET", "/", host=f"vhost.localhost:{running.port}", query="list-type=2"
    )
    assert status == 200 and b"<Key>dir/file.txt</Key>" in body


def test_streaming_signed_upload(s3: Any, server: Server) -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD framed by hand, then one chunk tampered."""
    s3.create_bucket(Bucket="chunked")
    running = server[1]
    payload = bytes(range(256)) * 1000  # 256000 bytes in 64 KiB chunks

    def send(key: str, tamper: bool) -> tuple[int, bytes]:
        path = f"/chunked/{key}"
        headers = {
            "host": f"127.0.0.1:{running.port}",
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(payload)),
        }
        seed = sigv4.sign_headers(
            "PUT",
            path,
            "",
            headers,
            access_key=AK,
            secret=SK,
            region="us-east-1",
            now=time.time(),
            payload=sigv4.STREAMING,
        )
        signer = sigv4.ChunkSigner(
            secret=SK, region="us-east-1", amz=headers["x-amz-date"], seed=seed
        )
        body = b"".join(signer.chunk(payload[i : i + 65536]) for i in range(0, len(payload), 65536))
        body += signer.chunk(b"")
        if tamper:
            body = body.replace(payload[70000:70010], b"X" * 10, 1)
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        try:
            conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    assert send("good", tamper=False)[0] == 200
    assert s3.get_object(Bucket="chunked", Key="good")["Body"].read() == payload
    status, body = send("bad", tamper=True)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    with pytest.raises(ClientError):
        s3.head_object(Bucket="chunked", Key="bad")


def test_peer_grants(s3: Any, server: Server) -> None:
    s3.create_bucket(Bucket="admins-only")
    s3.put_object(Bucket="admins-only", Key="k", Body=b"private")
    alice = client(server[1], *issue(server, "alice"))
    bob = client(server[1], *issue(server, "bob"))
    assert "admins-only" not in [b["Name"] for b in alice.list_buckets()["Buckets"]]
    for call in (
        lambda: alice.get_object(Bucket="admins-only", Key="k"),
        lambda: alice.put_object(Bucket="admins-only", Key="k", Body=b"overwrite"),
        lambda: alice.delete_object(Bucket="admins-only", Key="k"),
        lambda: alice.list_objects_v2(Bucket="admins-only"),
        lambda: alice.delete_bucket(Bucket="admins-only"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == "AccessDenied"
    assert s3.get_object(Bucket="admins-only", Key="k")["Body"].read() == b"private"
    # alice owns what she creates; grants bob read through the admin API's ACL
    alice.create_bucket(Bucket="alices")
    alice.put_object(Bucket="alices", Key="doc", Body=b"hi bob")
    with pytest.raises(ClientError) as err:
        bob.get_object(Bucket="alices", Key="doc")
    assert code(err) == "AccessDenied"
    thread, running = server
    acl = running.authorizer.acl("alices")
    assert acl is not None and acl.owner == "alice"
    acl.read.append("bob")
    asyncio.run_coroutine_threadsafe(running.authorizer.set_acl("alices", acl), thread.loop).result(
        10
    )
    assert bob.get_object(Bucket="alices", Key="doc")["Body"].read() == b"hi bob"
    with pytest.raises(ClientError) as err:
        bob.put_object(Bucket="alices", Key="doc", Body=b"bob was here")
    assert code(err) == "AccessDenied"
    with pytest.raises(ClientError) as err:
        bob.delete_bucket(Bucket="alices")
    assert code(err) == "AccessDenied"
    assert alice.get_object(Bucket="alices", Key="doc")["Body"].read() == b"hi bob"


def test_error_document_is_s3_xml(server: Server) -> None:
    status, body = raw_signed(server[1], "GET", "/no-such-bucket-here/key")
    assert status == 404
    assert body.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchBucket</Code>'
    )
    assert b"<RequestId>" in body and b"<Resource>/no-such-bucket-here/key</Resource>" in body


def test_unsigned_request_denied(server: Server) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server[1].endpoint}/", timeout=10)
    assert err.value.code == 403 and b"<Code>AccessDenied</Code>" in err.value.read()


def test_skewed_clock_refused(server: Server) -> None:
    running = server[1]
    headers = {
        "host": f"127.0.0.1:{running.port}",
        "date": formatdate(time.time() - 3600, usegmt=True),
    }
    sigv4.sign_headers(
        "GET",
        "/",
        "",
        headers,
        access_key=AK,
        secret=SK,
        region="us-east-1",
        now=time.time() - 3600,
    )
    req = urllib.request.Request(
        f"{running.endpoint}/", headers={k: v for k, v in headers.items() if k != "host"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403 and b"RequestTimeTooSkewed" in err.value.read()


def test_data_survives_restart(tmp_path: Path) -> None:
    with ServerThread(tmp_path, access_key=AK, secret_key=SK) as running:
        c = client(running)
        c.create_bucket(Bucket="durable")
        c.put_object(Bucket="durable", Key="k", Body=b"still here")
        cred = issue_direct(running)
    with ServerThread(tmp_path, access_key=AK, secret_key=SK) as running:
        assert client(running).get_object(Bucket="durable", Key="k")["Body"].read() == b"still here"
        peer = client(running, *cred)
        with pytest.raises(ClientError) as err:
            peer.get_object(Bucket="durable", Key="k")
        assert code(err) == "AccessDenied"  # the issued key survived; its lack of grants too


def issue_direct(running: Running) -> tuple[str, str]:
    cred = asyncio.run(running.authorizer.issue("carol"))
    return cred.access_key, cred.secret_key
