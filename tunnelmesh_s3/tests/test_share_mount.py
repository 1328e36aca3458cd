"""``tunnelmesh share mount``: which client is chosen, with what command, and the unmount.

The kernel-NFS path cannot run on a machine without an NFS client (this one): its choice and
its exact command line are checked here; the rclone path runs for real in the namespace lab
(tests/test_e2e_dav_mesh_lab.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tunnelmesh_s3.mount import (
    MountError,
    describe,
    kernel_has_nfs,
    mounted_type,
    plan_mount,
    plan_umount,
)

ALL = {"mount.nfs", "rclone", "fusermount3", "mount.davfs"}


def which_of(*tools: str):  # type: ignore[no-untyped-def]
    return lambda name: f"/usr/bin/{name}" if name in tools else None


def plan(client: str | None = None, tools: set[str] = ALL, kernel: bool = True, **kw: str):  # type: ignore[no-untyped-def]
    kw.setdefault("webdav", "http://10.99.0.1:8080")
    kw.setdefault("nfs", "10.99.0.1:2049")
    return plan_mount(
        "team", "/mnt/team", client=client, which=which_of(*tools), nfs_kernel=lambda: kernel, **kw
    )


def test_kernel_nfs_first_when_everything_is_there() -> None:
    p = plan()
    assert p.client == "nfs"
    assert p.argv == [
        "mount", "-t", "nfs", "-o",
        "vers=3,proto=tcp,port=2049,mountport=2049,mountproto=tcp,nolock",
        "10.99.0.1:/team", "/mnt/team",
    ]  # fmt: skip
    assert describe(p, "team", "/mnt/team") == (
        "mounted share team on /mnt/team with kernel NFS (v3 over TCP) from 10.99.0.1:/team"
    )


@pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse")
def test_rclone_when_the_kernel_has_no_nfs_or_the_mesh_serves_none() -> None:
    for p in (plan(kernel=False), plan(nfs=""), plan(tools=ALL - {"mount.nfs"})):
        assert p.client == "rclone"
        assert p.argv[:4] == ["rclone", "mount", ":webdav:", "/mnt/team"]
        assert p.argv[p.argv.index("--webdav-url") + 1] == "http://10.99.0.1:8080/team/"
        assert p.argv[p.argv.index("--vfs-cache-mode") + 1] == "off"
        assert "--daemon" in p.argv
    assert "rclone mount over WebDAV (FUSE)" in describe(p, "team", "/mnt/team")
    p = plan_mount("a b", "/m", webdav="http://h:8080/", nfs="", which=which_of(*ALL), nfs_kernel=lambda: False)  # fmt: skip
    assert "http://h:8080/a%20b/" in p.argv


def test_davfs2_last_with_its_config() -> None:
    p = plan(kernel=False, tools={"mount.davfs"}, davfs2_conf="/tmp/x/davfs2.conf")
    assert p.client == "davfs2"
    assert p.argv == [
        "mount", "-t", "davfs", "-o", "conf=/tmp/x/davfs2.conf",
        "http://10.99.0.1:8080/team/", "/mnt/team",
    ]  # fmt: skip
    assert p.files == {"/tmp/x/davfs2.conf": "ask_auth 0\nbuf_size 64\n"}


def test_nothing_usable_says_why_for_each_client() -> None:
    with pytest.raises(MountError) as err:
        plan(kernel=False, tools=set())
    text = str(err.value)
    assert "nfs: this kernel has no NFS client" in text
    assert "rclone: rclone is missing" in text
    assert "davfs2: mount.davfs is missing" in text
    with pytest.raises(MountError, match="the mesh serves no NFS"):
        plan(client="nfs", nfs="")
    with pytest.raises(MountError, match="the mesh serves no WebDAV"):
        plan(client="rclone", webdav="")


def test_kernel_nfs_detection(tmp_path: Path) -> None:
    fs = tmp_path / "filesystems"
    fs.write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n")
    assert not kernel_has_nfs(str(fs), str(tmp_path / "modules"))
    fs.write_text("nodev\tsysfs\nnodev\tnfs\nnodev\tnfs4\n")
    assert kernel_has_nfs(str(fs), str(tmp_path / "modules"))


def test_umount_by_mount_type(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    info = tmp_path / "mountinfo"
    info.write_text(
        f"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"99 1 0:50 / {d} rw,nosuid - fuse.rclone :webdav: rw,user_id=0\n"
    )
    assert mounted_type(str(d), str(info)) == "fuse.rclone"
    assert plan_umount(str(d), "fuse.rclone", which_of("fusermount3")) == ["/usr/bin/fusermount3", "-u", str(d)]  # fmt: skip
    assert plan_umount(str(d), "nfs", which_of("fusermount3")) == ["umount", str(d)]
    assert mounted_type(str(tmp_path), str(info)) is None
    with pytest.raises(MountError, match="nothing is mounted"):
        plan_umount(str(tmp_path), None)
