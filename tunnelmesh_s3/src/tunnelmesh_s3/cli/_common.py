"""Options shared by the commands that talk to an S3 endpoint, and the async runner."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from tunnelmesh_s3.client import S3Client

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ENDPOINT = "http://127.0.0.1:9000"


def endpoint_options(fn: F) -> F:
    """``--endpoint-url``, ``--access-key``, ``--secret-key``, ``--region``: where and as whom."""
    options = [
        click.option(
            "--endpoint-url",
            default=DEFAULT_ENDPOINT,
            show_default=True,
            envvar="TUNNELMESH_S3_ENDPOINT",
            show_envvar=True,
            help="The S3 endpoint.",
        ),
        click.option(
            "--access-key",
            required=True,
            envvar="TUNNELMESH_S3_ACCESS_KEY",
            show_envvar=True,
            help="Access key (from `tunnelmesh s3 credentials`).",
        ),
        click.option(
            "--secret-key",
            required=True,
            envvar="TUNNELMESH_S3_SECRET_KEY",
            show_envvar=True,
            help="Secret key that goes with the access key.",
        ),
        click.option(
            "--region",
            default="us-east-1",
            show_default=True,
            envvar="TUNNELMESH_S3_REGION",
            show_envvar=True,
            help="Region the server signs for.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_client(kw: dict[str, Any]) -> S3Client:
    return S3Client(
        kw.pop("endpoint_url"), kw.pop("access_key"), kw.pop("secret_key"), region=kw.pop("region")
    )


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def with_client(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an async command body with a connected :class:`S3Client` as its first argument."""

    @functools.wraps(fn)
    def wrapper(**kw: Any) -> Any:
        client = make_client(kw)

        async def main() -> Any:
            async with client:
                return await fn(client, **kw)

        return run(main())

    return wrapper
