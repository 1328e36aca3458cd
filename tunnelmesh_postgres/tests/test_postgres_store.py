"""PostgresStore on a throwaway PostgreSQL cluster: the conformance checks every state store
passes, the change feed of a shared store, migrations, and the database going away."""

from __future__ import annotations

import asyncio
import logging

import pytest
from tunnelmesh.coordinator.store import Group, StoreChange
from tunnelmesh.errors import StateStoreError
from tunnelmesh.testing import statestore
from tunnelmesh.testing.postgres import PostgresCluster
from tunnelmesh_postgres.schema import MIGRATIONS
from tunnelmesh_postgres.store import PostgresStore


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "check", statestore.CHECKS + statestore.SHARED_CHECKS, ids=lambda c: c.__name__
)
def test_conformance(check: statestore.Check, postgres_dsn: str) -> None:
    run(check(lambda: PostgresStore(postgres_dsn)))


def _dbname(dsn: str) -> str:
    return dict(kv.split("=", 1) for kv in dsn.split())["dbname"]


def test_coordinators_starting_together_migrate_once(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    async def go() -> None:
        stores = [PostgresStore(postgres_dsn) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        for s in stores:
            await s.close()

    run(go())
    db = _dbname(postgres_dsn)
    assert postgres_cluster.psql("SELECT version FROM tunnelmesh_schema", db).split() == [
        str(len(MIGRATIONS))
    ]
    tables = postgres_cluster.psql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", db
    ).split()
    assert tables == [
        "addresses",
        "clients",
        "docs",
        "groups",
        "meta",
        "names",
        "peers",
        "tunnelmesh_schema",
    ]


def test_a_newer_schema_is_refused(postgres_cluster: PostgresCluster, postgres_dsn: str) -> None:
    run(_open_close(postgres_dsn))
    db = _dbname(postgres_dsn)
    postgres_cluster.psql(f"UPDATE tunnelmesh_schema SET version = {len(MIGRATIONS) + 1}", db)
    with pytest.raises(StateStoreError, match="newer than this tunnelmesh knows"):
        run(_open_close(postgres_dsn))


async def _open_close(dsn: str) -> None:
    store = PostgresStore(dsn)
    await store.open()
    await store.close()


def test_a_wrong_password_fails_without_showing_it(
    postgres_cluster: PostgresCluster, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = postgres_dsn.replace(postgres_cluster.password, "wrongpassword0123")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StateStoreError) as err:
        run(_open_close(bad.replace("connect_timeout=5", "connect_timeout=2")))
    assert "wrongpassword0123" not in str(err.value)
    assert postgres_cluster.password not in str(err.value)
    assert "127.0.0.1" in str(err.value)


def test_database_down_fails_fast_then_recovers_and_the_feed_says_resync(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    """With PostgreSQL stopped, calls raise StateStoreError within the connect timeout; when it
    is back, writes work again and the change feed yields resync (changes may have been
    missed), then the changes committed after it."""

    async def go() -> None:
        store = PostgresStore(postgres_dsn, connect_timeout=2.0)
        other = PostgresStore(postgres_dsn)
        await store.open()
        feed = store.changes()
        try:
            await store.put_meta("k", b"1")
            postgres_cluster.stop()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(StateStoreError):
                await store.put_meta("k", b"2")
            with pytest.raises(StateStoreError):
                await store.load_peers()
            assert loop.time() - t0 < 20
            postgres_cluster.start()
            async with asyncio.timeout(30):
                while True:
                    try:
                        await store.put_meta("k", b"3")
                        break
                    except StateStoreError:
                        await asyncio.sleep(0.2)
            assert await store.get_meta("k") == b"3"
            seen: list[StoreChange] = []
            async with asyncio.timeout(30):
                async for change in feed:
                    seen.append(change)
                    if change.kind == "resync":
                        break
            await other.open()
            await other.put_group(Group(name="after"))
            async with asyncio.timeout(30):
                async for change in feed:
                    if change.kind == "group":
                        assert (change.key, change.origin) == ("after", other.origin)
                        break
        finally:
            if not postgres_cluster.running():
                postgres_cluster.start()
            await store.close()
            await other.close()

    run(go())


def test_writes_resume_once_the_database_answers_not_when_the_pools_back_off_ends(
    postgres_cluster: PostgresCluster, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool retries a lost connection with exponential back-off (1, 2, 4 ... s: after a
    long outage its next try can be minutes after the database is back). The store does not
    wait for it: once its listening connection is back, writes go through a new pool. Here the
    pool's retries are an hour apart."""
    from psycopg_pool.base import AttemptWithBackoff

    monkeypatch.setattr(AttemptWithBackoff, "INITIAL_DELAY", 3600.0)

    async def go() -> None:
        store = PostgresStore(postgres_dsn, connect_timeout=2.0)
        await store.open()
        try:
            await store.put_meta("k", b"1")
            postgres_cluster.stop()
            for value in (b"2", b"3"):  # the pool's connections are found lost: retry later
                with pytest.raises(StateStoreError):
                    await store.put_meta("k", value)
            postgres_cluster.start()
            async with asyncio.timeout(20):  # the listening connection retries every 2 s at most
                while True:
                    try:
                        await store.put_meta("k", b"4")
                        break
                    except StateStoreError:
                        await asyncio.sleep(0.2)
            assert await store.get_meta("k") == b"4"
        finally:
            if not postgres_cluster.running():
                postgres_cluster.start()
            await store.close()

    run(go())


def test_every_reader_that_starts_soon_after_open_sees_every_change(postgres_dsn: str) -> None:
    """The coordinator and a plugin start reading the feed in either order a moment after
    open: both get the changes committed since open, none is handed to one reader only."""

    async def go() -> None:
        a, b = PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)
        await a.open()
        await b.open()
        try:
            await b.put_meta("before-any-reader", b"1")
            first, second = a.changes(), a.changes()
            for feed in (second, first):
                async with asyncio.timeout(10):
                    async for change in feed:
                        if change.kind == "meta":
                            assert change.key == "before-any-reader"
                            break
        finally:
            await a.close()
            await b.close()

    run(go())


RELEASED = ["e90fed7b2cf5548e"]
"""SHA-256 (16 hex) of each released migration step: a released step is never edited (a
database that ran it would not match the code); a change is a new step."""


def test_released_migration_steps_are_unchanged() -> None:
    import hashlib

    got = [hashlib.sha256(m.encode()).hexdigest()[:16] for m in MIGRATIONS]
    assert got[: len(RELEASED)] == RELEASED


def test_a_version_1_database_migrates_and_keeps_its_rows(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    """The schema of the first release (5f6eda6: migration 1 only) with a peer, a tombstone
    and the CA opens at today's version with everything kept."""
    db = _dbname(postgres_dsn)
    postgres_cluster.psql(
        MIGRATIONS[0]
        + "CREATE TABLE tunnelmesh_schema (version INTEGER NOT NULL);"
        + "INSERT INTO tunnelmesh_schema VALUES (1);"
        + "INSERT INTO peers (peer_id, public_key, name, mesh_ip) "
        + "VALUES ('0000000000000001', 'ssh-ed25519 K1', 'alpha', '172.30.0.11');"
        + "INSERT INTO names VALUES ('alpha', '0000000000000001'), ('gone', '0000000000000009');"
        + "INSERT INTO addresses VALUES ('172.30.0.11', '0000000000000001');"
        + "INSERT INTO meta VALUES ('mesh_ca', 'ca-blob'::bytea);",
        db,
    )

    async def go() -> None:
        store = PostgresStore(postgres_dsn)
        await store.open()
        try:
            assert [p.name for p in await store.load_peers()] == ["alpha"]
            assert await store.load_names() == {
                "alpha": "0000000000000001",
                "gone": "0000000000000009",
            }
            assert await store.get_meta("mesh_ca") == b"ca-blob"
            assert await store.load_clients() == []
        finally:
            await store.close()

    run(go())
    assert postgres_cluster.psql("SELECT version FROM tunnelmesh_schema", db).split() == [
        str(len(MIGRATIONS))
    ]
