"""The PostgreSQL test fixture: its own cluster, password over TCP, stop/start keeps the data."""

from __future__ import annotations

import socket

import pytest
from tunnelmesh.testing.postgres import PostgresCluster

pytest_plugins = ["pytester"]


def test_postgres_tests_skip_with_the_reason_where_postgres_is_absent(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tunnelmesh.testing.postgres as pg

    monkeypatch.setattr(pg, "postgres_unavailable_reason", lambda: "no postgres here (test)")
    pytester.makepyfile(
        """
        def test_uses_dsn(postgres_dsn):
            raise AssertionError("must not run")
        """
    )
    result = pytester.runpytest_inprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no postgres here (test)*"])


def test_a_fresh_database_per_test(postgres_cluster: PostgresCluster, postgres_dsn: str) -> None:
    name = dict(kv.split("=", 1) for kv in postgres_dsn.split())["dbname"]
    assert postgres_cluster.psql("SELECT current_database()", name).strip() == name
    postgres_cluster.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (7)", name)
    assert postgres_cluster.psql("SELECT count(*) FROM t", name).strip() == "1"


def test_the_server_listens_on_loopback_only_and_wants_the_password(
    postgres_cluster: PostgresCluster,
) -> None:
    with socket.create_connection(("127.0.0.1", postgres_cluster.port), timeout=5):
        pass
    conf = (postgres_cluster.data / "pg_hba.conf").read_text()
    host_lines = [ln for ln in conf.splitlines() if ln.startswith("host")]
    assert host_lines and all(ln.split()[-1] == "scram-sha-256" for ln in host_lines)


def test_stop_and_start_keep_port_and_data(postgres_cluster: PostgresCluster) -> None:
    db = "tm_keep"
    postgres_cluster.create_database(db)
    try:
        postgres_cluster.psql("CREATE TABLE k (v text); INSERT INTO k VALUES ('kept')", db)
        port = postgres_cluster.port
        postgres_cluster.stop()
        assert not postgres_cluster.running()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        postgres_cluster.start()
        assert postgres_cluster.port == port
        assert postgres_cluster.psql("SELECT v FROM k", db).strip() == "kept"
        postgres_cluster.kill()  # a crash: recovery on the next start
        assert not postgres_cluster.running()
        postgres_cluster.start()
        assert postgres_cluster.psql("SELECT v FROM k", db).strip() == "kept"
    finally:
        postgres_cluster.drop_database(db)
