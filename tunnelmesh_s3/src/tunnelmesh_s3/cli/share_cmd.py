"""``tunnelmesh share``: file shares, i.e. buckets shared with chosen peers."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from tunnelmesh_s3.cli._common import context_option, endpoint_options, run, with_client
from tunnelmesh_s3.client import S3Client


@click.group()
def share() -> None:
    """File shares: a bucket shared with chosen peers, to mount or sync with S3 tools.

    A share NAME is the bucket NAME; `share info NAME` prints an rclone remote for it.
    """


def _show(s: dict[str, Any]) -> str:
    return (
        f"{s['name']}  owner={s['owner']}  read={','.join(s['read']) or '-'}  "
        f"write={','.join(s['write']) or '-'}  {s['description']}"
    ).rstrip()


@share.command()
@endpoint_options
@click.argument("name")
@click.option(
    "--peer",
    "writers",
    multiple=True,
    envvar="TUNNELMESH_SHARE_PEERS",
    show_envvar=True,
    help="Who may read and write: a peer (name or peer ID; stored by key), 'group:NAME' (a "
    "coordinator group) or '*' (every peer); repeatable.",
)
@click.option(
    "--reader",
    "readers",
    multiple=True,
    envvar="TUNNELMESH_SHARE_READERS",
    show_envvar=True,
    help="Who may only read: a peer, 'group:NAME' or '*'; repeatable.",
)
@click.option(
    "--description",
    default="",
    envvar="TUNNELMESH_SHARE_DESCRIPTION",
    show_envvar=True,
    help="What the share is for.",
)
@with_client
async def create(
    client: S3Client,
    name: str,
    writers: tuple[str, ...],
    readers: tuple[str, ...],
    description: str,
) -> None:
    """Create share NAME (or change who it is shared with)."""
    s = await client.admin(
        "PUT",
        f"shares/{name}",
        {"description": description, "read": list(readers), "write": list(writers)},
    )
    click.echo(_show(s))


@share.command("list")
@endpoint_options
@with_client
async def list_(client: S3Client) -> None:
    """List the shares you can read."""
    for s in await client.admin("GET", "shares"):
        click.echo(_show(s))


@share.command()
@endpoint_options
@click.argument("name")
@with_client
async def delete(client: S3Client, name: str) -> None:
    """Stop sharing NAME. The bucket and its files stay (delete them with `buckets delete --force`)."""
    await client.admin("DELETE", f"shares/{name}")
    click.echo(f"unshared {name}; bucket {name} kept")


@share.command()
@endpoint_options
@click.argument("name")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="TUNNELMESH_JSON",
    show_envvar=True,
    help="Print JSON.",
)
@with_client
async def info(client: S3Client, name: str, as_json: bool) -> None:
    """Show share NAME and how to mount or sync it with rclone."""
    s = await client.admin("GET", f"shares/{name}")
    if as_json:
        click.echo(json.dumps(s))
        return
    click.echo(_show(s))
    click.echo(
        "\n# rclone remote (your own keys: `tunnelmesh s3 credentials --format rclone` on a mesh):\n"
        "[tunnelmesh]\ntype = s3\nprovider = Other\n"
        f"endpoint = {client.endpoint}\nregion = {client.region}\n"
        "access_key_id = YOUR_ACCESS_KEY\nsecret_access_key = YOUR_SECRET_KEY\n"
        f"\n# then: rclone sync ./dir tunnelmesh:{name}   or   rclone mount tunnelmesh:{name} /mnt/{name}"
        "\n# (on a mesh add --ca-cert with the mesh CA unless it is in the system trust store)"
        f"\n\n# or mount it as a file system (WebDAV or NFS on the coordinator's mesh IP):\n"
        f"#   tunnelmesh share mount {name} DIR      (docs/shares.md)"
    )


@share.command()
@context_option
@click.argument("name")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--client",
    type=click.Choice(["nfs", "rclone", "davfs2"]),
    default=None,
    envvar="TUNNELMESH_SHARE_CLIENT",
    show_envvar=True,
    help="Mount with this client (default: the best available: kernel NFS, rclone, davfs2).",
)
@click.option(
    "--vfs-cache-mode",
    "cache_mode",
    type=click.Choice(["off", "minimal", "writes", "full"]),
    default="off",
    envvar="TUNNELMESH_SHARE_VFS_CACHE_MODE",
    show_envvar=True,
    help="rclone's cache mode: off (writes go straight to the share; a refused write fails "
    "at close) or writes (for programs that open files read-write).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="TUNNELMESH_SHARE_DRY_RUN",
    show_envvar=True,
    help="Print the command instead of running it.",
)
def mount(
    context_name: str | None,
    name: str,
    directory: str,
    client: str | None,
    cache_mode: str,
    dry_run: bool,
) -> None:
    """Mount share NAME on DIRECTORY with the best client available, and say which.

    Kernel NFS where the kernel has it (needs root and mount.nfs), else rclone mount over
    WebDAV (FUSE), else davfs2. The share is reached on the coordinator's mesh IP; you are
    the peer the connection comes from, so no password is asked.
    """
    import shlex
    import shutil
    import subprocess
    import tempfile

    from tunnelmesh_s3 import meshclient
    from tunnelmesh_s3.mount import MountError, describe, plan_mount

    info = run(meshclient.fetch_info(meshclient.load_context(context_name)))
    tmp = tempfile.mkdtemp(prefix="tm-mount-")  # davfs2's config, read once at mount
    plan = plan_mount(
        name,
        directory,
        webdav=info.webdav,
        nfs=info.nfs,
        client=client,
        cache_mode=cache_mode,
        davfs2_conf=os.path.join(tmp, "davfs2.conf"),
    )
    if dry_run:
        shutil.rmtree(tmp, ignore_errors=True)
        click.echo(f"# {plan.client}\n{shlex.join(plan.argv)}")
        for path, text in plan.files.items():
            click.echo(f"# {path}:\n" + "".join(f"#   {line}\n" for line in text.splitlines()))
        return
    if not os.path.isdir(directory):
        raise MountError(f"{directory} is not a directory")
    try:
        for path, text in plan.files.items():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        done = subprocess.run(
            plan.argv, stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=120
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if done.returncode != 0:
        err = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        raise MountError(
            f"{plan.client}: {shlex.join(plan.argv[:2])} failed (exit {done.returncode}): "
            + (err[-1] if err else "no message")
        )
    click.echo(describe(plan, name, directory))


@share.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
def umount(directory: str) -> None:
    """Unmount a share mounted on DIRECTORY (rclone: fusermount -u; NFS, davfs2: umount)."""
    import shlex
    import subprocess

    from tunnelmesh_s3.mount import MountError, mounted_type, plan_umount

    fstype = mounted_type(directory)
    argv = plan_umount(directory, fstype)
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        raise MountError(f"{shlex.join(argv)} failed: {err or done.returncode}")
    click.echo(f"unmounted {directory} ({fstype})")
