"""``tunnelmesh buckets``: buckets and objects on any S3 endpoint, with progress bars."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tunnelmesh_s3.cli._common import endpoint_options, with_client
from tunnelmesh_s3.client import S3Client


@click.group()
def buckets() -> None:
    """List, create and delete buckets; list, upload and download objects.

    Works against the mesh's S3 service or any S3 endpoint (--endpoint-url).
    """


@buckets.command("list")
@endpoint_options
@with_client
async def list_(client: S3Client) -> None:
    """List the buckets you can read."""
    for name, created in await client.list_buckets():
        click.echo(f"{created[:19].replace('T', ' ')}  {name}")


@buckets.command()
@endpoint_options
@click.argument("bucket")
@with_client
async def create(client: S3Client, bucket: str) -> None:
    """Create BUCKET (you own it)."""
    await client.create_bucket(bucket)
    click.echo(f"created {bucket}")


@buckets.command()
@endpoint_options
@click.argument("bucket")
@click.option(
    "--force",
    is_flag=True,
    envvar="TUNNELMESH_S3_FORCE",
    show_envvar=True,
    help="Delete every object first.",
)
@with_client
async def delete(client: S3Client, bucket: str, force: bool) -> None:
    """Delete BUCKET (it must be empty unless --force)."""
    if force:
        keys = [key async for key, size, _ in client.list_objects(bucket) if size >= 0]
        if keys:
            await client.delete_objects(bucket, keys)
    await client.delete_bucket(bucket)
    click.echo(f"deleted {bucket}")


@buckets.command()
@endpoint_options
@click.argument("bucket")
@click.argument("prefix", default="")
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    envvar="TUNNELMESH_S3_RECURSIVE",
    show_envvar=True,
    help="List every key under PREFIX instead of one level.",
)
@with_client
async def objects(client: S3Client, bucket: str, prefix: str, recursive: bool) -> None:
    """List the objects of BUCKET under PREFIX, one level at a time unless --recursive."""
    async for key, size, modified in client.list_objects(bucket, prefix, "" if recursive else "/"):
        if size < 0:
            click.echo(f"{'':19}  {'DIR':>12}  {key}")
        else:
            click.echo(f"{modified[:19].replace('T', ' ')}  {size:>12}  {key}")


def _bar(length: int, label: str):  # type: ignore[no-untyped-def]
    return click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)


@buckets.command()
@endpoint_options
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("bucket")
@click.argument("key", required=False)
@with_client
async def put(client: S3Client, file: Path, bucket: str, key: str | None) -> None:
    """Upload FILE to BUCKET as KEY (default: the file's name), with a progress bar."""
    key = key or file.name
    with _bar(file.stat().st_size, f"put {key}") as bar:
        etag = await client.put_file(bucket, key, file, bar.update)
    click.echo(f"uploaded {file} to {bucket}/{key} (etag {etag})")


@buckets.command()
@endpoint_options
@click.argument("bucket")
@click.argument("key")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@with_client
async def get(client: S3Client, bucket: str, key: str, file: Path | None) -> None:
    """Download BUCKET/KEY to FILE (default: the key's last part), with a progress bar."""
    file = file or Path(key.rstrip("/").rpartition("/")[2] or "download")
    bar = _bar(0, f"get {key}")
    with bar:

        def total(n: int) -> None:
            bar.length = n

        size = await client.get_file(bucket, key, file, bar.update, total=total)
    click.echo(f"downloaded {bucket}/{key} to {file} ({size} bytes)")
