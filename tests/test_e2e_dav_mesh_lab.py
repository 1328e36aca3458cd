"""WebDAV shares mounted with ``rclone mount`` (FUSE) through the real mesh, in the namespace lab.

``tunnelmesh serve`` with ``join_mesh:`` and ``s3: {enabled: true}`` serves the shares over
WebDAV on its own mesh IP (port 8080). Two ``tunnelmesh join`` peers (TUN, UDP transport):

* alice owns share ``team`` (``tunnelmesh share create team --reader bob``) and mounts it with
  ``tunnelmesh share mount team DIR``, which picks rclone over WebDAV (this kernel has no NFS
  client) and says so; cp, mkdir, mv, rm and a 50 MiB sha256 round trip through the mount; the
  file is then the same object over S3 (``tunnelmesh buckets get``).
* bob, a read-only member, mounts it too: reads the same bytes; every write through the mount
  fails, an HTTP PUT from his namespace gets 403, and the share is unchanged.
* alice again with ``--client davfs2`` (Debian davfs2, when installed): reads the big file
  sha256-exact, writes a file that is an S3 object once unmounted (davfs2 uploads after close).

Each mount lives in the mount namespace of one ``ip netns exec`` process, so a peer's whole
session (mount, file operations, unmount) runs as one script (:data:`SESSION`); an rclone
(or davfs2) left behind by a failure is killed by PID.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_s3")

from coordinator_peer import (
    coordinator_joins,
    mesh_lab,  # noqa: F401  (the fixture mesh)
    run_script,
    start_coordinator,
    start_peers,
    tm,
)
from tunnelmesh.testing.mesh import MeshLab

pytestmark = pytest.mark.lab

MiB = 1024 * 1024

# One peer's session inside its namespace. argv[1]: {"dir", "url", "steps": [...]}; prints one
# JSON line per step. Mounts first, unmounts last (and kills its rclone by PID if that fails).
SESSION = r"""
import hashlib, json, os, shutil, signal, subprocess, sys, time, urllib.request, urllib.error
args = json.loads(sys.argv[1])
mnt = args["dir"]
tm = [sys.executable, "-m", "tunnelmesh"]

def client_pids():
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith((b"rclone", b"mount.davfs")) and mnt.encode() in cmd:
                pids.append(int(pid))
    return pids

def sh(argv):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()[-400:]}

def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

def step(s):
    kind = s["do"]
    if kind == "mount":
        return sh(tm + ["share", "mount", s["share"], mnt, *s.get("args", [])])
    if kind == "cp":
        return sh(["cp", s["src"], s["dst"]])
    if kind == "mv":
        return sh(["mv", s["src"], s["dst"]])
    if kind == "rm":
        return sh(["rm", "-r", s["path"]])
    if kind == "mkdir":
        return sh(["mkdir", s["path"]])
    if kind == "ls":
        return {"names": sorted(os.listdir(s["path"]))}
    if kind == "sha":
        return {"sha": sha(s["path"])}
    if kind == "write":
        try:
            with open(s["path"], "wb") as f:
                f.write(b"x" * 1000)
            return {"rc": 0}
        except OSError as exc:
            return {"rc": 1, "err": exc.strerror}
    if kind == "http":
        req = urllib.request.Request(s["url"], data=s.get("body", "").encode() or None,
                                     method=s["method"])
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return {"status": resp.status}
        except urllib.error.HTTPError as exc:
            return {"status": exc.code}
        except (urllib.error.URLError, OSError) as exc:
            return {"error": str(getattr(exc, "reason", exc))}
    raise SystemExit(f"unknown step {kind}")

try:
    for s in args["steps"]:
        print(json.dumps(step(s)), flush=True)
finally:
    umount = sh(tm + ["share", "umount", mnt])
    time.sleep(0.5)
    left = client_pids()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    print(json.dumps({"umount": umount, "killed": left}), flush=True)
"""


def session(mesh: MeshLab, name: str, directory: Path, steps: list[dict[str, Any]]) -> list[Any]:
    """Run :data:`SESSION` in ``name``'s namespace; the steps' results, then the unmount's."""
    directory.mkdir()
    results = run_script(mesh, name, SESSION, {"dir": str(directory), "steps": steps}, timeout=600)
    assert len(results) == len(steps) + 1, results
    end = results[-1]
    assert end["killed"] == [] and end["umount"]["rc"] == 0, end
    return results[:-1]


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine")
def test_rclone_mount_of_a_webdav_share_through_the_mesh(mesh: MeshLab, tmp_path: Path) -> None:
    for tool in ("rclone", "fusermount3"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"{tool} is not installed (Debian: rclone, fuse3)")
    coord_sock = coordinator_joins(mesh, tmp_path, ("alice", "bob"))
    coord_ip = start_coordinator(mesh)
    start_peers(mesh, coord_sock, ("alice", "bob"))
    tm(mesh, "alice", "share", "create", "team", "--reader", "bob")

    big = tmp_path / "big.bin"
    data = os.urandom(50 * MiB)
    big.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    small = tmp_path / "small.txt"
    small.write_bytes(b"small file\n")
    a = tmp_path / "alice-mnt"
    (
        mounted, cp_big, cp_small, mkdir, mv, listed, inner, sha_back, cp_back, rm, after,
    ) = session(
        mesh,
        "alice",
        a,
        [
            {"do": "mount", "share": "team"},
            {"do": "cp", "src": str(big), "dst": f"{a}/big.bin"},
            {"do": "cp", "src": str(small), "dst": f"{a}/small.txt"},
            {"do": "mkdir", "path": f"{a}/docs"},
            {"do": "mv", "src": f"{a}/small.txt", "dst": f"{a}/docs/moved.txt"},
            {"do": "ls", "path": str(a)},
            {"do": "ls", "path": f"{a}/docs"},
            {"do": "sha", "path": f"{a}/big.bin"},
            {"do": "cp", "src": f"{a}/big.bin", "dst": str(tmp_path / "back.bin")},
            {"do": "rm", "path": f"{a}/docs"},
            {"do": "ls", "path": str(a)},
        ],
    )  # fmt: skip
    assert mounted["rc"] == 0, mounted
    assert "with rclone mount over WebDAV (FUSE)" in mounted["out"], mounted
    assert f"http://{coord_ip}:8080/team/" in mounted["out"], mounted
    for r in (cp_big, cp_small, mkdir, mv, cp_back, rm):
        assert r["rc"] == 0, r
    assert listed["names"] == ["big.bin", "docs"] and inner["names"] == ["moved.txt"]
    assert sha_back["sha"] == digest
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == digest
    assert after["names"] == ["big.bin"]
    # the file is an object over S3
    got = tmp_path / "got.bin"
    tm(mesh, "alice", "buckets", "get", "team", "big.bin", str(got))
    assert hashlib.sha256(got.read_bytes()).hexdigest() == digest

    # bob, read-only: reads, and every write fails; over HTTP the server answers 403
    b = tmp_path / "bob-mnt"
    url = f"http://{coord_ip}:8080/team"
    lan = f"http://{mesh.coord_host.address}:8080/team/big.bin"  # not the mesh IP
    mounted, sha_bob, cp_in, write, mkdir, rm, mv, put, delete, off_mesh = session(
        mesh,
        "bob",
        b,
        [
            {"do": "mount", "share": "team"},
            {"do": "sha", "path": f"{b}/big.bin"},
            {"do": "cp", "src": str(small), "dst": f"{b}/bob.txt"},
            {"do": "write", "path": f"{b}/big.bin"},
            {"do": "mkdir", "path": f"{b}/bobdir"},
            {"do": "rm", "path": f"{b}/big.bin"},
            {"do": "mv", "src": f"{b}/big.bin", "dst": f"{b}/stolen.bin"},
            {"do": "http", "method": "PUT", "url": f"{url}/bob.txt", "body": "mine"},
            {"do": "http", "method": "DELETE", "url": f"{url}/big.bin"},
            {"do": "http", "method": "GET", "url": lan},
        ],
    )
    assert mounted["rc"] == 0 and "rclone" in mounted["out"], mounted
    assert sha_bob["sha"] == digest
    for r in (cp_in, write, mkdir, rm, mv):
        assert r["rc"] != 0, r
    assert put == {"status": 403} and delete == {"status": 403}
    assert "refused" in off_mesh.get("error", ""), off_mesh  # WebDAV is on the mesh IP only
    # nothing changed on the server (rclone's own directory cache may show the refused names
    # until it expires: that is the client's view, not the share)
    objects = tm(mesh, "alice", "buckets", "objects", "team", "-r").stdout
    assert "big.bin" in objects and "bob" not in objects and "stolen" not in objects, objects
    tm(mesh, "alice", "buckets", "get", "team", "big.bin", str(got))
    assert hashlib.sha256(got.read_bytes()).hexdigest() == digest

    # kernel NFS, `share mount`'s first choice: where this kernel has an NFS client and
    # mount.nfs exists, a real kernel mount of the share; elsewhere a clear refusal
    from tunnelmesh_s3.mount import kernel_has_nfs

    n = tmp_path / "alice-nfs"
    if kernel_has_nfs() and shutil.which("mount.nfs"):
        mounted, sha_n, cp_n = session(
            mesh,
            "alice",
            n,
            [
                {"do": "mount", "share": "team", "args": ["--client", "nfs"]},
                {"do": "sha", "path": f"{n}/big.bin"},
                {"do": "cp", "src": str(small), "dst": f"{n}/via-nfs.txt"},
            ],
        )
        assert mounted["rc"] == 0 and "with kernel NFS" in mounted["out"], mounted
        assert sha_n["sha"] == digest and cp_n["rc"] == 0, (sha_n, cp_n)
    else:
        n.mkdir()
        peer = mesh.peers["alice"]
        refused = peer.host.run(
            [
                sys.executable,
                "-m",
                "tunnelmesh",
                "share",
                "mount",
                "team",
                str(n),
                "--client",
                "nfs",
            ],
            check=False,
            timeout=60,
            env=mesh.env(peer.home),
        )
        assert refused.returncode != 0, refused
        text = refused.stdout + refused.stderr
        assert "nfs: " in text and ("no NFS client" in text or "mount.nfs is missing" in text), text
    # the command it would run, without running it
    dry = tm(mesh, "alice", "share", "mount", "team", str(n), "--dry-run").stdout
    if kernel_has_nfs() and shutil.which("mount.nfs"):
        assert dry.startswith("# nfs\n") and f"{coord_ip}:/team" in dry, dry
    else:
        assert dry.startswith("# rclone\n") and f"http://{coord_ip}:8080/team/" in dry, dry

    # davfs2, the last resort of `share mount`, when installed
    if subprocess.run(["which", "mount.davfs"], capture_output=True).returncode != 0:
        return
    d = tmp_path / "alice-davfs"
    mounted, sha_d, cp_d, mkdir_d = session(
        mesh,
        "alice",
        d,
        [
            {"do": "mount", "share": "team", "args": ["--client", "davfs2"]},
            {"do": "sha", "path": f"{d}/big.bin"},
            {"do": "cp", "src": str(small), "dst": f"{d}/via-davfs2.txt"},
            {"do": "mkdir", "path": f"{d}/davdir"},
        ],
    )
    assert mounted["rc"] == 0 and "with davfs2 over WebDAV" in mounted["out"], mounted
    assert sha_d["sha"] == digest
    assert cp_d["rc"] == 0 and mkdir_d["rc"] == 0, (cp_d, mkdir_d)
    via = tmp_path / "via.txt"
    tm(mesh, "alice", "buckets", "get", "team", "via-davfs2.txt", str(via))
    assert via.read_bytes() == small.read_bytes()
