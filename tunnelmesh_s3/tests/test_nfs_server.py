"""The asyncio driver over loopback: hostile streams are closed and counted, the service keeps
serving, connections and in-flight calls are bounded."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest
from tunnelmesh_s3.auth import FileAuthorizer, Principal
from tunnelmesh_s3.filesystem import FilesystemStorage
from tunnelmesh_s3.metrics import NfsCollector
from tunnelmesh_s3.nfs import server as nfs_server
from tunnelmesh_s3.nfs.ops import NfsService
from tunnelmesh_s3.nfs.server import NfsServer
from tunnelmesh_s3.shareaccess import ShareAccess


def w(*words: int) -> bytes:
    return b"".join(struct.pack(">I", x) for x in words)


NULL_CALL = w(7, 0, 2, 100003, 3, 0, 0, 0, 0, 0)  # NFS NULL, AUTH_NONE


def mark(body: bytes) -> bytes:
    return struct.pack(">I", 0x8000_0000 | len(body)) + body


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    (m,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(m & 0x7FFF_FFFF)


def test_hostile_streams_are_closed_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nfs_server, "MAX_CONNECTIONS", 3)

    async def main() -> None:
        storage = FilesystemStorage(tmp_path / "objects")
        await storage.start()
        auth = FileAuthorizer(tmp_path / "auth.json")
        who = {"127.0.0.1": Principal("alice", peer_id="A")}
        service = NfsService(ShareAccess(storage, auth, who.get), tmp_path / "nfs")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        server = NfsServer(service, sock)
        await server.start()
        port = server.port
        try:
            # a record header announcing 2 GiB: closed at once, nothing buffered
            r, wr = await asyncio.open_connection("127.0.0.1", port)
            wr.write(struct.pack(">I", 0xFFFF_FFFF))
            await wr.drain()
            assert await asyncio.wait_for(r.read(), 10) == b""  # EOF: the server closed
            wr.close()
            # an RPC version 3 call: denied (RPC_MISMATCH), and the connection goes on
            r, wr = await asyncio.open_connection("127.0.0.1", port)
            wr.write(mark(w(9, 0, 3, 100003, 3, 0, 0, 0, 0, 0)) + mark(NULL_CALL))
            assert await _read_reply(r) == w(9, 1, 1, 0, 2, 2)
            assert await _read_reply(r) == w(7, 1, 0, 0, 0, 0)  # NULL: SUCCESS, void
            # too many connections: the fourth is closed (3 open: this one and two idle)
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)
            r4, w4 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r4.read(), 10) == b""
            w4.close()
            for _, iw in idle:
                iw.close()
            # the first connection still serves
            wr.write(mark(NULL_CALL))
            assert await _read_reply(r) == w(7, 1, 0, 0, 0, 0)
            wr.close()
            events = dict(server.counters)
            assert events == {"accepted": 4, "refused": 1, "broken": 1, "call_rejected": 1}
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in NfsCollector(service.calls, server.counters).samples()
                for s in fam.samples
            }
            assert (
                samples[
                    ("tunnelmesh_nfs_calls_total", (("procedure", "nfs_null"), ("status", "ok")))
                ]
                == 2
            )
            assert samples[("tunnelmesh_nfs_connection_events_total", (("event", "broken"),))] == 1
        finally:
            await server.aclose()
            await service.aclose()
            await storage.aclose()

    asyncio.run(main())
