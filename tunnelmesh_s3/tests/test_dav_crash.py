"""SIGKILL the WebDAV server in the middle of a PUT: the file is the old one whole, or absent."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tunnelmesh.errors import NoSuchKey
from tunnelmesh_s3.filesystem import FilesystemStorage

MiB = 1024 * 1024
DAVKIT = Path(__file__).with_name("davkit.py")


def start(root: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(DAVKIT), str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    m = re.match(r"listening (\d+)", proc.stdout.readline())
    assert m, "the server did not start"
    return proc, int(m.group(1))


def put_half(port: int, path: str, size: int) -> http.client.HTTPConnection:
    """Start a PUT of ``size`` bytes and send half of them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("PUT", path)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    chunk = os.urandom(MiB)
    for _ in range(size // MiB // 2):
        conn.send(chunk)
    return conn


def stop(proc: subprocess.Popen[str], sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(30)
    assert proc.stdout is not None
    proc.stdout.close()


async def stored(root: Path, key: str) -> bytes | None:
    async with FilesystemStorage(root / "objects") as storage:
        try:
            async with await storage.open_object("team", key) as r:
                return b"".join([c async for c in r.stream()])
        except NoSuchKey:
            return None


@pytest.mark.slow
def test_sigkill_mid_put_leaves_the_old_file_whole_or_none(tmp_path: Path) -> None:
    old = os.urandom(3 * MiB + 5)
    proc, port = start(tmp_path)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("PUT", "/team/kept.bin", body=old)
        assert conn.getresponse().status == 201
        conn.close()
        replacing = put_half(port, "/team/kept.bin", 64 * MiB)
        fresh = put_half(port, "/team/new.bin", 64 * MiB)
        time.sleep(1.0)  # the halves reach the server's store (or not: either must be safe)
    finally:
        stop(proc, signal.SIGKILL)
    replacing.close()
    fresh.close()
    kept = asyncio.run(stored(tmp_path, "kept.bin"))
    assert kept is not None and hashlib.sha256(kept).digest() == hashlib.sha256(old).digest()
    assert asyncio.run(stored(tmp_path, "new.bin")) is None
    # and the server starts again on the same store, serving the old file
    proc, port = start(tmp_path)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/team/kept.bin")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == old
        conn.request("GET", "/team/new.bin")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
        conn.close()
    finally:
        stop(proc, signal.SIGTERM)
