"""The SSH transport's authentication both ways, its refusals, and OpenSSH interoperation."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from tunnelmesh.abc import Link
from tunnelmesh.errors import TransportError
from tunnelmesh.identity import Identity
from tunnelmesh.registry import Registry
from tunnelmesh.testing.conformance import make_packet
from tunnelmesh_ssh.proto import FrameDecoder, encode_frames
from tunnelmesh_ssh.transport import SshTransport

from tunnelmesh_ssh import plugin


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_entry_point_loads() -> None:
    (ep,) = [e for e in entry_points(group="tunnelmesh") if e.name == "ssh"]
    assert ep.load() is plugin
    reg = Registry()
    plugin.tunnelmesh_register_transports(reg)
    assert reg.transports == {"ssh": SshTransport}


class Pair:
    def __init__(self) -> None:
        self.a, self.b = Identity.generate(), Identity.generate()
        self.server = SshTransport(self.b, "b", listen="127.0.0.1:0")
        self.incoming: list[Link] = []

    async def __aenter__(self) -> Pair:
        await self.server.listen(self.incoming.append)
        self.endpoint = f"127.0.0.1:{self.server.local_address[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.aclose()


def test_server_refuses_unknown_names_and_wrong_keys() -> None:
    async def main() -> None:
        async with Pair() as p:
            client = SshTransport(p.a, "a", listen="127.0.0.1:0")
            # "a" is not a known peer of the server yet
            with pytest.raises(TransportError, match="refused our key"):
                await client.dial("b", [p.endpoint], public_key=p.b.public_raw)
            # "a" is known, but with another key: an impostor using the name
            p.server.update_peer("a", public_key=Identity.generate().public_raw)
            with pytest.raises(TransportError, match="refused our key"):
                await client.dial("b", [p.endpoint], public_key=p.b.public_raw)
            p.server.update_peer("a", public_key=p.a.public_raw)
            link = await client.dial("b", [p.endpoint], public_key=p.b.public_raw)
            assert link.peer == "b"
            # forgetting the peer refuses new logins
            p.server.update_peer("a")
            with pytest.raises(TransportError, match="refused our key"):
                await client.dial("b", [p.endpoint], public_key=p.b.public_raw)
            await client.aclose()
            assert p.incoming and p.incoming[0].peer == "a"

    run(main())


def test_dial_needs_a_key_and_pins_it() -> None:
    async def main() -> None:
        async with Pair() as p:
            p.server.update_peer("a", public_key=p.a.public_raw)
            client = SshTransport(p.a, "a", listen="127.0.0.1:0")
            with pytest.raises(TransportError, match="no public key known"):
                await client.dial("b", [p.endpoint])
            client.update_peer("b", public_key=Identity.generate().public_raw)
            with pytest.raises(TransportError, match="host key is not b's identity key"):
                await client.dial("b", [p.endpoint])
            client.update_peer("b", public_key=p.b.public_raw)
            link = await client.dial("b", [p.endpoint])
            await link.aclose()
            await client.aclose()

    run(main())


def test_only_the_tunnelmesh_subsystem_is_served() -> None:
    async def main() -> None:
        async with Pair() as p:
            p.server.update_peer("a", public_key=p.a.public_raw)
            key = asyncssh.import_private_key(
                p.a.private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                )
            )
            host, port = p.endpoint.rsplit(":", 1)
            async with asyncssh.connect(
                host,
                int(port),
                username="a",
                client_keys=[key],
                known_hosts=None,
                agent_path=None,
                config=None,
            ) as conn:
                for kwargs in ({"command": "id"}, {}, {"subsystem": "sftp"}):
                    with pytest.raises(asyncssh.ChannelOpenError):
                        await conn.create_session(asyncssh.SSHClientSession, **kwargs)
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", 22)
            assert p.incoming == []

    run(main())


def test_remote_close_closes_the_other_end() -> None:
    async def main() -> None:
        async with Pair() as p:
            p.server.update_peer("a", public_key=p.a.public_raw)
            client = SshTransport(p.a, "a", listen="127.0.0.1:0")
            link = await client.dial("b", [p.endpoint], public_key=p.b.public_raw)
            link.send_batch([make_packet(1, 100)])
            for _ in range(200):
                if p.incoming:
                    break
                await asyncio.sleep(0.01)
            remote = p.incoming[0]
            assert await remote.recv_batch() == [make_packet(1, 100)]
            await client.aclose()
            with pytest.raises(TransportError):
                await asyncio.wait_for(remote.recv_batch(), 10)

    run(main())


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (openssh-client)")
def test_openssh_client_interoperates(tmp_path: Path) -> None:
    """OpenSSH's own client checks our host key and logs in with the peer's key file."""

    async def main() -> None:
        async with Pair() as p:
            p.server.update_peer("a", public_key=p.a.public_raw)
            key = tmp_path / "id_a"
            p.a.save(key)
            known = tmp_path / "known_hosts"
            host, port = p.endpoint.rsplit(":", 1)
            known.write_text(f"[{host}]:{port} {p.b.public_openssh}\n")
            base = [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(key),
                "-p",
                port,
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "LogLevel=ERROR",
            ]
            frame = encode_frames([make_packet(7, 300)])
            proc = await asyncio.create_subprocess_exec(
                *base,
                "-s",
                f"a@{host}",
                "tunnelmesh",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(frame)
            await proc.stdin.drain()
            for _ in range(500):
                if p.incoming:
                    break
                await asyncio.sleep(0.01)
            assert p.incoming, "the OpenSSH client's session never reached on_link"
            remote = p.incoming[0]
            assert remote.peer == "a"
            assert await asyncio.wait_for(remote.recv_batch(), 10) == [make_packet(7, 300)]
            remote.send_batch([make_packet(8, 1420)])
            dec = FrameDecoder()
            got: list[bytes] = []
            while not got:
                got += dec.feed(await asyncio.wait_for(proc.stdout.read(4096), 10))
            assert got == [make_packet(8, 1420)]
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 10)

            # A known_hosts entry with another key: OpenSSH refuses to talk to us.
            known.write_text(f"[{host}]:{port} {Identity.generate().public_openssh}\n")
            bad = await asyncio.create_subprocess_exec(
                *base,
                "-s",
                f"a@{host}",
                "tunnelmesh",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(bad.communicate(), 20)
            assert bad.returncode != 0
            assert b"HOST IDENTIFICATION HAS CHANGED" in err or b"verification failed" in err

    run(main())


def test_from_node_uses_the_node_identity_name_and_port() -> None:
    from types import SimpleNamespace

    ident = Identity.generate()
    node = SimpleNamespace(
        identity=ident,
        name="alpha",
        listen_address="0.0.0.0:51820",
        config=SimpleNamespace(tun=SimpleNamespace(mtu=1380)),
    )
    t = SshTransport.from_node(node)
    assert (t.peer_name, t.listen_address, t.mtu) == ("alpha", "0.0.0.0:51820", 1380)
    assert t.identity is ident


def test_a_new_key_or_removal_closes_the_links_of_the_old_key() -> None:
    async def main() -> None:
        async with Pair() as p:
            p.server.update_peer("a", public_key=p.a.public_raw)
            client = SshTransport(p.a, "a", listen="127.0.0.1:0")
            await client.dial("b", [p.endpoint], public_key=p.b.public_raw)
            for _ in range(200):
                if p.incoming:
                    break
                await asyncio.sleep(0.01)
            remote = p.incoming[0]
            p.server.update_peer("a", public_key=p.a.public_raw)  # same key: nothing happens
            await asyncio.sleep(0.05)
            assert not remote.closed  # type: ignore[attr-defined]
            p.server.update_peer("a", public_key=Identity.generate().public_raw)
            with pytest.raises(TransportError):
                await asyncio.wait_for(remote.recv_batch(), 10)
            await client.aclose()

    run(main())


def test_traffic_is_counted_per_peer_and_kept_after_links_close() -> None:
    """The node's counters (heartbeats, `tunnelmesh peers`) read `traffic()`: SSH links have no
    WireGuard engine to count for them."""

    async def main() -> None:
        async with Pair() as p:
            p.server.update_peer("a", public_key=p.a.public_raw)
            client = SshTransport(p.a, "a", listen="127.0.0.1:0")
            assert client.traffic() == {}
            link = await client.dial("b", [p.endpoint], public_key=p.b.public_raw)
            link.send_batch([make_packet(1, 1000), make_packet(2, 500)])
            for _ in range(200):
                if p.incoming:
                    break
                await asyncio.sleep(0.01)
            assert len(await p.incoming[0].recv_batch()) >= 1
            rx, tx = client.traffic()["b"]
            assert tx >= 1500 and rx == 0
            for _ in range(200):
                if p.server.traffic().get("a", (0, 0))[0] >= 1500:
                    break
                await asyncio.sleep(0.01)
            assert p.server.traffic()["a"][0] >= 1500
            await client.aclose()
            assert client.traffic()["b"] == (rx, tx)  # closed links still count

    run(main())
