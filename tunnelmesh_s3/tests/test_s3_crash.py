"""SIGKILL the standalone server in the middle of a PUT: the object is absent or whole after."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tunnelmesh_s3 import sigv4

AK, SK = "AKCRASHTEST", "crash-secret"
MiB = 1024 * 1024


@contextmanager
def server(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    env = dict(os.environ, TUNNELMESH_S3_ACCESS_KEY=AK, TUNNELMESH_S3_SECRET_KEY=SK)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunnelmesh",
            "s3",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints one line once it listens (or dies)
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, (
            f"server did not start: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
        )
        yield proc, int(m.group(1))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def s3(port: int):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )


def written_in_files(data_dir: Path) -> int:
    """Bytes in the store's data files (``blobs/`` and ``tmp/``; the objects of these tests
    that are not being written are small enough to live in the index, not in files)."""
    files = [p for sub in ("blobs", "tmp") for p in (data_dir / "objects" / sub).rglob("*")]
    return sum(p.stat().st_size for p in files if p.is_file())


def start_put(
    port: int, key: str, payload: bytes, sent_before_stall: int
) -> http.client.HTTPConnection:
    """Send headers and the first part of an UNSIGNED-PAYLOAD PUT, then stall."""
    path = f"/crash/{key}"
    headers = {"host": f"127.0.0.1:{port}"}
    sigv4.sign_headers(
        "PUT", path, "", headers, access_key=AK, secret=SK, region="us-east-1", now=time.time()
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(payload)))
    conn.endheaders()
    conn.send(payload[:sent_before_stall])
    return conn


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-key", "overwrite"])
def test_kill_mid_put_leaves_absent_or_whole(tmp_path: Path, overwrite: bool) -> None:
    old = b"old version " * 1000
    payload = os.urandom(32 * MiB)
    with server(tmp_path) as (proc, port):
        client = s3(port)
        client.create_bucket(Bucket="crash")
        if overwrite:
            client.put_object(Bucket="crash", Key="obj", Body=old)
        conn = start_put(port, "obj", payload, 8 * MiB)
        deadline = time.monotonic() + 30
        while written_in_files(tmp_path) < 4 * MiB:  # the server is writing the body
            assert time.monotonic() < deadline, "the server never started writing the body"
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        conn.close()
    assert written_in_files(tmp_path) > 0  # a partial write really was on disk
    with server(tmp_path) as (proc, port):
        client = s3(port)
        if overwrite:
            assert client.get_object(Bucket="crash", Key="obj")["Body"].read() == old
        else:
            with pytest.raises(ClientError) as err:
                client.head_object(Bucket="crash", Key="obj")
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert written_in_files(tmp_path) == 0  # recovery removed the partial write
        # the store works normally afterwards
        client.put_object(Bucket="crash", Key="obj", Body=payload[:MiB])
        got = client.get_object(Bucket="crash", Key="obj")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload[:MiB]).digest()


def test_kill_during_small_puts_leaves_each_absent_or_whole(tmp_path: Path) -> None:
    """Small objects live in the index (one group commit makes them durable and visible):
    SIGKILL while 8 clients overwrite small objects and one stalls mid-body. After a restart
    each key holds one version that was sent, whole, at least as new as the last one
    acknowledged; the stalled PUT's key is absent."""
    sent: dict[str, list[bytes]] = {}
    acked: dict[str, int] = {}
    stop = threading.Event()

    def version(key: str, n: int) -> bytes:
        seed = hashlib.sha256(f"{key}/{n}".encode()).digest()
        return seed * (1 + n % 600)  # 32 bytes to 19 KiB

    def writer(port: int, key: str) -> None:
        client = s3(port)
        versions = sent.setdefault(key, [])
        n = 0
        while not stop.is_set():
            versions.append(version(key, n))
            try:
                client.put_object(Bucket="crash", Key=key, Body=versions[-1])
            except Exception:  # the server was killed mid-request
                return
            acked[key] = n
            n += 1

    with server(tmp_path) as (proc, port):
        s3(port).create_bucket(Bucket="crash")
        conn = start_put(port, "stalled", os.urandom(20000), 10000)
        threads = [threading.Thread(target=writer, args=(port, f"small{i}")) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while sum(acked.values()) < 80:  # many commits done, more in flight
            assert time.monotonic() < deadline, "the small PUTs made no progress"
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        stop.set()
        for t in threads:
            t.join(30)
        conn.close()
    with server(tmp_path) as (proc, port):
        client = s3(port)
        for key, versions in sent.items():
            try:
                got = client.get_object(Bucket="crash", Key=key)["Body"].read()
            except ClientError:
                assert key not in acked, f"{key}: acknowledged, then lost"
                continue
            assert got in versions, f"{key}: not a version that was sent whole"
            assert versions.index(got) >= acked.get(key, 0), f"{key}: older than acknowledged"
        with pytest.raises(ClientError) as err:
            client.head_object(Bucket="crash", Key="stalled")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_kill_during_completes_and_deletes_leaves_each_absent_or_whole(tmp_path: Path) -> None:
    """SIGKILL while clients complete multipart uploads and delete objects in batches
    (DeleteObjects): after a restart every key is absent or holds exactly what was written."""
    whole: dict[str, bytes] = {}
    stop = threading.Event()
    done = {"completes": 0, "deletes": 0}

    def completer(port: int, t: int) -> None:
        client = s3(port)
        for n in range(10_000):
            if stop.is_set():
                return
            key = f"mp{t}-{n}"
            data = hashlib.sha256(key.encode()).digest() * (100 + n % 3000)
            whole[key] = data
            try:
                up = client.create_multipart_upload(Bucket="crash", Key=key)["UploadId"]
                etag = client.upload_part(
                    Bucket="crash", Key=key, UploadId=up, PartNumber=1, Body=data
                )["ETag"]
                client.complete_multipart_upload(
                    Bucket="crash",
                    Key=key,
                    UploadId=up,
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
                )
            except Exception:  # the server was killed mid-request
                return
            done["completes"] += 1

    def deleter(port: int, t: int) -> None:
        client = s3(port)
        for n in range(10_000):
            if stop.is_set():
                return
            keys = [f"del{t}-{n}-{i}" for i in range(8)]
            try:
                for key in keys:
                    whole[key] = key.encode() * 50
                    client.put_object(Bucket="crash", Key=key, Body=whole[key])
                client.delete_objects(
                    Bucket="crash", Delete={"Objects": [{"Key": k} for k in keys]}
                )
            except Exception:  # the server was killed mid-request
                return
            done["deletes"] += 1

    with server(tmp_path) as (proc, port):
        s3(port).create_bucket(Bucket="crash")
        threads = [threading.Thread(target=completer, args=(port, t)) for t in range(3)]
        threads += [threading.Thread(target=deleter, args=(port, t)) for t in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while done["completes"] < 10 or done["deletes"] < 3:  # commits done, more in flight
            assert time.monotonic() < deadline, f"no progress: {done}"
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        stop.set()
        for t in threads:
            t.join(30)
    with server(tmp_path) as (proc, port):
        client = s3(port)
        for key, data in list(whole.items()):
            try:
                got = client.get_object(Bucket="crash", Key=key)["Body"].read()
            except ClientError as err:
                assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 404, key
                continue
            assert got == data, f"{key}: not whole"
