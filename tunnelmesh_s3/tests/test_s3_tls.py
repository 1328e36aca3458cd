"""Over HTTPS, botocore streams uploads as aws-chunked bodies with trailing checksums
(STREAMING-UNSIGNED-PAYLOAD-TRAILER), as it will against the coordinator's TLS endpoint."""

from __future__ import annotations

import datetime
import io
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tunnelmesh_s3.server import Running, ServerThread

AK, SK = "AKTLSTEST", "tls-secret"


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with ServerThread(tmp_path / "data", access_key=AK, secret_key=SK, ssl_context=ctx) as running:
        yield running, cert


def test_boto3_over_https_uses_trailing_checksums(tls_server: tuple[Running, Path]) -> None:
    running, cert = tls_server
    s3 = boto3.client(
        "s3",
        endpoint_url=running.endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        verify=str(cert),
        config=Config(retries={"max_attempts": 1}),
    )
    s3.create_bucket(Bucket="tls")
    events: list[str] = []

    def seen(request, **_: object) -> None:  # type: ignore[no-untyped-def]
        value = request.headers.get("x-amz-content-sha256")
        events.append(value.decode() if isinstance(value, bytes) else str(value))

    s3.meta.events.register("before-send.s3.PutObject", seen)
    data = b"over tls " * 100_000
    s3.put_object(Bucket="tls", Key="k", Body=io.BytesIO(data), ChecksumAlgorithm="CRC32")
    assert events == ["STREAMING-UNSIGNED-PAYLOAD-TRAILER"]
    head = s3.head_object(Bucket="tls", Key="k", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data) and head["ChecksumCRC32"]
    assert s3.get_object(Bucket="tls", Key="k")["Body"].read() == data
