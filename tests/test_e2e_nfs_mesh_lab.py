"""Shares over NFSv3 through the real mesh, in the namespace lab, with libnfs's own tools.

``tunnelmesh serve`` with ``join_mesh:`` and ``s3: {enabled: true}`` serves the shares over NFSv3
on its mesh IP, port 2049 (MOUNT on the same port: the URL names both ports, no portmapper).
Three ``tunnelmesh join`` peers (TUN, UDP transport); alice owns share ``team``, bob may read it,
carol is no member:

* alice, from her namespace: ``nfs-cp`` a 50 MiB file in and out (sha256-exact), ``nfs-ls``
  lists it, boto3 reads the same object over S3 with her S3 credential; mkdir, rename and
  unlink through libnfs (``tunnelmesh_s3/tests/libnfs_ops.py``, ctypes on libnfs.so);
* bob reads (``nfs-cat``) and every write fails with a permission error, changing nothing;
* carol's mount is refused with MNT3ERR_ACCES;
* ``kill -9`` of the coordinator while alice copies two files over NFS (``nfs-cp`` to a new
  name, and libnfs opening the 50 MiB file with ``O_TRUNC`` and writing it over): after a
  restart each is absent or whole (the new one absent, the replaced one the old file).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_s3")
pytest.importorskip("boto3")

from coordinator_peer import (
    coordinator_joins,
    exports,
    mesh_lab,  # noqa: F401  (the fixture mesh)
    run_script,
    start_coordinator,
    start_peers,
    tm,
    wait_linked,
)
from test_e2e_server_peer_lab import poll
from tunnelmesh.testing.mesh import MeshLab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        subprocess.run(["which", "nfs-cp"], capture_output=True).returncode != 0,
        reason="needs libnfs-utils (nfs-ls, nfs-cp, nfs-cat: scripts/system-deps.sh)",
    ),
]

MiB = 1024 * 1024
NFS_UP = r"nfs: serving shares on"
OPS = Path(__file__).parents[1] / "tunnelmesh_s3" / "tests" / "libnfs_ops.py"

# One peer's steps inside its namespace; argv[1]: {"steps": [...]}; one JSON line per step.
SESSION = r"""
import hashlib, json, os, subprocess, sys
args = json.loads(sys.argv[1])

def sh(argv):
    p = subprocess.run(argv, capture_output=True, timeout=300)
    return {"rc": p.returncode, "out": p.stdout.decode(errors="replace")[-2000:],
            "err": p.stderr.decode(errors="replace")[-800:]}

def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

def boto(s):
    import boto3
    from botocore.config import Config
    c = boto3.client("s3", config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
    body = c.get_object(Bucket=s["bucket"], Key=s["key"])["Body"]
    h = hashlib.sha256()
    while chunk := body.read(1 << 20):
        h.update(chunk)
    return {"sha": h.hexdigest()}

for s in args["steps"]:
    kind = s.pop("do")
    if kind == "sh":
        r = sh(s["argv"])
    elif kind == "sha":
        r = {"sha": sha(s["path"])}
    elif kind == "boto":
        r = boto(s)
    print(json.dumps(r), flush=True)
"""


def session(
    mesh: MeshLab, name: str, steps: list[dict[str, Any]], env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    results = run_script(mesh, name, SESSION, {"steps": steps}, timeout=900, env=env)
    assert len(results) == len(steps), results
    return results


def test_nfs_shares_through_the_mesh(mesh: MeshLab, tmp_path: Path) -> None:
    names = ("alice", "bob", "carol")
    coord_sock = coordinator_joins(mesh, tmp_path, names)
    ip = start_coordinator(mesh, NFS_UP)
    start_peers(mesh, coord_sock, names)
    tm(mesh, "alice", "share", "create", "team", "--reader", "bob")
    info = json.loads(tm(mesh, "alice", "share", "info", "team", "--json").stdout)
    assert info["name"] == "team"

    root = f"nfs://{ip}/team?nfsport=2049&mountport=2049"
    url = f"nfs://{ip}/team/%s?nfsport=2049&mountport=2049"
    big = tmp_path / "big.bin"
    data = os.urandom(50 * MiB)
    big.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    back = tmp_path / "back.bin"
    ops = [sys.executable, str(OPS), root]
    s3env = exports(tm(mesh, "alice", "s3", "credentials", "--format", "env").stdout)

    t0 = time.monotonic()
    cp_in, ls, cp_out, sha_back, via_s3, mkdir, rename, ls_r, unlink, ls_after = session(
        mesh,
        "alice",
        [
            {"do": "sh", "argv": ["nfs-cp", str(big), url % "big.bin"]},
            {"do": "sh", "argv": ["nfs-ls", root]},
            {"do": "sh", "argv": ["nfs-cp", url % "big.bin", str(back)]},
            {"do": "sha", "path": str(back)},
            {"do": "boto", "bucket": "team", "key": "big.bin"},
            {"do": "sh", "argv": [*ops, "mkdir", "/docs"]},
            {"do": "sh", "argv": [*ops, "rename", "/big.bin", "/docs/moved.bin"]},
            {"do": "sh", "argv": ["nfs-ls", "-R", root]},
            {"do": "sh", "argv": [*ops, "unlink", "/docs/moved.bin"]},
            {"do": "sh", "argv": ["nfs-ls", root]},
        ],
        env=s3env,
    )
    took = time.monotonic() - t0
    assert cp_in["rc"] == 0 and cp_out["rc"] == 0, (cp_in, cp_out)
    assert "big.bin" in ls["out"] and str(50 * MiB) in ls["out"], ls
    assert sha_back["sha"] == digest
    assert via_s3["sha"] == digest  # the same object over S3, read with boto3
    for r in (mkdir, rename, unlink):
        assert r["rc"] == 0, r
    assert "docs/moved.bin" in ls_r["out"] and "\nbig.bin" not in "\n" + ls_r["out"], ls_r
    assert "docs" in ls_after["out"] and "moved.bin" not in ls_after["out"], ls_after
    print(f"alice's NFS session (50 MiB in and out, S3 read, dir ops): {took:.1f} s")

    # the 50 MiB file again, for bob and for the crash below
    (cp_in,) = session(mesh, "alice", [{"do": "sh", "argv": ["nfs-cp", str(big), url % "big.bin"]}])
    assert cp_in["rc"] == 0, cp_in

    # bob, read-only: reads; every write fails with a permission error and changes nothing
    small = tmp_path / "small.txt"
    small.write_bytes(b"bob was here\n")
    bob_ops = [sys.executable, str(OPS), root]
    cat, cp_ro, mkdir_ro, rm_ro, mv_ro = session(
        mesh,
        "bob",
        [
            {"do": "sh", "argv": ["nfs-ls", root]},
            {"do": "sh", "argv": ["nfs-cp", str(small), url % "bob.txt"]},
            {"do": "sh", "argv": [*bob_ops, "mkdir", "/bobdir"]},
            {"do": "sh", "argv": [*bob_ops, "unlink", "/big.bin"]},
            {"do": "sh", "argv": [*bob_ops, "rename", "/big.bin", "/stolen.bin"]},
        ],
    )
    assert cat["rc"] == 0 and "big.bin" in cat["out"], cat
    assert cp_ro["rc"] != 0 and "ACCES" in cp_ro["out"] + cp_ro["err"], cp_ro
    for r in (mkdir_ro, rm_ro, mv_ro):
        assert r["rc"] != 0 and "ACCES" in r["err"], r
    objects = tm(mesh, "alice", "buckets", "objects", "team", "-r").stdout
    assert "big.bin" in objects and "bob" not in objects and "stolen" not in objects, objects

    # carol, no member: her mount is refused
    (carol,) = session(mesh, "carol", [{"do": "sh", "argv": ["nfs-ls", root]}])
    assert carol["rc"] != 0 and "MNT3ERR_ACCES" in carol["out"] + carol["err"], carol

    # kill -9 of the coordinator mid-write: a new file and an overwrite of big.bin, both copying
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(100 * MiB))
    other_digest = hashlib.sha256(other.read_bytes()).hexdigest()
    alice = mesh.peers["alice"]
    copies = [  # nfs-cp creates (O_EXCL); libnfs_ops put overwrites (O_TRUNC), as cp would
        alice.host.popen(argv, env=mesh.env(alice.home), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
        for argv in (["nfs-cp", str(other), url % "new.bin"], [*ops, "put", str(other), "/big.bin"])
    ]  # fmt: skip
    staging = tmp_path / "coord-state" / "s3" / "nfs" / "staging"

    def both_staged() -> bool:
        files = list(staging.glob("*")) if staging.is_dir() else []
        return len(files) == 2 and all(f.stat().st_size > 10 * MiB for f in files)

    poll(both_staged, 120, "two NFS copies under way")
    running = [p.poll() is None for p in copies]
    assert mesh.coordinator is not None
    mesh.coordinator.proc.kill()  # SIGKILL
    mesh.coordinator.proc.wait(10)
    mesh.coordinator = None
    assert any(running), "both copies had finished before the kill: nothing was mid-write"
    for p in copies:  # libnfs keeps reconnecting to a dead server: stop the copies (by PID)
        if p.poll() is None:
            p.kill()
        p.wait(30)
    start_coordinator(mesh, NFS_UP)
    wait_linked(mesh, coord_sock, names, 60)
    got_new, got_big = tmp_path / "got-new.bin", tmp_path / "got-big.bin"
    ls_crash, cp_new, cp_big = session(
        mesh,
        "alice",
        [
            {"do": "sh", "argv": ["nfs-ls", root]},
            {"do": "sh", "argv": ["nfs-cp", url % "new.bin", str(got_new)]},
            {"do": "sh", "argv": ["nfs-cp", url % "big.bin", str(got_big)]},
        ],
    )
    assert ls_crash["rc"] == 0, ls_crash
    # absent or whole: new.bin is not there (or, had its copy committed before the kill,
    # all of other.bin); big.bin is all of the old file or all of the new one, never a mix
    if "new.bin" in ls_crash["out"]:
        assert not running[0], "new.bin appeared although its copy was cut"
        assert hashlib.sha256(got_new.read_bytes()).hexdigest() == other_digest
    else:
        assert cp_new["rc"] != 0
    assert cp_big["rc"] == 0, cp_big
    big_after = hashlib.sha256(got_big.read_bytes()).hexdigest()
    assert big_after in (digest, other_digest), "big.bin is neither the old nor the new file"
    print(f"kill -9 mid-write: copies running {running}; new.bin "
          f"{'present' if 'new.bin' in ls_crash['out'] else 'absent'}, big.bin "
          f"{'old' if big_after == digest else 'new'}")  # fmt: skip
