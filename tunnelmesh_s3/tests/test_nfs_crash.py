"""SIGKILL the NFS server in the middle of writes: each file is absent or whole after.

The server runs as its own process on loopback (a store, share ``docs``, NFS on a free port);
``nfs-cp`` writes a new file and libnfs (``libnfs_ops.py put``) overwrites an existing one with
``O_TRUNC``; once both are staged half way the server gets SIGKILL. The store, opened again,
has no new file and the old content of the overwritten one (the namespace lab does the same
through the real mesh: tests/test_e2e_nfs_mesh_lab.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tunnelmesh_s3.filesystem import FilesystemStorage

pytestmark = pytest.mark.skipif(
    shutil.which("nfs-cp") is None, reason="needs libnfs-utils (scripts/system-deps.sh)"
)

MiB = 1024 * 1024
OPS = Path(__file__).with_name("libnfs_ops.py")

SERVER = r"""
import asyncio, socket, sys
from pathlib import Path
from tunnelmesh_s3.filesystem import FilesystemStorage
from tunnelmesh_s3.auth import BucketAcl, FileAuthorizer, Principal, Share
from tunnelmesh_s3.nfs.ops import NfsService
from tunnelmesh_s3.nfs.server import NfsServer
from tunnelmesh_s3.shareaccess import ShareAccess

async def main():
    root = Path(sys.argv[1])
    storage = FilesystemStorage(root / "objects")
    await storage.start()
    auth = FileAuthorizer(root / "auth.json")
    if auth.share("docs") is None:
        await storage.create_bucket("docs")
        await auth.put_share(Share(name="docs", owner="A", created=0), BucketAcl(owner="A"))
    who = {"127.0.0.1": Principal("alice", peer_id="A")}
    service = NfsService(ShareAccess(storage, auth, who.get), root / "nfs")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    server = NfsServer(service, sock)
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start(root: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"server did not start: {line!r}"
    return proc, int(line)


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read(root: Path, key: str) -> bytes | None:
    storage = FilesystemStorage(root / "objects")
    await storage.start()
    try:
        names = [o.key for o in (await storage.list_objects("docs")).objects]
        if key not in names:
            return None
        reader = await storage.open_object("docs", key)
        try:
            return b"".join([c async for c in reader.stream()])
        finally:
            await reader.aclose()
    finally:
        await storage.aclose()


def test_sigkill_mid_write_leaves_files_absent_or_whole(tmp_path: Path) -> None:
    old = os.urandom(20 * MiB)
    new = tmp_path / "new.bin"
    new.write_bytes(os.urandom(60 * MiB))
    proc, port = start(tmp_path)
    copies: list[subprocess.Popen[bytes]] = []
    try:
        url = f"nfs://127.0.0.1/docs/%s?nfsport={port}&mountport={port}"
        root = f"nfs://127.0.0.1/docs?nfsport={port}&mountport={port}"
        src = tmp_path / "old.bin"
        src.write_bytes(old)
        subprocess.run(["nfs-cp", str(src), url % "old.bin"], check=True, timeout=60)
        copies = [
            subprocess.Popen(["nfs-cp", str(new), url % "fresh.bin"]),
            subprocess.Popen([sys.executable, str(OPS), root, "put", str(new), "/old.bin"]),
        ]
        staging = tmp_path / "nfs" / "staging"
        deadline = time.monotonic() + 60
        while True:
            sizes = [f.stat().st_size for f in staging.glob("*")] if staging.is_dir() else []
            if len(sizes) == 2 and min(sizes) > 10 * MiB:
                break
            assert time.monotonic() < deadline, f"copies not under way: {sizes}"
            time.sleep(0.02)
        running = [c.poll() is None for c in copies]
        kill(proc)
    finally:
        kill(proc)
        for c in copies:  # libnfs retries a dead server forever
            if c.poll() is None:
                c.kill()
            c.wait(10)
    assert all(running), running  # both were mid-write when the server died
    fresh = asyncio.run(_read(tmp_path, "fresh.bin"))
    assert fresh is None  # absent
    after = asyncio.run(_read(tmp_path, "old.bin"))
    assert after is not None and hashlib.sha256(after).digest() == hashlib.sha256(old).digest()
    # and a server started again on the same directory serves the old file, staging emptied
    proc, port = start(tmp_path)
    try:
        back = tmp_path / "back.bin"
        url = f"nfs://127.0.0.1/docs/%s?nfsport={port}&mountport={port}"
        subprocess.run(["nfs-cp", url % "old.bin", str(back)], check=True, timeout=60)
        assert back.read_bytes() == old
        assert list((tmp_path / "nfs" / "staging").iterdir()) == []
    finally:
        kill(proc)
