"""S3 on the coordinator's mesh IP, used by two peers through the mesh, in the namespace lab.

``tunnelmesh serve`` with ``join_mesh:`` and ``s3: {enabled: true}`` (no ``s3.listen``) serves
S3 over HTTPS on its own mesh IP, port 9000. Two ``tunnelmesh join`` peers (TUN, UDP transport)
reach it only through the mesh: every client below runs inside a peer's namespace, where the
coordinator's mesh IP is routed through ``tm0`` (nothing runs in the root namespace).

* alice: ``tunnelmesh s3 credentials`` prints her key and the endpoint; the S3 certificate
  verifies against the mesh CA (by IP and as ``this.tunnelmesh``), not against the system
  store; ``tunnelmesh buckets create/put`` and boto3 (configured by the printed exports alone)
  write a bucket; ``tunnelmesh share create --reader bob`` shares it read-only.
* bob: his own credential; reads both objects (boto3 at ``https://this.tunnelmesh:9000`` and
  ``tunnelmesh buckets get``) and is refused every write (AccessDenied), which changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_s3")
pytest.importorskip("boto3")

from coordinator_peer import (
    coordinator_joins,
    exports,
    mesh_lab,  # noqa: F401  (the fixture mesh)
    run_script,
    start_coordinator,
    start_peers,
    tm,
)
from tunnelmesh.testing.mesh import MeshLab

pytestmark = pytest.mark.lab

NOTES = b"meeting notes over the mesh\n" * 64
REPORT = b"written by boto3 from the printed exports\n"

# Runs inside a peer's namespace. argv[1]: {"boto": arguments of the boto3 client (None: no
# client; {}: all from the environment), "steps": [...]}; prints one JSON result per step.
CLIENT = r"""
import json, os, socket, ssl, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

def s3(endpoint=None, verify=None, **keys):
    # endpoint/verify None: from the environment (AWS_ENDPOINT_URL, AWS_CA_BUNDLE, keys)
    cfg = Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=20,
                 s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=endpoint, verify=verify, config=cfg, **keys)

def tls(host, port, cafile):
    ctx = ssl.create_default_context(cafile=cafile)  # None: the system store only
    try:
        with socket.create_connection((host, port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as conn:
                cert = conn.getpeercert()
                return {"peer": conn.getpeername()[0],
                        "san": [v for _, v in cert["subjectAltName"]]}
    except ssl.SSLCertVerificationError as exc:
        return {"error": exc.verify_message}

def call(client, op, **kw):
    try:
        resp = getattr(client, op)(**kw)
    except ClientError as exc:
        return {"code": exc.response["Error"]["Code"]}
    if "Body" in resp:
        return {"body": resp["Body"].read().decode()}
    if "Contents" in resp:
        return {"keys": {o["Key"]: o["ETag"] for o in resp["Contents"]}}
    return {"ok": True}

args = json.loads(sys.argv[1])
client = s3(**args["boto"]) if args["boto"] is not None else None
for step in args["steps"]:
    kind = step.pop("do")
    if kind == "tls":
        print(json.dumps(tls(**step)))
    else:
        print(json.dumps(call(client, kind, **step)))
"""


def client(
    mesh: MeshLab,
    name: str,
    steps: list[dict[str, Any]],
    *,
    boto: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run :data:`CLIENT` in peer ``name``'s namespace; one result per step."""
    results = run_script(mesh, name, CLIENT, {"boto": boto, "steps": steps}, timeout=90, env=env)
    assert len(results) == len(steps), results
    return results


def test_peers_use_s3_on_the_coordinators_mesh_ip(mesh: MeshLab, tmp_path: Path) -> None:
    coord_sock = coordinator_joins(mesh, tmp_path, ("alice", "bob"))
    coord_ip = start_coordinator(mesh)
    start_peers(mesh, coord_sock, ("alice", "bob"))
    for name in ("alice", "bob"):
        # the coordinator's mesh IP is reached through the peer's TUN device, not the lab LAN
        route = mesh.peers[name].host.route_get(coord_ip)
        assert route is not None and " dev tm0 " in route, route

    # alice's own credential; the endpoint is the coordinator's mesh IP on port 9000
    endpoint = f"https://{coord_ip}:9000"
    printed = tm(mesh, "alice", "s3", "credentials").stdout
    env = exports(printed)
    assert env["AWS_ENDPOINT_URL"] == endpoint, printed
    ca = env["AWS_CA_BUNDLE"]
    assert Path(ca).is_file() and ca.startswith(str(mesh.peers["alice"].home)), ca
    assert "# S3 credential of alice on mesh" in printed and "[tunnelmesh]" in printed

    # alice writes with the CLI (endpoint, key and CA from her context) ...
    notes = tmp_path / "notes.txt"
    notes.write_bytes(NOTES)
    tm(mesh, "alice", "buckets", "create", "team")
    tm(mesh, "alice", "buckets", "put", str(notes), "team", "notes.txt")
    # ... and with boto3 configured by the printed exports alone. The S3 certificate chains to
    # the mesh CA and names the mesh IP and this.tunnelmesh (which alice's mesh resolver answers
    # with the coordinator's mesh IP); the system trust store refuses it.
    by_ip, by_name, system, put, listed = client(
        mesh,
        "alice",
        [
            {"do": "tls", "host": coord_ip, "port": 9000, "cafile": ca},
            {"do": "tls", "host": "this.tunnelmesh", "port": 9000, "cafile": ca},
            {"do": "tls", "host": coord_ip, "port": 9000, "cafile": None},
            {"do": "put_object", "Bucket": "team", "Key": "report.txt", "Body": REPORT.decode()},
            {"do": "list_objects_v2", "Bucket": "team"},
        ],
        boto={},
        env=env,
    )
    assert by_ip["peer"] == coord_ip and coord_ip in by_ip["san"], by_ip
    assert by_name["peer"] == coord_ip and "this.tunnelmesh" in by_name["san"], by_name
    assert "error" in system, system  # a certificate verification error
    assert put == {"ok": True}, put
    before = listed["keys"]
    assert set(before) == {"notes.txt", "report.txt"}, listed

    # a read-only share for bob; without it bob sees nothing
    bob_env = exports(tm(mesh, "bob", "s3", "credentials", "--format", "env").stdout)
    assert bob_env["AWS_ACCESS_KEY_ID"] != env["AWS_ACCESS_KEY_ID"]
    bob_keys = {
        "aws_access_key_id": bob_env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": bob_env["AWS_SECRET_ACCESS_KEY"],
        "region_name": bob_env["AWS_DEFAULT_REGION"],
    }
    bob_boto = {
        "endpoint": "https://this.tunnelmesh:9000",
        "verify": bob_env["AWS_CA_BUNDLE"],
        **bob_keys,
    }
    (denied,) = client(
        mesh, "bob", [{"do": "get_object", "Bucket": "team", "Key": "notes.txt"}], boto=bob_boto
    )
    assert denied == {"code": "AccessDenied"}, denied
    tm(mesh, "alice", "share", "create", "team", "--reader", "bob")

    # bob reads over the mesh, and every write is refused and changes nothing
    got = tmp_path / "got.txt"
    tm(mesh, "bob", "buckets", "get", "team", "notes.txt", str(got))
    assert got.read_bytes() == NOTES
    refused = tm(mesh, "bob", "buckets", "put", str(notes), "team", "bob.txt", check=False)
    assert refused.returncode != 0 and "AccessDenied" in refused.stdout + refused.stderr, refused
    results = client(
        mesh,
        "bob",
        [
            {"do": "get_object", "Bucket": "team", "Key": "notes.txt"},
            {"do": "get_object", "Bucket": "team", "Key": "report.txt"},
            {"do": "put_object", "Bucket": "team", "Key": "notes.txt", "Body": "overwritten"},
            {"do": "put_object", "Bucket": "team", "Key": "bob.txt", "Body": "mine"},
            {"do": "delete_object", "Bucket": "team", "Key": "report.txt"},
            {"do": "list_objects_v2", "Bucket": "team"},
        ],
        boto=bob_boto,
    )
    notes_got, report_got, overwrite, create, delete, after = results
    assert notes_got == {"body": NOTES.decode()}
    assert report_got == {"body": REPORT.decode()}
    assert overwrite == create == delete == {"code": "AccessDenied"}, results
    assert after == {"keys": before}  # same objects, same ETags
