"""Real NFS clients against the server on loopback: libnfs's nfs-ls, nfs-cp, nfs-cat (Debian
libnfs-utils) and libnfs itself for mkdir/rename/unlink/rmdir (:mod:`libnfs_ops`).

The server runs in the test's event loop; the tools are subprocesses. Who the caller is comes
from the source address; on loopback every connection comes from 127.0.0.1, so the test says
who 127.0.0.1 is before each step (the mesh lab, ``tests/test_e2e_nfs_lab.py``, uses real peers).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from tunnelmesh_s3.auth import BucketAcl, FileAuthorizer, Principal, Share
from tunnelmesh_s3.filesystem import FilesystemStorage
from tunnelmesh_s3.nfs.ops import NfsService
from tunnelmesh_s3.nfs.server import NfsServer
from tunnelmesh_s3.shareaccess import ShareAccess

pytestmark = pytest.mark.skipif(
    shutil.which("nfs-cp") is None,
    reason="needs libnfs-utils (nfs-ls, nfs-cp: scripts/system-deps.sh)",
)

OPS = Path(__file__).with_name("libnfs_ops.py")
MiB = 1024 * 1024
PEERS = {
    "alice": Principal("alice", peer_id="ALICEKEY"),
    "bob": Principal("bob", peer_id="BOBKEY"),
    "carol": Principal("carol", peer_id="CAROLKEY"),
}


async def _tool(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(errors="replace")


def _uvloop_run(coro: Coroutine[Any, Any, None]) -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(coro)


# uvloop: the loop the coordinator's own peer serves shares on (its transports are no
# asyncio.Transport subclasses: an isinstance check refused every mount there)
@pytest.mark.parametrize("run", [asyncio.run, _uvloop_run], ids=["asyncio", "uvloop"])
def test_libnfs_tools_round_trip(
    tmp_path: Path, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(5 * MiB + 123))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()

    async def main() -> None:
        storage = FilesystemStorage(tmp_path / "objects")
        await storage.start()
        auth = FileAuthorizer(tmp_path / "auth.json")
        await storage.create_bucket("docs")
        await auth.put_share(
            Share(name="docs", owner="ALICEKEY", created=0),
            BucketAcl(owner="ALICEKEY", read=["BOBKEY"]),
        )
        who = {"127.0.0.1": PEERS["alice"]}
        service = NfsService(ShareAccess(storage, auth, who.get), tmp_path / "nfs")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        server = NfsServer(service, sock)
        await server.start()
        port = server.port
        url = f"nfs://127.0.0.1/docs/%s?nfsport={port}&mountport={port}"
        root = f"nfs://127.0.0.1/docs?nfsport={port}&mountport={port}"
        try:
            rc, out = await _tool("nfs-cp", str(src), url % "big.bin")
            assert rc == 0, out
            info = await storage.head_object("docs", "big.bin")  # an object, committed whole
            assert info.size == src.stat().st_size
            rc, out = await _tool("nfs-ls", root)
            assert rc == 0 and "big.bin" in out and str(info.size) in out, out
            back = tmp_path / "back.bin"
            rc, out = await _tool("nfs-cp", url % "big.bin", str(back))
            assert rc == 0, out
            assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
            rc, out = await _tool("nfs-cat", url % "big.bin")
            assert rc == 0

            # directories, rename, remove through libnfs
            async def op(*args: str) -> tuple[int, str]:
                return await _tool(sys.executable, str(OPS), root, *args)

            assert await op("mkdir", "/dir") == (0, "")
            assert (await op("rename", "/big.bin", "/dir/moved.bin"))[0] == 0
            rc, out = await _tool("nfs-ls", "-R", root)
            assert "dir/moved.bin" in out and "big.bin\n" not in out, out
            rc, out = await op("rmdir", "/dir")
            assert rc == 1 and "NOTEMPTY" in out
            assert (await op("unlink", "/dir/moved.bin"))[0] == 0
            assert (await op("rmdir", "/dir"))[0] == 0
            assert [o.key for o in (await storage.list_objects("docs")).objects] == []

            # a read-only member: reads, but cannot write (nothing is stored)
            await storage.put_object("docs", "ro.txt", _one(b"read me"))
            who["127.0.0.1"] = PEERS["bob"]
            rc, out = await _tool("nfs-cat", url % "ro.txt")
            assert rc == 0 and out == "read me", out
            rc, out = await _tool("nfs-cp", str(src), url % "nope.bin")
            assert rc != 0 and "ACCES" in out, out
            assert (await op("mkdir", "/nope"))[0] == 1
            assert (await op("unlink", "/ro.txt"))[0] == 1
            keys = [o.key for o in (await storage.list_objects("docs")).objects]
            assert keys == ["ro.txt"]

            # a non-member cannot mount: MNT3ERR_ACCES
            who["127.0.0.1"] = PEERS["carol"]
            rc, out = await _tool("nfs-ls", root)
            assert rc != 0 and "MNT3ERR_ACCES" in out, out
        finally:
            await server.aclose()
            await service.aclose()
            await storage.aclose()

    run(main())


async def _one(data: bytes):  # type: ignore[no-untyped-def]
    yield data
