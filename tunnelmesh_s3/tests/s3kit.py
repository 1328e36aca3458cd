"""What the boto3-driven S3 tests share: a standalone server on loopback for a test module, a
boto3 client of it, a credential issued on the server's loop, and the S3 error code of a refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from tunnelmesh_s3.server import Running, ServerThread

Server = tuple[ServerThread, Running]


def serve(
    tmp_path_factory: pytest.TempPathFactory, access_key: str, secret_key: str
) -> Iterator[Server]:
    """``tunnelmesh s3 serve``'s server on a thread, its admin the given credential (for a
    module-scoped fixture to ``yield from``)."""
    thread = ServerThread(
        tmp_path_factory.mktemp("s3"), access_key=access_key, secret_key=secret_key
    )
    with thread as running:
        yield thread, running


def boto_client(running: Running, access_key: str, secret_key: str, **config: Any) -> Any:
    """A boto3 S3 client of ``running`` that never retries; SigV4 unless ``signature_version``
    says otherwise (botocore presigns with the legacy SigV2 by default); ``config``: more of
    botocore's ``Config``."""
    config.setdefault("signature_version", "s3v4")
    return boto3.client(
        "s3",
        endpoint_url=running.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, **config),
    )


def issue(server: Server, name: str) -> tuple[str, str]:
    """A new credential for ``name`` from the server's authorizer: (access key, secret)."""
    thread, running = server
    cred = asyncio.run_coroutine_threadsafe(running.authorizer.issue(name), thread.loop).result(10)
    return cred.access_key, cred.secret_key


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    """The S3 error code of a refused boto3 call."""
    return str(exc.value.response["Error"]["Code"])
