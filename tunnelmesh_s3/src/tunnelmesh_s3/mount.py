"""``tunnelmesh share mount``: mount a share with the best client this machine has.

The order, first that is available wins (``--client`` picks one):

1. **kernel NFS** (``nfs``): the kernel has the nfs file system (``/proc/filesystems``, or a
   module of the running kernel) and ``mount.nfs`` exists (Debian ``nfs-common``), and the
   mesh serves NFS. NFSv3 over TCP, MOUNT and NFS both on the server's one port, so no
   portmapper is asked: ``mount -t nfs -o vers=3,proto=tcp,port=P,mountport=P,mountproto=tcp,
   nolock HOST:/NAME DIR``. Needs root.
2. **rclone** (``rclone``): ``rclone mount`` of the share over WebDAV through FUSE
   (``fusermount3`` or ``fusermount``), in the background (``--daemon``: rclone returns once
   the mount is up). ``--vfs-cache-mode off`` by default, so a write the server refuses (a
   read-only member: 403) fails the writing program at close instead of failing later in the
   background; ``--vfs-cache-mode writes`` suits programs that open files read-write.
3. **davfs2** (``davfs2``): ``mount -t davfs -o conf=FILE URL DIR`` (Debian ``davfs2``; needs
   root), with a config of :data:`DAVFS2_CONF`: ``ask_auth 0`` (the mesh asks no credentials)
   and ``buf_size 64`` (davfs2 up to 1.7.1 lists no directory on Linux 6.16 and later with its
   default buffer: every ``ls`` fails with EINVAL; a larger buffer avoids it). davfs2 uploads a
   changed file after it is closed, in the background.

The command says which client it used. ``share umount DIR`` unmounts with what matches the
mount's type (``fusermount3 -u`` for rclone, ``umount`` otherwise).
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tunnelmesh.errors import TunnelmeshError

__all__ = [
    "CLIENTS",
    "DAVFS2_CONF",
    "MountError",
    "MountPlan",
    "describe",
    "kernel_has_nfs",
    "mounted_type",
    "plan_mount",
    "plan_umount",
]

CLIENTS = ("nfs", "rclone", "davfs2")
DAVFS2_CONF = "ask_auth 0\nbuf_size 64\n"
"""The davfs2 config ``share mount`` gives it (see the module docstring)."""


class MountError(TunnelmeshError):
    """No client can mount the share here, or mounting failed (the sentence says why)."""


@dataclass(frozen=True)
class MountPlan:
    """What to run: the client's name, its argv, and files to write first (path to text)."""

    client: str
    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)


def kernel_has_nfs(
    proc_filesystems: str = "/proc/filesystems", modules_root: str = "/lib/modules"
) -> bool:
    """Whether this kernel can mount NFS (built in, loaded, or a module it can load)."""
    try:
        with open(proc_filesystems, encoding="ascii", errors="replace") as f:
            if any(line.split()[-1:] == ["nfs"] for line in f):
                return True
    except OSError:
        pass
    mods = Path(modules_root) / platform.release() / "kernel" / "fs" / "nfs"
    return any(mods.glob("nfs.ko*"))


def _fuse_tool(which: Callable[[str], str | None]) -> str | None:
    return which("fusermount3") or which("fusermount")


def plan_mount(
    share: str,
    directory: str,
    *,
    webdav: str,
    nfs: str,
    client: str | None = None,
    cache_mode: str = "off",
    davfs2_conf: str = "/run/tunnelmesh-davfs2.conf",
    which: Callable[[str], str | None] = shutil.which,
    nfs_kernel: Callable[[], bool] = kernel_has_nfs,
) -> MountPlan:
    """How to mount ``share`` on ``directory``.

    Args:
        webdav: the mesh's WebDAV URL (``http://HOST:PORT``), "" when it serves none.
        nfs: the mesh's NFS address (``HOST:PORT``), "" when it serves none.
        client: force one of :data:`CLIENTS`.
        cache_mode: rclone's ``--vfs-cache-mode``.
        davfs2_conf: where the davfs2 config goes (written before mounting).

    Raises:
        MountError: no usable client (says what is missing for each), or the forced one
            cannot be used.
    """
    why: dict[str, str] = {}
    order = [client] if client else list(CLIENTS)
    for name in order:
        if name == "nfs":
            if not nfs:
                why[name] = "the mesh serves no NFS"
            elif not nfs_kernel():
                why[name] = "this kernel has no NFS client"
            elif not which("mount.nfs"):
                why[name] = "mount.nfs is missing (Debian: nfs-common)"
            else:
                host, _, port = nfs.rpartition(":")
                port = port or "2049"
                opts = f"vers=3,proto=tcp,port={port},mountport={port},mountproto=tcp,nolock"
                return MountPlan(
                    "nfs", ["mount", "-t", "nfs", "-o", opts, f"{host}:/{share}", directory]
                )
        elif name == "rclone":
            if not webdav:
                why[name] = "the mesh serves no WebDAV"
            elif not which("rclone"):
                why[name] = "rclone is missing (Debian: rclone)"
            elif not _fuse_tool(which) or not os.path.exists("/dev/fuse"):
                why[name] = "FUSE is missing (Debian: fuse3; /dev/fuse)"
            else:
                url = f"{webdav.rstrip('/')}/{quote(share)}/"
                return MountPlan(
                    "rclone",
                    [
                        "rclone",
                        "mount",
                        ":webdav:",
                        directory,
                        "--webdav-url",
                        url,
                        "--webdav-vendor",
                        "other",
                        "--vfs-cache-mode",
                        cache_mode,
                        "--dir-cache-time",
                        "5s",
                        "--daemon",
                    ],
                )
        elif name == "davfs2":
            if not webdav:
                why[name] = "the mesh serves no WebDAV"
            elif not which("mount.davfs"):
                why[name] = "mount.davfs is missing (Debian: davfs2)"
            else:
                url = f"{webdav.rstrip('/')}/{quote(share)}/"
                argv = ["mount", "-t", "davfs", "-o", f"conf={davfs2_conf}", url, directory]
                return MountPlan("davfs2", argv, files={davfs2_conf: DAVFS2_CONF})
        else:
            raise MountError(f"no mount client named {name!r} (known: {', '.join(CLIENTS)})")
    reasons = "; ".join(f"{k}: {v}" for k, v in why.items())
    raise MountError(f"cannot mount {share}: {reasons}")


def mounted_type(directory: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The file system type mounted on ``directory`` (``fuse.rclone``, ``nfs``, ...), or None."""
    target = os.path.realpath(directory)
    found = None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 7 or "-" not in fields:
                    continue
                point = fields[4].encode().decode("unicode_escape")
                if point == target:
                    found = fields[fields.index("-", 6) + 1]  # the last mount on it wins
    except OSError:
        return None
    return found


def plan_umount(
    directory: str, fstype: str | None, which: Callable[[str], str | None] = shutil.which
) -> list[str]:
    """The argv that unmounts ``directory`` mounted as ``fstype``.

    Raises:
        MountError: nothing is mounted there.
    """
    if fstype is None:
        raise MountError(f"nothing is mounted on {directory}")
    tool = _fuse_tool(which)
    if fstype.startswith("fuse.") and tool:  # rclone's fuse.rclone (davfs2: umount flushes)
        return [tool, "-u", directory]
    return ["umount", directory]


def describe(plan: MountPlan, share: str, directory: str) -> str:
    """One line saying what was mounted with what."""
    what = {
        "nfs": "kernel NFS (v3 over TCP)",
        "rclone": "rclone mount over WebDAV (FUSE)",
        "davfs2": "davfs2 over WebDAV",
    }[plan.client]
    source = plan.argv[5] if plan.client == "rclone" else plan.argv[-2]
    return f"mounted share {share} on {directory} with {what} from {source}"
