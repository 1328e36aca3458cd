"""Debug-level JSON logs of ``serve`` (with S3 and its own peer) + ``join`` + the S3 commands,
in the namespace lab, grep clean of every secret.

Every process runs with ``TUNNELMESH_LOG_LEVEL=debug TUNNELMESH_LOG_FORMAT=json``. After the
run the secrets are read from where they live (the mesh token, each node's session token from
its context, each node's ed25519 seed and X25519 key from its key file, every S3 secret key
from the coordinator's state and from ``tunnelmesh s3 credentials``), in every spelling a log
could use (text, hex, base64), and none may occur in any output line except the one line whose
job is to print a credential (``s3 credentials`` on stdout). Each log line is a JSON object with
time, level, logger, message and fields.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_s3")

from test_e2e_server_peer_lab import linked, poll
from tunnelmesh.identity import Identity
from tunnelmesh.testing.lab import Lab
from tunnelmesh.testing.mesh import TOKEN, MeshLab

pytestmark = pytest.mark.lab

DEBUG_JSON = {"TUNNELMESH_LOG_LEVEL": "debug", "TUNNELMESH_LOG_FORMAT": "json"}
JSON_KEYS = {"time", "level", "logger", "message", "fields"}


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path, env=DEBUG_JSON)
    try:
        yield m
    finally:
        m.close()


def spellings(secret: str | bytes) -> set[str]:
    """How a log line could spell a secret."""
    if isinstance(secret, str):
        return {secret}
    forms = {
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
    }
    return forms | {f.rstrip("=") for f in forms}


def key_secrets(path: Path) -> set[str]:
    ident = Identity.load(path)
    return spellings(ident._seed()) | spellings(ident.x25519_private())


def test_debug_logs_of_join_serve_and_s3_hold_no_secret(mesh: MeshLab, tmp_path: Path) -> None:
    coord_sock = tmp_path / "coord-home" / "node.sock"
    coord_key = tmp_path / "coord-key"
    with mesh.server_config.open("a") as f:
        f.write(
            "s3:\n  enabled: true\n"
            "join_mesh:\n"
            "  name: coord\n"
            f'  private_key: "{coord_key}"\n'
            f'  control_socket: "{coord_sock}"\n'
            "  tun:\n    name: tm0\n"
            '  dns:\n    listen: "127.0.0.53:53"\n    system: "off"\n    forward: false\n'
        )
    mesh.add_peer("alice")
    coord = mesh.start_coordinator()
    coord.wait_line(r"mesh peer coord: mesh IP (\S+) \(node up on tm0\)", 60)
    mesh.start_peer("alice")
    alice = mesh.peers["alice"]
    poll(lambda: linked(alice.control_socket, "coord"), 30, "alice->coord")
    poll(lambda: linked(coord_sock, "alice"), 30, "coord->alice")

    # S3 through the mesh, at debug level: credentials, a bucket, an object written and read
    outputs: list[str] = []
    printed_credential = ""

    def tm(*args: str) -> subprocess.CompletedProcess[str]:
        proc = alice.host.run(
            [sys.executable, "-m", "tunnelmesh", *args],
            check=False,
            timeout=60,
            env=mesh.env(alice.home),
        )
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        outputs.append(proc.stderr)
        return proc

    printed_credential = tm("s3", "credentials").stdout
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"hello over the mesh\n")
    for args in (
        ("buckets", "create", "logs"),
        ("buckets", "put", str(notes), "logs", "notes.txt"),
        ("buckets", "get", "logs", "notes.txt", str(tmp_path / "got.txt")),
    ):
        outputs.append(tm(*args).stdout)
    assert (tmp_path / "got.txt").read_bytes() == notes.read_bytes()

    alice_node = alice.node
    assert alice_node is not None
    mesh.stop_peer("alice")
    mesh.stop_coordinator()
    outputs += ["\n".join(coord.lines), "\n".join(alice_node.lines)]

    # the secrets, from where they live
    secrets: set[str] = {TOKEN}
    for home in (alice.home, tmp_path / "coord-home"):
        ctx_file = home / "contexts.json"
        if ctx_file.exists():
            data = json.loads(ctx_file.read_text())
            for ctx in data.get("contexts", {}).values():
                if ctx.get("session_token"):
                    secrets.add(ctx["session_token"])
    keys = [coord_key, *alice.home.rglob("id_ed25519")]
    for key in keys:
        secrets |= key_secrets(key)
    s3_state = "\n".join(p.read_text() for p in (tmp_path / "coord-state").rglob("*.json"))
    s3_secrets = set(re.findall(r'"secret_key":\s*"([^"]+)"', s3_state))
    s3_secrets |= set(re.findall(r"AWS_SECRET_ACCESS_KEY=(\S+)", printed_credential))
    assert s3_secrets, "no S3 secret found to look for"
    secrets |= s3_secrets
    assert len([s for s in secrets if len(s) >= 20]) >= 6, secrets  # token, 2 sessions, keys, S3

    text = "\n".join(outputs)
    leaked = sorted(s for s in secrets if s in text)
    assert not leaked, f"secrets in the logs: {[s[:6] + '...' for s in leaked]}"

    # debug logging really ran, as JSON objects with the documented keys
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            assert set(obj) >= JSON_KEYS, line
            records.append(obj)
    levels = {r["level"] for r in records}
    assert "debug" in levels, levels
    loggers = {r["logger"].split(".")[0] for r in records}
    assert "tunnelmesh" in loggers or "tunnelmesh_s3" in loggers, loggers
