"""The S3 service on a coordinator over loopback: per-peer credentials, grants, shares, restarts.

A coordinator with ``s3: {enabled: true, listen: 127.0.0.1:0}`` runs on its own event loop in a
thread; peers register with the control plane's client, get a context in their own
TUNNELMESH_HOME, and use boto3 (trusting the mesh CA) and the CLI.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import msgspec
import pytest
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.cli import build_cli
from tunnelmesh.config import JoinMesh, ServerConfig
from tunnelmesh.control.client import ControlClient, fetch_ca
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.errors import ConfigError
from tunnelmesh.identity import Identity
from tunnelmesh_s3.config import S3Section
from tunnelmesh_s3.mesh import SERVICE_KEY, MeshS3Service, install
from tunnelmesh_s3.meshclient import MeshS3Error

from tunnelmesh_s3 import meshclient

TOKEN = "s3-mesh-token-0123456789abcdef"
_CLIENTS: list[Any] = []  # boto3 clients, closed before a coordinator stops (keep-alive sockets)


def tracked(client: Any) -> Any:
    _CLIENTS.append(client)
    return client


def server_config(data: Path, **s3: Any) -> ServerConfig:
    s3.setdefault("enabled", True)
    s3.setdefault("listen", "127.0.0.1:0")
    return ServerConfig(
        auth_token=TOKEN,
        listen="127.0.0.1:0",
        stun_listen="127.0.0.1:0",
        data_dir=str(data),
        sections={"s3": S3Section(**s3)},
    )


async def _settle() -> None:
    """Let the callbacks that close stopped TLS connections run before the loop closes (a
    connection that its client closed just before the stop is closed through call_soon)."""
    for _ in range(20):
        await asyncio.sleep(0)


class CoordinatorThread:
    """A CoordinatorServer on its own loop in a thread (boto3 and the CLI are synchronous)."""

    def __init__(self, config: ServerConfig) -> None:
        self.server = CoordinatorServer(config, pm=make_plugin_manager())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    @property
    def s3(self) -> MeshS3Service:
        assert self.server._runner is not None
        return self.server._runner.app[SERVICE_KEY]

    def __enter__(self) -> CoordinatorThread:
        self._thread.start()
        self.call(self.server.start())
        self.call(asyncio.wait_for(self.s3.listening.wait(), 20))
        return self

    def __exit__(self, *exc: object) -> None:
        while _CLIENTS:
            _CLIENTS.pop().close()
        try:
            self.call(self.server.stop())
            self.call(_settle())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            self.loop.close()
            gc.collect()  # a leaked socket warns in the test that leaked it


@dataclass
class Peer:
    name: str
    home: Path
    ctx: Context
    identity: Identity
    access_key: str = ""
    secret_key: str = ""

    def boto(self, endpoint: str, ak: str | None = None, sk: str | None = None) -> Any:
        return tracked(
            boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=ak or self.access_key,
                aws_secret_access_key=sk or self.secret_key,
                region_name="us-east-1",
                verify=self.ctx.ca_path,
                config=Config(retries={"max_attempts": 1}),
            )
        )

    def cli(self, *args: str, code: int = 0) -> str:
        pm = make_plugin_manager()
        result = CliRunner().invoke(
            build_cli(pm), list(args), obj=pm, env={"TUNNELMESH_HOME": str(self.home)}
        )
        assert result.exit_code == code, (result.output, result.exception)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return result.output + str(result.exception)
        return result.output


def join(coord: CoordinatorThread, tmp: Path, name: str, identity: Identity | None = None) -> Peer:
    """Register ``name`` and write its context into its own TUNNELMESH_HOME."""
    identity = identity or Identity.generate()

    async def register() -> tuple[Any, str]:
        ca = await fetch_ca(coord.server.url, TOKEN)
        client = ControlClient(
            server=coord.server.url,
            identity=identity,
            ca_pem=ca,
            auth_token=TOKEN,
            name=name,
        )
        try:
            return await client.register(), ca
        finally:
            await client.aclose()

    resp, ca = asyncio.run(register())
    home = tmp / f"home-{name}"
    home.mkdir(exist_ok=True)
    (home / "ca.crt").write_text(ca)
    ctx = Context(
        name="mesh",
        server=coord.server.url,
        peer_name=resp.name,
        peer_id=resp.peer_id,
        mesh_ip=resp.mesh_ip,
        session_token=resp.session_token,
        ca_path=str(home / "ca.crt"),
        is_admin=resp.is_admin,
    )
    ContextStore(home).put(ctx)
    return Peer(resp.name, home, ctx, identity)


def repoint(coord: CoordinatorThread, *peers: Peer) -> None:
    """After a restart on port 0 the coordinator's URL changed; a real one keeps its URL."""
    for peer in peers:
        peer.ctx.server = coord.server.url
        ContextStore(peer.home).put(peer.ctx)


def credential(peer: Peer, **kw: Any) -> None:
    cred = asyncio.run(meshclient.fetch_credential(peer.ctx, **kw))
    assert cred.principal == peer.name
    peer.access_key, peer.secret_key = cred.access_key, cred.secret_key


def code_of(fn: Any, **kw: Any) -> str:
    with pytest.raises(ClientError) as err:
        fn(**kw)
    return str(err.value.response["Error"]["Code"])


def snapshot(client: Any) -> dict[str, Any]:
    """Every bucket and its objects with ETags (to prove a refused request changed nothing)."""
    out: dict[str, Any] = {}
    for b in client.list_buckets()["Buckets"]:
        listing = client.list_objects_v2(Bucket=b["Name"]).get("Contents", [])
        out[b["Name"]] = {o["Key"]: o["ETag"] for o in listing}
    return out


@pytest.fixture
def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CoordinatorThread]:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "coord-home"))
    with CoordinatorThread(server_config(tmp_path / "state")) as coord:
        yield coord


def test_peers_share_a_bucket_through_the_coordinator(
    mesh: CoordinatorThread, tmp_path: Path
) -> None:
    ops = join(mesh, tmp_path, "ops")  # the first peer is the mesh's admin
    alice, bob, carol = (join(mesh, tmp_path, n) for n in ("alice", "bob", "carol"))
    assert ops.ctx.is_admin and not alice.ctx.is_admin
    endpoint = mesh.s3.endpoint
    assert endpoint.startswith("https://127.0.0.1:")
    for p in (ops, alice, bob, carol):
        credential(p)
    keys = {p.access_key for p in (ops, alice, bob, carol)}
    secrets = {p.secret_key for p in (ops, alice, bob, carol)}
    assert len(keys) == len(secrets) == 4 and all(len(s) >= 40 for s in secrets)
    again = asyncio.run(meshclient.fetch_credential(alice.ctx))
    assert (again.access_key, again.secret_key, again.endpoint) == (
        alice.access_key,
        alice.secret_key,
        endpoint,
    )

    # alice creates a bucket with boto3 and shares it read-only with bob (CLI, mesh defaults)
    a, b, c, admin = (p.boto(endpoint) for p in (alice, bob, carol, ops))
    a.create_bucket(Bucket="team")
    a.put_object(Bucket="team", Key="notes/plan.txt", Body=b"alice's plan")
    out = alice.cli("share", "create", "team", "--reader", "bob", "--description", "plans")
    assert "team  owner=alice  read=bob  write=-  plans" in out
    assert "no peer named mallory" in alice.cli(
        "share", "create", "team", "--reader", "mallory", code=1
    )
    assert "team" in bob.cli("share", "list")
    assert "notes/plan.txt" in bob.cli("buckets", "objects", "team", "-r")

    # bob reads but cannot write; carol can do neither, and nothing changes
    assert b.get_object(Bucket="team", Key="notes/plan.txt")["Body"].read() == b"alice's plan"
    before = snapshot(a)
    assert code_of(b.put_object, Bucket="team", Key="notes/plan.txt", Body=b"bob") == (
        "AccessDenied"
    )
    assert code_of(b.delete_object, Bucket="team", Key="notes/plan.txt") == "AccessDenied"
    assert code_of(c.get_object, Bucket="team", Key="notes/plan.txt") == "AccessDenied"
    assert code_of(c.put_object, Bucket="team", Key="x", Body=b"carol") == "AccessDenied"
    assert code_of(c.delete_bucket, Bucket="team") == "AccessDenied"
    assert [x["Name"] for x in c.list_buckets()["Buckets"]] == []
    assert "AccessDenied" in carol.cli("share", "info", "team", code=1)
    assert snapshot(a) == before
    # the mesh's admin peers manage every bucket
    admin.put_object(Bucket="team", Key="ops.txt", Body=b"ops")
    assert "team" in ops.cli("buckets", "list")
    admin.delete_object(Bucket="team", Key="ops.txt")

    # rotating a key kills the old one
    old = (bob.access_key, bob.secret_key)
    credential(bob, rotate=True)
    assert bob.access_key != old[0]
    assert code_of(bob.boto(endpoint, *old).list_buckets) == "InvalidAccessKeyId"
    assert bob.boto(endpoint).get_object(Bucket="team", Key="notes/plan.txt")["ContentLength"]


def test_keys_survive_a_restart_and_die_with_their_peer(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "coord-home"))
    config = server_config(tmp_path / "state")
    with CoordinatorThread(config) as coord:
        join(coord, tmp_path, "ops")
        alice, bob, carol = (join(coord, tmp_path, n) for n in ("alice", "bob", "carol"))
        for p in (alice, bob, carol):
            credential(p)
        alice.boto(coord.s3.endpoint).create_bucket(Bucket="keep")
        alice.boto(coord.s3.endpoint).put_object(Bucket="keep", Key="k", Body=b"v")
        assert "alice" in alice.cli("share", "create", "keep", "--peer", "*")
    with CoordinatorThread(config) as coord:  # same state dir; a new port
        endpoint = coord.s3.endpoint
        repoint(coord, alice, bob, carol)
        got = alice.boto(endpoint).get_object(Bucket="keep", Key="k")["Body"].read()
        assert got == b"v"
        assert bob.boto(endpoint).get_object(Bucket="keep", Key="k")["Body"].read() == b"v"
        cred = asyncio.run(meshclient.fetch_credential(alice.ctx))
        assert (cred.access_key, cred.secret_key) == (alice.access_key, alice.secret_key)
        # carol is deleted: her key stops working at once
        carol.boto(endpoint).put_object(Bucket="keep", Key="carol", Body=b"c")

        async def leave() -> None:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        ssl=client_ssl_context(Path(carol.ctx.ca_path).read_text())
                    )
                ) as http,
                http.delete(
                    f"{coord.server.url}/api/v1/peers/carol",
                    headers={"Authorization": f"Bearer {carol.ctx.session_token}"},
                    server_hostname=COORDINATOR_NAME,
                ) as resp,
            ):
                assert resp.status == 200

        asyncio.run(leave())
        assert code_of(carol.boto(endpoint).list_buckets) == "InvalidAccessKeyId"
        # ... also when she joins again with the same key: she gets a new credential
        carol2 = join(coord, tmp_path, "carol", carol.identity)
        assert carol2.ctx.peer_id == carol.ctx.peer_id
        assert code_of(carol.boto(endpoint).list_buckets) == "InvalidAccessKeyId"
        credential(carol2)
        assert carol2.access_key != carol.access_key
        assert carol2.boto(endpoint).get_object(Bucket="keep", Key="k")["Body"].read() == b"v"
        asyncio.run(meshclient.revoke(carol2.ctx))
        # bob revokes his own key
        assert "revoked 1 S3 key(s) of bob" in bob.cli("s3", "credentials", "--revoke")
        assert code_of(bob.boto(endpoint).list_buckets) == "InvalidAccessKeyId"
        # bob may not revoke alice's
        with pytest.raises(MeshS3Error, match="403"):
            asyncio.run(meshclient.revoke(bob.ctx, "alice"))
        assert alice.boto(endpoint).head_object(Bucket="keep", Key="carol")["ContentLength"] == 1
    with CoordinatorThread(config) as coord:  # carol's credential was dropped from the store
        assert coord.s3.authorizer.credentials_of(carol.ctx.peer_id) == []
        assert {c.principal for c in coord.s3.authorizer.credentials()} == {"alice"}


def test_credentials_command_prints_tool_configs(mesh: CoordinatorThread, tmp_path: Path) -> None:
    join(mesh, tmp_path, "ops")
    dave = join(mesh, tmp_path, "dave")
    out = dave.cli("s3", "credentials")
    data = json.loads(dave.cli("s3", "credentials", "--json"))
    assert data["principal"] == "dave" and not data["admin"]
    assert data["endpoint"] == mesh.s3.endpoint and data["ca_path"] == dave.ctx.ca_path
    assert f"export AWS_ACCESS_KEY_ID={data['access_key']}" in out
    assert f"export AWS_SECRET_ACCESS_KEY={data['secret_key']}" in out
    assert f"export AWS_CA_BUNDLE={dave.ctx.ca_path}" in out
    rclone = dave.cli("s3", "credentials", "--format", "rclone")
    assert rclone.startswith("[tunnelmesh]\ntype = s3\nprovider = Other\n")
    assert f"endpoint = {mesh.s3.endpoint}\n" in rclone
    env = dave.cli("s3", "credentials", "--format", "env")
    assert env.count("export ") == 5
    # the environment works for boto3 as printed
    exports = dict(line[len("export ") :].split("=", 1) for line in env.splitlines())
    client = tracked(
        boto3.client(
            "s3",
            endpoint_url=exports["AWS_ENDPOINT_URL"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
            region_name=exports["AWS_DEFAULT_REGION"],
            verify=exports["AWS_CA_BUNDLE"],
        )
    )
    client.create_bucket(Bucket="daves")
    assert "daves" in dave.cli("buckets", "list")
    # a request without a session, or with a wrong one, gets nothing
    stranger = msgspec.structs.replace(dave.ctx, session_token="not-a-session")
    with pytest.raises(MeshS3Error, match="401"):
        asyncio.run(meshclient.fetch_credential(stranger))


def test_s3_off_or_nowhere_to_listen(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "coord-home"))
    app = web.Application()
    off = Coordinator(server_config(tmp_path / "a", enabled=False))
    assert install(app, off) is None and SERVICE_KEY not in app
    with pytest.raises(ConfigError, match=r"join_mesh .* or s3.listen"):
        install(app, Coordinator(server_config(tmp_path / "b", listen="")))

    async def main() -> None:
        config = server_config(tmp_path / "c", enabled=False)
        async with CoordinatorServer(config, pm=make_plugin_manager()) as server:
            ca = await fetch_ca(server.url, TOKEN)
            client = ControlClient(
                server=server.url,
                identity=Identity.generate(),
                ca_pem=ca,
                auth_token=TOKEN,
                name="p",
            )
            reg = await client.register()
            await client.aclose()
            (tmp_path / "ca.crt").write_text(ca)
            ctx = Context(
                name="m",
                server=server.url,
                session_token=reg.session_token,
                ca_path=str(tmp_path / "ca.crt"),
                peer_name="p",
            )
            with pytest.raises(MeshS3Error, match="does not serve S3"):
                await meshclient.fetch_credential(ctx)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_default_listen_is_the_mesh_ip(tmp_path: Path, monkeypatch: Any) -> None:
    """With join_mesh and no s3.listen, the service binds the coordinator's mesh IP (IP_FREEBIND:
    before any interface has it). Nothing is sent to that address from here."""
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "coord-home"))
    port = random.randint(20000, 60000)
    config = server_config(tmp_path / "state", listen="", port=port)
    config.join_mesh = JoinMesh(name="hub", private_key=str(tmp_path / "hub_key"))
    with CoordinatorThread(config) as coord:
        ip = coord.server.coordinator.own_mesh_ip()
        assert ip is not None and ip.startswith("172.30.")
        assert coord.s3.endpoint == f"https://{ip}:{port}"
        assert coord.s3.host == ip and coord.s3.port == port
