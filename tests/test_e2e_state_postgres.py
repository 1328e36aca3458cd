"""Two coordinators on one PostgreSQL database through server.yaml's state: section (the
postgres plugin chosen by name): one mesh CA, sealed in the database; S3 credentials issued
through one coordinator are known to the other."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tunnelmesh.config import ServerConfig, StateConfig
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh.manager import make_plugin_manager
from tunnelmesh.testing.postgres import PostgresCluster
from tunnelmesh_s3.authstore import follow
from tunnelmesh_s3.mesh import CoordinatorAuthorizer

TOKEN = "t" * 32


def _private(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def test_two_coordinators_share_the_ca_and_s3_credentials(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    state = StateConfig(
        backend="postgres",
        dsn_file=_private(tmp_path / "dsn", postgres_dsn),
        encryption_key_file=_private(tmp_path / "key", "cd" * 32),
    )
    pm = make_plugin_manager()

    def coordinator(name: str) -> Coordinator:
        data = tmp_path / name
        data.mkdir(mode=0o700)
        return Coordinator(ServerConfig(auth_token=TOKEN, data_dir=str(data), state=state), pm=pm)

    async def run() -> None:
        a, b = coordinator("a"), coordinator("b")
        await a.load()
        await b.load()
        tasks: list[asyncio.Task[None]] = []
        try:
            assert type(a.store).__name__ == "PostgresStore"
            assert a.ca is not None and b.ca is not None
            assert a.ca.cert_pem == b.ca.cert_pem  # the second read the first one's CA
            auth_a = CoordinatorAuthorizer(tmp_path / "a" / "s3" / "auth.json", a)
            auth_b = CoordinatorAuthorizer(tmp_path / "b" / "s3" / "auth.json", b)
            for coord, auth in ((a, auth_a), (b, auth_b)):
                await auth.load()
                tasks.append(asyncio.create_task(follow(coord, auth.apply_change)))
            cred = await auth_a.issue("alice", peer_id="a" * 16)
            async with asyncio.timeout(2):  # the issue's bound for a change to reach another
                while auth_b.credentials() != [cred]:
                    await asyncio.sleep(0.02)
            await auth_a.revoke(cred.access_key)
            async with asyncio.timeout(2):
                while auth_b.credentials():
                    await asyncio.sleep(0.02)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(run(), 60))
    db = dict(kv.split("=", 1) for kv in postgres_dsn.split())["dbname"]
    meta = postgres_cluster.psql("SELECT key, encode(value, 'escape') FROM meta", db)
    assert "mesh_ca" in meta and "PRIVATE KEY" not in meta and "BEGIN CERTIFICATE" not in meta
