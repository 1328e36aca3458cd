"""SqliteStore against the state store conformance checks (tunnelmesh.testing.statestore)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from tunnelmesh.coordinator.alloc import name_candidates
from tunnelmesh.coordinator.sqlite import MIGRATIONS, SqliteStore
from tunnelmesh.testing import statestore


@pytest.mark.parametrize("check", statestore.CHECKS, ids=lambda c: c.__name__)
def test_conformance(check: statestore.Check, tmp_path: Path) -> None:
    db = tmp_path / "state" / "state.db"
    asyncio.run(asyncio.wait_for(check(lambda: SqliteStore(db)), 120))


FIXTURES = Path(__file__).parent / "fixtures" / "state"
RELEASED = sorted(FIXTURES.glob("*.sql"))


def _restore(sql: Path, db: Path) -> None:
    db.parent.mkdir(mode=0o700, exist_ok=True)
    conn = sqlite3.connect(db)
    conn.executescript(sql.read_text())
    conn.close()


@pytest.mark.parametrize("dump", RELEASED, ids=lambda p: p.stem)
def test_every_released_schema_migrates_at_open(dump: Path, tmp_path: Path) -> None:
    """A state dir written by each released version opens, keeps everything, and works on."""
    db = tmp_path / "state" / "state.db"
    _restore(dump, db)
    version = int(dump.stem.split("-")[0][2:])

    async def run() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            peers = {p.name: p for p in await store.load_peers()}
            expected = (
                ["alpha", "beta", "gamma"] if version >= 2 else ["alpha", "beta", "gamma", "delta"]
            )
            assert sorted(peers) == sorted(expected)
            alpha = peers["alpha"]
            assert (alpha.peer_id, alpha.mesh_ip, alpha.is_admin) == (
                "0000000000000001",
                "172.30.0.11",
                True,
            )
            assert alpha.endpoints == ["192.0.2.1:51820"] and alpha.last_seen == 2001.0
            assert peers["beta"].allow_exit_traffic == (dump.stem != "uv0-2a7d796")
            assert peers["gamma"].pending == (version >= 3)
            assert await store.get_meta("mesh_ca") == b"ca-blob"
            names = await store.load_names()
            # v1 reserved every peer's name for its key; a later delete left a tombstone
            assert names["alpha"] == "0000000000000001"
            if version >= 2:
                assert names["delta"] == "0000000000000004"
                assert [g.name for g in await store.load_groups()] == ["ops"]
            # v3: the addresses table knows every live peer's address
            assert await store.load_addresses() == {p.mesh_ip: p.peer_id for p in peers.values()}
            assert await store.load_clients() == []  # v5
            taken = await store.claim_peer(
                statestore.peer(99, name="alpha", mesh_ip=""),
                names=name_candidates("alpha", rename=True),
                ips=["172.30.0.11", "172.30.0.50"],
            )
            assert (taken.name, taken.mesh_ip) == ("alpha-2", "172.30.0.50")
        finally:
            await store.close()

    asyncio.run(run())
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_fixtures_cover_every_schema_version() -> None:
    """Each user_version an older release leaves has a dump (add one with make_fixtures.py
    when a migration is added, from the last commit before it)."""
    have = {int(p.stem.split("-")[0][2:]) for p in RELEASED}
    assert have == {0, *range(2, len(MIGRATIONS))}, have  # 1 was never released alone


RELEASED_STEPS = [
    "cdfd451b8c6f0521",
    "788b11714d9925af",
    "6f625216aec89cd8",
    "02f06ad93446d68b",
    "18cb40fc4fa0a7d2",
]
"""SHA-256 (16 hex) of each released migration step: a released step is never edited (a
database that ran it would not match the code); a change is a new step."""


def test_released_migration_steps_are_unchanged() -> None:
    import hashlib

    got = [hashlib.sha256(m.encode()).hexdigest()[:16] for m in MIGRATIONS]
    assert got[: len(RELEASED_STEPS)] == RELEASED_STEPS
