"""S3 requests counted by operation and status on the process's /metrics, documented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families
from tunnelmesh.metrics import exposition
from tunnelmesh_s3.metrics import S3Collector
from tunnelmesh_s3.server import ServerThread

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
AK, SK = "AKMETRICSTEST", "metrics-secret-for-tests"


def counts() -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(exposition().decode()):
        for s in fam.samples:
            if s.name == "tunnelmesh_s3_requests_total":
                out[(s.labels["operation"], s.labels["status"])] = s.value
    return out


def client(endpoint: str, sk: str = SK) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=sk,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, signature_version="s3v4"),
    )


def test_requests_by_operation_and_status(tmp_path: Path) -> None:
    with ServerThread(tmp_path, access_key=AK, secret_key=SK) as running:
        s3 = client(running.endpoint)
        s3.create_bucket(Bucket="met")
        s3.put_object(Bucket="met", Key="k", Body=b"x")
        s3.get_object(Bucket="met", Key="k")["Body"].read()
        with pytest.raises(ClientError):
            s3.get_object(Bucket="met", Key="missing")
        with pytest.raises(ClientError):
            client(running.endpoint, sk="wrong-secret").list_buckets()
        got = counts()
    assert got[("create_bucket", "200")] == 1
    assert got[("put_object", "200")] == 1
    assert got[("get_object", "200")] == 1
    assert got[("get_object", "404")] == 1
    assert got[("unrouted", "403")] == 1
    assert counts() == {}  # the server stopped: its collector is gone


def test_families_are_documented() -> None:
    docs = set(re.findall(r"^\| `(tunnelmesh_[a-z0-9_]+)` \|", DOCS.read_text(), re.M))
    assert set(S3Collector.declared()) <= docs


def test_a_client_hanging_up_mid_upload_is_counted_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PUT whose client closes the connection halfway through the body stores nothing, is
    counted as status 499 and logs nothing at warning or above (no 500 traceback)."""
    import socket
    import time

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    with ServerThread(tmp_path, access_key=AK, secret_key=SK) as running:
        s3 = client(running.endpoint)
        s3.create_bucket(Bucket="met")
        aws = AWSRequest(method="PUT", url=f"{running.endpoint}/met/cut", data=b"")
        aws.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(aws)
        head = ["PUT /met/cut HTTP/1.1", f"Host: 127.0.0.1:{running.port}"]
        head += [f"{k}: {v}" for k, v in aws.headers.items()]
        head.append("Content-Length: 1000000")
        with caplog.at_level("DEBUG"):
            with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
                sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + b"x" * 100_000)
                time.sleep(0.2)  # the server is reading the body
            deadline = time.monotonic() + 10
            while counts().get(("put_object", "499")) != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert counts().get(("put_object", "499")) == 1
        with pytest.raises(ClientError):
            s3.head_object(Bucket="met", Key="cut")
    assert not [r for r in caplog.records if r.levelno >= 30], caplog.records
