"""The mesh S3 service's credentials, grants and shares live in the coordinator's state store:
secrets sealed with the operator's key, item by item, an older auth.json imported once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from tunnelmesh.config import ServerConfig, StateConfig
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh_s3.auth import BucketAcl, Share
from tunnelmesh_s3.mesh import CoordinatorAuthorizer

TOKEN = "t" * 32


def _coordinator(tmp_path: Path, key: bool) -> Coordinator:
    state = StateConfig()
    if key:
        key_file = tmp_path / "state.key"
        key_file.write_text("ab" * 32)
        key_file.chmod(0o600)
        state = StateConfig(encryption_key_file=str(key_file))
    return Coordinator(
        ServerConfig(auth_token=TOKEN, data_dir=str(tmp_path / "state"), state=state)
    )


def _docs(tmp_path: Path) -> dict[tuple[str, str], bytes]:
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    try:
        rows = db.execute("SELECT collection, key, value FROM docs").fetchall()
    finally:
        db.close()
    return {(c, k): bytes(v) for c, k, v in rows}


def test_credentials_and_grants_are_documents_of_the_state_store(tmp_path: Path) -> None:
    async def run() -> None:
        coord = _coordinator(tmp_path, key=True)
        await coord.load()
        auth = CoordinatorAuthorizer(tmp_path / "state" / "s3" / "auth.json", coord)
        await auth.load()
        cred = await auth.issue("alice", peer_id="a" * 16)
        await auth.set_acl("photos", BucketAcl(owner="a" * 16, read=["*"]))
        await auth.put_share(
            Share(name="docs", owner="a" * 16, created=1.0), BucketAcl(owner="a" * 16)
        )
        docs = _docs(tmp_path)
        assert set(docs) == {
            ("s3.credentials", cred.access_key),
            ("s3.acls", "photos"),
            ("s3.acls", "docs"),
            ("s3.shares", "docs"),
        }
        assert cred.secret_key.encode() not in docs[("s3.credentials", cred.access_key)]
        assert b'"owner"' in docs[("s3.acls", "photos")]  # grants are no secret
        assert not (tmp_path / "state" / "s3" / "auth.json").exists()
        await auth.delete_share("docs")  # an item-by-item save: only what changed
        assert ("s3.shares", "docs") not in _docs(tmp_path)
        await coord.close()

        again = _coordinator(tmp_path, key=True)  # a restart, or another coordinator
        await again.load()
        auth2 = CoordinatorAuthorizer(tmp_path / "state" / "s3" / "auth.json", again)
        await auth2.load()
        assert auth2.credentials() == [cred]
        assert auth2.acl("photos") == BucketAcl(owner="a" * 16, read=["*"])
        assert auth2.share("docs") is None
        await again.close()

    asyncio.run(run())


def test_an_older_auth_json_is_imported_once_and_removed(tmp_path: Path) -> None:
    legacy = tmp_path / "state" / "s3" / "auth.json"
    legacy.parent.mkdir(parents=True, mode=0o700)
    legacy.parent.parent.chmod(0o700)
    legacy.write_text(
        json.dumps(
            {
                "keyed_by": "peer_id",
                "credentials": {
                    "TMOLD": {
                        "access_key": "TMOLD",
                        "secret_key": "old-secret-0123456789",
                        "principal": "bob",
                        "peer_id": "b" * 16,
                    }
                },
                "acls": {"b1": {"owner": "b" * 16}},
                "shares": {},
            }
        )
    )
    legacy.chmod(0o600)

    async def run() -> None:
        coord = _coordinator(tmp_path, key=False)
        await coord.load()
        auth = CoordinatorAuthorizer(legacy, coord)
        await auth.load()
        assert [c.access_key for c in auth.credentials()] == ["TMOLD"]
        assert auth.acl("b1") == BucketAcl(owner="b" * 16)
        assert not legacy.exists()
        assert ("s3.credentials", "TMOLD") in _docs(tmp_path)
        assert _docs(tmp_path)[("s3.meta", "keyed_by")] == b"peer_id"
        await coord.close()

    asyncio.run(run())
