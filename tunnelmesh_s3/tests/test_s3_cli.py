"""The plugin's entry point, config section and commands (buckets, share, s3 credentials)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.cli import build_cli, main
from tunnelmesh.config import ServerConfig, load_config
from tunnelmesh.errors import ConfigError
from tunnelmesh_s3.config import S3Section
from tunnelmesh_s3.server import Running, ServerThread

AK, SK = "AKCLITEST", "cli-secret"


def test_entry_point_loads() -> None:
    (ep,) = [ep for ep in entry_points(group="tunnelmesh") if ep.name == "s3"]
    module = ep.load()
    assert module.__name__ == "tunnelmesh_s3.plugin"
    pm = make_plugin_manager()
    assert pm.infos["s3"].status == "loaded"
    registry = pm.build_registry()
    assert registry.config_sections["s3"].type is S3Section
    assert {"s3", "buckets", "share"} <= set(build_cli(pm).commands)


def test_config_section(tmp_path: Path) -> None:
    pm = make_plugin_manager()
    sections = pm.build_registry().config_sections
    path = tmp_path / "server.yaml"
    path.write_text("auth_token: 0123456789abcdef0123\ns3:\n  port: 9100\n  region: eu-west-1\n")
    config = load_config(path, ServerConfig, sections)
    assert config.sections["s3"] == S3Section(port=9100, region="eu-west-1")
    path.write_text("auth_token: 0123456789abcdef0123\ns3:\n  prot: 9100\n")
    with pytest.raises(ConfigError, match="s3: unknown key `prot`"):
        load_config(path, ServerConfig, sections)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    with ServerThread(tmp_path / "data", access_key=AK, secret_key=SK) as r:
        yield r


def tm(running: Running, *args: str, ak: str = AK, sk: str = SK) -> str:
    env = {
        "TUNNELMESH_S3_ENDPOINT": running.endpoint,
        "TUNNELMESH_S3_ACCESS_KEY": ak,
        "TUNNELMESH_S3_SECRET_KEY": sk,
    }
    pm = make_plugin_manager()
    result = CliRunner().invoke(build_cli(pm), list(args), obj=pm, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_buckets_commands(running: Running, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "f.bin").write_bytes(data)
    assert "created my-data" in tm(running, "buckets", "create", "my-data")
    assert "my-data" in tm(running, "buckets", "list")
    tm(running, "buckets", "put", str(tmp_path / "f.bin"), "my-data", "dir/f.bin")
    tm(running, "buckets", "put", str(tmp_path / "f.bin"), "my-data")
    out = tm(running, "buckets", "objects", "my-data")
    assert "DIR  dir/" in out and "f.bin" in out
    assert f"{len(data)}  dir/f.bin" in tm(running, "buckets", "objects", "my-data", "dir/")
    tm(running, "buckets", "get", "my-data", "dir/f.bin", str(tmp_path / "g.bin"))
    assert (tmp_path / "g.bin").read_bytes() == data
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNNELMESH_S3_ENDPOINT", running.endpoint)
        mp.setenv("TUNNELMESH_S3_ACCESS_KEY", AK)
        mp.setenv("TUNNELMESH_S3_SECRET_KEY", SK)
        assert main(["buckets", "delete", "my-data"]) == 1  # BucketNotEmpty: one line, no traceback
    assert "deleted my-data" in tm(running, "buckets", "delete", "my-data", "--force")
    assert "my-data" not in tm(running, "buckets", "list")


def test_share_and_credentials(running: Running) -> None:
    cred = json.loads(tm(running, "s3", "credentials", "--for", "alice", "--json"))
    assert cred["principal"] == "alice" and len(cred["secret_key"]) >= 40
    bob = json.loads(tm(running, "s3", "credentials", "--for", "bob", "--json"))
    assert tm(running, "s3", "credentials").strip() == "admin (admin)"
    out = tm(
        running,
        "share",
        "create",
        "team",
        "--peer",
        "alice",
        "--reader",
        "bob",
        "--description",
        "docs",
    )
    assert "team  owner=admin  read=bob  write=alice  docs" in out
    assert "team" in tm(running, "share", "list", ak=cred["access_key"], sk=cred["secret_key"])
    info = json.loads(tm(running, "share", "info", "team", "--json"))
    assert (info["read"], info["write"]) == (["bob"], ["alice"])
    assert "rclone" in tm(running, "share", "info", "team")
    # alice writes, bob reads, bob cannot write
    import boto3
    from botocore.exceptions import ClientError

    def client(c: dict[str, str]):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=running.endpoint,
            aws_access_key_id=c["access_key"],
            aws_secret_access_key=c["secret_key"],
            region_name="us-east-1",
        )

    client(cred).put_object(Bucket="team", Key="notes.txt", Body=b"from alice")
    assert client(bob).get_object(Bucket="team", Key="notes.txt")["Body"].read() == b"from alice"
    with pytest.raises(ClientError) as err:
        client(bob).put_object(Bucket="team", Key="notes.txt", Body=b"from bob")
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    assert "unshared team" in tm(running, "share", "delete", "team")
    assert tm(running, "share", "list").strip() == ""
    with pytest.raises(ClientError):
        client(bob).get_object(Bucket="team", Key="notes.txt")
    assert "team" in tm(running, "buckets", "list")  # the bucket stays


def test_without_a_mesh_or_a_credential_commands_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "home"))
    for name in ("ENDPOINT", "ACCESS_KEY", "SECRET_KEY"):
        monkeypatch.delenv(f"TUNNELMESH_S3_{name}", raising=False)
    monkeypatch.delenv("TUNNELMESH_CONTEXT", raising=False)
    assert main(["buckets", "list"]) == 1
    assert "no S3 credential: join a mesh" in capsys.readouterr().err
    assert main(["s3", "credentials"]) == 1
    assert "no active context" in capsys.readouterr().err
    assert main(["share", "list", "--context", "nowhere"]) == 1
    assert "no context named 'nowhere'" in capsys.readouterr().err
