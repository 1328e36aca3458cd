"""PUT bodies larger than a hash batch (hashed in a thread while the next batch arrives) are
checked as strictly as small ones: a wrong x-amz-content-sha256, Content-MD5 or x-amz-checksum
is refused and stores nothing; a right one stores the object with its MD5 ETag."""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import os
import zlib
from collections.abc import Iterator

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from tunnelmesh_s3.body import HASH_BATCH
from tunnelmesh_s3.server import Running, ServerThread

AK, SK = "AKDIGESTTEST", "digest-secret-for-tests"
DATA = os.urandom(3 * HASH_BATCH + 12345)
SIZES = [100, HASH_BATCH - 1, len(DATA)]  # on the loop, just under a batch, several batches


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with ServerThread(tmp_path_factory.mktemp("s3"), access_key=AK, secret_key=SK) as running:
        status, _ = request(running, "PUT", "/digests", b"")
        assert status == 200
        yield running


def request(
    running: Running, method: str, target: str, body: bytes, send: bytes | None = None, **extra: str
) -> tuple[int, bytes]:
    """Sign a request for ``body``; send ``send`` instead when given (a body changed in transit)."""
    aws = AWSRequest(method=method, url=f"{running.endpoint}{target}", data=body)
    for name, value in extra.items():
        aws.headers[name.replace("_", "-")] = value
    aws.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(aws)
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    try:
        conn.request(
            method, target, body=body if send is None else send, headers=dict(aws.headers.items())
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def stored(running: Running, key: str) -> bool:
    status, _ = request(running, "HEAD", f"/digests/{key}", b"")
    return status == 200


@pytest.mark.parametrize("size", SIZES)
def test_wrong_payload_sha256_is_refused_and_stores_nothing(running: Running, size: int) -> None:
    body = DATA[:size]
    changed = body[:-1] + bytes([body[-1] ^ 1])
    status, answer = request(running, "PUT", f"/digests/sha-{size}", body, send=changed)
    assert (status, b"XAmzContentSHA256Mismatch" in answer) == (400, True)
    assert not stored(running, f"sha-{size}")


@pytest.mark.parametrize("size", SIZES)
def test_wrong_content_md5_is_bad_digest_and_stores_nothing(running: Running, size: int) -> None:
    body = DATA[:size]
    wrong = base64.b64encode(hashlib.md5(body + b"x").digest()).decode()
    status, answer = request(running, "PUT", f"/digests/md5-{size}", body, Content_MD5=wrong)
    assert (status, b"BadDigest" in answer) == (400, True)
    assert not stored(running, f"md5-{size}")


@pytest.mark.parametrize("size", SIZES)
def test_wrong_x_amz_checksum_is_bad_digest_and_stores_nothing(running: Running, size: int) -> None:
    body = DATA[:size]
    wrong = base64.b64encode((zlib.crc32(body) ^ 1).to_bytes(4, "big")).decode()
    status, answer = request(
        running, "PUT", f"/digests/crc-{size}", body, x_amz_checksum_crc32=wrong
    )
    assert (status, b"BadDigest" in answer) == (400, True)
    assert not stored(running, f"crc-{size}")


@pytest.mark.parametrize("size", SIZES)
def test_right_digests_store_the_object_with_its_md5_etag(running: Running, size: int) -> None:
    body = DATA[:size]
    status, _ = request(
        running,
        "PUT",
        f"/digests/ok-{size}",
        body,
        Content_MD5=base64.b64encode(hashlib.md5(body).digest()).decode(),
        x_amz_checksum_sha256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
    )
    assert status == 200
    status, got = request(running, "GET", f"/digests/ok-{size}", b"")
    assert (status, got == body) == (200, True)
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    aws = AWSRequest(method="HEAD", url=f"{running.endpoint}/digests/ok-{size}")
    aws.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b"").hexdigest()
    S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(aws)
    try:
        conn.request("HEAD", f"/digests/ok-{size}", headers=dict(aws.headers.items()))
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("ETag") == f'"{hashlib.md5(body).hexdigest()}"'
    finally:
        conn.close()


@pytest.mark.parametrize("size", SIZES)
def test_http_chunked_body_is_stored_whole(running: Running, size: int) -> None:
    """A body in HTTP chunked transfer coding (no Content-Length), in uneven chunks: the bytes
    between the chunk framing, whole, and a wrong payload SHA-256 still refused."""
    body = DATA[:size]
    cuts = sorted({0, size} | {cut for cut in (1, 7, 70000, 1_500_000) if cut < size})
    chunks = [body[a:b] for a, b in itertools.pairwise(cuts)]

    def put(key: str, declared: bytes) -> int:
        target = f"/digests/{key}"
        aws = AWSRequest(method="PUT", url=f"{running.endpoint}{target}", data=declared)
        S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(aws)
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        headers = {k: v for k, v in aws.headers.items() if k.lower() != "content-length"}
        try:
            conn.request("PUT", target, body=iter(chunks), headers=headers, encode_chunked=True)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    assert put(f"te-{size}", body) == 200
    status, got = request(running, "GET", f"/digests/te-{size}", b"")
    assert (status, got == body) == (200, True)
    assert put(f"te-bad-{size}", body + b"x") == 400
    assert not stored(running, f"te-bad-{size}")


def test_bodiless_puts_one_after_another_on_one_connection(running: Running) -> None:
    """Empty bodies end at once, every time: aiohttp gives every bodiless request the same
    reader, whose end a chunk-wise read sees only once per process (a server that relied on it
    spun forever on the second empty PUT)."""
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    try:
        for i, body in enumerate([b"", b"", b"x", b"", b""]):
            target = f"/digests/empty-{i}"
            aws = AWSRequest(method="PUT", url=f"{running.endpoint}{target}", data=body)
            S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(aws)
            conn.request("PUT", target, body=body, headers=dict(aws.headers.items()))
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, i
    finally:
        conn.close()
    assert all(stored(running, f"empty-{i}") for i in range(5))
