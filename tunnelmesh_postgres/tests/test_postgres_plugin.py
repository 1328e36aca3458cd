"""The entry point loads and registers the state backend; config errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from tunnelmesh.config import StateConfig
from tunnelmesh.errors import ConfigError
from tunnelmesh.manager import make_plugin_manager
from tunnelmesh_postgres.store import PostgresStore


def test_entry_point_registers_the_postgres_backend() -> None:
    pm = make_plugin_manager()
    assert "postgres" in pm.infos
    assert pm.build_registry("state_backends").state_backends["postgres"] is PostgresStore


def test_from_config_wants_a_private_dsn_file(tmp_path: Path) -> None:
    state = StateConfig(backend="postgres", encryption_key_file="k")
    with pytest.raises(ConfigError) as err:
        PostgresStore.from_config(state, tmp_path)
    assert err.value.key == "state.dsn_file"
    dsn = tmp_path / "dsn"
    dsn.write_text("host=127.0.0.1 dbname=x user=u password=hunter2hunter2\n")
    dsn.chmod(0o644)
    state = StateConfig(backend="postgres", dsn_file=str(dsn), encryption_key_file="k")
    with pytest.raises(ConfigError, match="chmod 600"):
        PostgresStore.from_config(state, tmp_path)
    dsn.chmod(0o600)
    store = PostgresStore.from_config(state, tmp_path)
    assert store.where == "127.0.0.1/x"


def test_the_password_is_registered_with_the_log_redactor() -> None:
    from tunnelmesh.logs import redact

    PostgresStore("host=127.0.0.1 dbname=x user=u password=s3cretpassw0rd")
    assert "s3cretpassw0rd" not in redact("connecting with password s3cretpassw0rd")


def test_a_malformed_connection_string_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid"):
        PostgresStore("host=127.0.0.1 dbname='unterminated")
