"""NFS on a coordinator's S3 service (loopback): where it listens, what it announces, who it
refuses. The callers by mesh IP, through a real mesh, are the lab's (tests/test_e2e_nfs_mesh_lab.py).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_s3_mesh import CoordinatorThread, join, server_config
from tunnelmesh.config import JoinMesh
from tunnelmesh_s3.config import S3Section


def w(*words: int) -> bytes:
    return b"".join(struct.pack(">I", x) for x in words)


def mnt_call(host: str, port: int, path: bytes) -> bytes:
    """One MOUNT v3 MNT call (AUTH_NONE) over TCP; the reply record."""
    body = w(1, 0, 2, 100005, 3, 1, 0, 0, 0, 0, len(path)) + path + b"\0" * (-len(path) % 4)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(struct.pack(">I", 0x8000_0000 | len(body)) + body)
        (mark,) = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))
        return s.recv(mark & 0x7FFF_FFFF, socket.MSG_WAITALL)


def test_nfs_listens_where_configured_and_refuses_non_peers(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "coord-home"))
    with CoordinatorThread(server_config(tmp_path / "state", nfs_listen="127.0.0.1:0")) as coord:
        alice = join(coord, tmp_path, "alice")
        alice.cli("buckets", "create", "team")
        alice.cli("share", "create", "team")
        nfs = coord.s3.nfs
        assert nfs is not None and nfs.address.startswith("127.0.0.1:")
        info = coord.s3.info()
        assert info.nfs == nfs.address
        port = nfs.port
        # 127.0.0.1 is no peer's mesh IP: MNT3ERR_ACCES, whatever the share
        reply = mnt_call("127.0.0.1", port, b"/team")
        assert reply == w(1, 1, 0, 0, 0, 0, 13)  # accepted, SUCCESS, MNT3ERR_ACCES
        # the same service answers NFS NULL and PMAP GETPORT on that port
        assert nfs.service is not None and nfs.service.port() == port
        service = coord.s3
    assert service.nfs is None and nfs.service is None  # stopped with the coordinator


def test_nfs_off_and_default_on_the_mesh_ip(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "coord-home"))
    with CoordinatorThread(server_config(tmp_path / "off", nfs_port=0)) as coord:
        assert coord.s3.nfs is None and coord.s3.info().nfs == ""
    # with join_mesh and no nfs_listen: the coordinator's mesh IP (IP_FREEBIND), nothing else.
    # Nothing is sent to that address from here.
    port = random.randint(20000, 60000)
    config = server_config(tmp_path / "state", listen="", port=port + 1, nfs_port=port)
    config.join_mesh = JoinMesh(name="hub", private_key=str(tmp_path / "hub_key"))
    with CoordinatorThread(config) as coord:
        ip = coord.server.coordinator.own_mesh_ip()
        assert ip is not None

        async def listening() -> str:
            for _ in range(200):
                if coord.s3.nfs is not None and coord.s3.nfs.address:
                    return coord.s3.nfs.address
                await asyncio.sleep(0.05)
            return ""

        assert coord.call(listening()) == f"{ip}:{port}"
        assert coord.s3.info().nfs == f"{ip}:{port}"


def test_nfs_port_is_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="nfs_port"):
        msgspec.convert({"nfs_port": 70000}, S3Section)
