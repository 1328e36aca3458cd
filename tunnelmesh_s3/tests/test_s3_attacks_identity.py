"""S3 on a mesh keys everything on the peer ID (issue 11): attacks refused.

* A peer that registers a released name with another key inherits nothing of what the name's
  old key owned or was granted (buckets, grants, shares).
* Grants to groups follow the coordinator's groups (by peer ID) as admins change them.
* A state file from before (owners and grants by name) is migrated to peer IDs at start.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from test_s3_mesh import (
    CoordinatorThread,
    Peer,
    code_of,
    credential,
    join,
    mesh,  # noqa: F401  (the fixture)
    repoint,
    server_config,
)
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.identity import Identity


def api(coord: CoordinatorThread, peer: Peer, method: str, path: str, body: Any = None) -> Any:
    """A coordinator API call with ``peer``'s session."""

    async def call() -> tuple[int, Any]:
        ssl = client_ssl_context(Path(peer.ctx.ca_path).read_text())
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl)) as http,
            http.request(
                method,
                coord.server.url + path,
                json=body,
                headers={"Authorization": f"Bearer {peer.ctx.session_token}"},
                server_hostname=COORDINATOR_NAME,
            ) as resp,
        ):
            return resp.status, await resp.json()

    status, data = asyncio.run(call())
    assert status < 300, (status, data)
    return data


def test_a_released_name_inherits_no_bucket_and_no_grant(
    mesh: CoordinatorThread,  # noqa: F811
    tmp_path: Path,
) -> None:
    ops = join(mesh, tmp_path, "ops")  # the admin
    alice, bob = join(mesh, tmp_path, "alice"), join(mesh, tmp_path, "bob")
    for p in (alice, bob):
        credential(p)
    endpoint = mesh.s3.endpoint
    a = alice.boto(endpoint)
    a.create_bucket(Bucket="team")
    a.put_object(Bucket="team", Key="plan.txt", Body=b"alice's plan")
    assert "read=bob" in alice.cli("share", "create", "team", "--reader", "bob")
    acl = mesh.s3.authorizer.acl("team")
    assert acl is not None
    assert (acl.owner, acl.read) == (alice.ctx.peer_id, [bob.ctx.peer_id])  # stored by key
    assert bob.boto(endpoint).get_object(Bucket="team", Key="plan.txt")["ContentLength"]

    # bob is deleted and an admin releases his name; another key registers as "bob"
    api(mesh, ops, "DELETE", "/api/v1/peers/bob")
    api(mesh, ops, "DELETE", "/api/v1/names/bob")
    (tmp_path / "m").mkdir()
    mallory = join(mesh, tmp_path / "m", "bob", Identity.generate())
    assert mallory.name == "bob" and mallory.ctx.peer_id != bob.ctx.peer_id
    credential(mallory)
    m = mallory.boto(endpoint)
    assert code_of(m.get_object, Bucket="team", Key="plan.txt") == "AccessDenied"
    assert [x["Name"] for x in m.list_buckets()["Buckets"]] == []
    assert "AccessDenied" in mallory.cli("share", "info", "team", code=1)
    # the grant still names the old key, shown as such (no name holds it now)
    info = alice.cli("share", "info", "team")
    assert bob.ctx.peer_id in info and "read=bob" not in info

    # the same for the owner: alice goes, her name is released and taken
    api(mesh, ops, "DELETE", "/api/v1/peers/alice")
    api(mesh, ops, "DELETE", "/api/v1/names/alice")
    (tmp_path / "e").mkdir()
    eve = join(mesh, tmp_path / "e", "alice", Identity.generate())
    credential(eve)
    e = eve.boto(endpoint)
    assert code_of(e.get_object, Bucket="team", Key="plan.txt") == "AccessDenied"
    assert code_of(e.put_object, Bucket="team", Key="x", Body=b"eve") == "AccessDenied"
    assert code_of(e.delete_bucket, Bucket="team") == "AccessDenied"
    assert "AccessDenied" in eve.cli("share", "create", "team", "--reader", "*", code=1)
    acl = mesh.s3.authorizer.acl("team")
    assert acl is not None and acl.owner == alice.ctx.peer_id and acl.read == [bob.ctx.peer_id]


def test_grants_to_groups_follow_the_coordinators_groups(
    mesh: CoordinatorThread,  # noqa: F811
    tmp_path: Path,
) -> None:
    ops = join(mesh, tmp_path, "ops")
    alice, bob, carol = (join(mesh, tmp_path, n) for n in ("alice", "bob", "carol"))
    for p in (alice, bob, carol):
        credential(p)
    endpoint = mesh.s3.endpoint
    a, b, c = (p.boto(endpoint) for p in (alice, bob, carol))
    a.create_bucket(Bucket="reports")
    a.put_object(Bucket="reports", Key="q3.txt", Body=b"numbers")
    assert "no group named nope" in alice.cli(
        "share", "create", "reports", "--reader", "group:nope", code=1
    )
    api(mesh, ops, "POST", "/api/v1/groups", {"name": "finance"})
    out = alice.cli("share", "create", "reports", "--reader", "group:finance")
    assert "read=group:finance" in out
    assert code_of(b.get_object, Bucket="reports", Key="q3.txt") == "AccessDenied"
    api(mesh, ops, "POST", "/api/v1/groups/finance/members", {"add": ["bob"]})
    assert b.get_object(Bucket="reports", Key="q3.txt")["Body"].read() == b"numbers"
    assert code_of(c.get_object, Bucket="reports", Key="q3.txt") == "AccessDenied"
    assert code_of(b.put_object, Bucket="reports", Key="x", Body=b"b") == "AccessDenied"
    api(mesh, ops, "POST", "/api/v1/groups/finance/members", {"remove": ["bob"]})
    assert code_of(b.get_object, Bucket="reports", Key="q3.txt") == "AccessDenied"
    # the built-in group of every registered peer
    alice.cli("share", "create", "reports", "--peer", "group:everyone")
    c.put_object(Bucket="reports", Key="carol.txt", Body=b"c")


def test_state_by_name_is_migrated_to_peer_ids(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "coord-home"))
    config = server_config(tmp_path / "state")
    with CoordinatorThread(config) as coord:
        join(coord, tmp_path, "ops")
        alice, bob, carol = (join(coord, tmp_path, n) for n in ("alice", "bob", "carol"))
        for p in (alice, bob, carol):
            credential(p)
        alice.boto(coord.s3.endpoint).create_bucket(Bucket="old")
        alice.boto(coord.s3.endpoint).put_object(Bucket="old", Key="k", Body=b"v")
        auth_file = coord.s3.authorizer.path
        state = json.loads(msgspec.json.encode(coord.s3.authorizer._state))
    # What an earlier version had: no S3 documents in the state store but an auth.json with
    # owners and grants by name, no "keyed_by".
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    with db:
        db.execute("DELETE FROM docs WHERE collection LIKE 's3.%'")
    db.close()
    state.pop("keyed_by", None)
    state["acls"]["old"] = {"owner": "alice", "read": ["bob", "gone", "*"], "write": ["ghost"]}
    state["shares"]["old"] = {"name": "old", "owner": "alice", "created": 1.0}
    auth_file.write_text(json.dumps(state))
    with CoordinatorThread(config) as coord:
        repoint(coord, alice, bob, carol)
        acl = coord.s3.authorizer.acl("old")
        assert acl is not None
        assert acl.owner == alice.ctx.peer_id
        assert acl.read == [bob.ctx.peer_id, "*"] and acl.write == []  # nobody's names dropped
        assert coord.s3.authorizer.share("old").owner == alice.ctx.peer_id  # type: ignore[union-attr]
        assert not auth_file.exists()  # imported into the state store, then removed
        db = sqlite3.connect(tmp_path / "state" / "state.db")
        stored = db.execute(
            "SELECT value FROM docs WHERE collection = 's3.meta' AND key = 'keyed_by'"
        ).fetchone()
        db.close()
        assert stored is not None and bytes(stored[0]) == b"peer_id"
        endpoint = coord.s3.endpoint
        assert bob.boto(endpoint).get_object(Bucket="old", Key="k")["Body"].read() == b"v"
        alice.boto(endpoint).put_object(Bucket="old", Key="k2", Body=b"w")  # still the owner
        assert "owner=alice" in alice.cli("share", "info", "old")
    with CoordinatorThread(config) as coord:  # once: a second start changes nothing
        assert coord.s3.authorizer.acl("old").read == [bob.ctx.peer_id, "*"]  # type: ignore[union-attr]


@pytest.mark.parametrize("entry", ["alice", "group:x"])
def test_standalone_acls_stay_by_name(entry: str) -> None:
    from tunnelmesh_s3.auth import BucketAcl, Principal

    acl = BucketAcl(owner="alice", read=[entry])
    assert acl.allows(Principal("alice"), "own")
    assert acl.allows(Principal("bob"), "read", groups=["x"]) == (entry == "group:x")
    # on a mesh the key decides, not the name
    assert not acl.allows(Principal("alice", peer_id="a" * 16), "own")
