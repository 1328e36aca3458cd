"""server.yaml's state: section: choosing the backend, and the secrets sealed in the store."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgspec
import pytest
from tunnelmesh.config import ServerConfig, StateConfig
from tunnelmesh.coordinator.backends import state_store_for
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh.coordinator.sealed import MAGIC, Sealer, load_key, seal, unseal
from tunnelmesh.coordinator.sqlite import SqliteStore
from tunnelmesh.errors import ConfigError
from tunnelmesh.manager import make_plugin_manager

TOKEN = "t" * 32


def _config(tmp_path: Path, **state: str) -> ServerConfig:
    return ServerConfig(
        auth_token=TOKEN, data_dir=str(tmp_path / "state"), state=StateConfig(**state)
    )


def _key_file(tmp_path: Path, name: str = "key", text: str = "ab" * 32) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def test_sqlite_is_the_default_and_registered_like_any_backend(tmp_path: Path) -> None:
    pm = make_plugin_manager(entry_points=False)
    assert "sqlite" in pm.build_registry("state_backends").state_backends
    store = state_store_for(_config(tmp_path), pm)
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "state" / "state.db"
    assert isinstance(state_store_for(_config(tmp_path), None), SqliteStore)


def test_an_unknown_backend_is_a_config_error_naming_the_extra(tmp_path: Path) -> None:
    config = _config(tmp_path, backend="nosuch", encryption_key_file="k")
    with pytest.raises(ConfigError) as err:
        state_store_for(config, make_plugin_manager(entry_points=False))
    assert err.value.key == "state.backend" and "tunnelmesh[postgres]" in str(err.value)


def test_a_networked_backend_needs_the_encryption_key() -> None:
    with pytest.raises(msgspec.ValidationError, match="encryption_key_file"):
        msgspec.convert({"backend": "postgres", "dsn_file": "/x"}, StateConfig)
    with pytest.raises(msgspec.ValidationError, match="not a backend name"):
        msgspec.convert({"backend": "Post gres"}, StateConfig)


def test_key_files_must_be_private_and_32_bytes(tmp_path: Path) -> None:
    assert load_key(_key_file(tmp_path)) == bytes.fromhex("ab" * 32)
    b64 = _key_file(tmp_path, "b64", "q" * 43 + "=")
    assert len(load_key(b64)) == 32
    with pytest.raises(ConfigError, match="32 bytes"):
        load_key(_key_file(tmp_path, "short", "abcd"))
    loose = _key_file(tmp_path, "loose")
    Path(loose).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(loose)


def test_seal_binds_the_slot_and_the_key() -> None:
    k1, k2 = b"1" * 32, b"2" * 32
    blob = seal(k1, b"secret", "mesh_ca")
    assert blob.startswith(MAGIC) and b"secret" not in blob
    assert unseal(k1, blob, "mesh_ca") == b"secret"
    with pytest.raises(ConfigError, match="same key file"):
        unseal(k2, blob, "mesh_ca")
    with pytest.raises(ConfigError):
        unseal(k1, blob, "auth_token")  # moved to another slot
    with pytest.raises(ConfigError, match="encryption_key_file"):
        Sealer(None).open(blob, "mesh_ca")


def _meta(db: Path, key: str) -> bytes:
    conn = sqlite3.connect(db)
    try:
        return bytes(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])
    finally:
        conn.close()


def test_the_mesh_ca_and_rotated_token_are_stored_sealed_with_a_key(tmp_path: Path) -> None:
    """Plaintext from an install without a key is sealed at the next start with one; the same
    CA comes back; without the key a sealed store is refused with the key to configure."""
    db = tmp_path / "state" / "state.db"

    async def start(config: ServerConfig) -> Coordinator:
        coord = Coordinator(config)
        await coord.load()
        return coord

    async def run() -> None:
        plain = await start(_config(tmp_path))
        ca_pem = plain.ca.cert_pem if plain.ca else ""
        await plain.rotate_token("r" * 32)
        await plain.close()
        assert b"PRIVATE KEY" in _meta(db, "mesh_ca")
        assert _meta(db, "auth_token") == b"r" * 32

        keyed_config = _config(tmp_path, encryption_key_file=_key_file(tmp_path))
        keyed = await start(keyed_config)
        assert keyed.ca is not None and keyed.ca.cert_pem == ca_pem
        assert keyed.auth_token == "r" * 32
        await keyed.rotate_token("s" * 32)
        await keyed.close()
        for slot in ("mesh_ca", "auth_token"):
            blob = _meta(db, slot)
            assert blob.startswith(MAGIC) and b"PRIVATE KEY" not in blob
        assert b"s" * 32 not in _meta(db, "auth_token")

        again = await start(keyed_config)
        assert again.ca is not None and again.ca.cert_pem == ca_pem
        assert again.auth_token == "s" * 32
        await again.close()

        with pytest.raises(ConfigError, match="encryption_key_file"):
            await start(_config(tmp_path))
        other = _config(tmp_path, encryption_key_file=_key_file(tmp_path, "k2", "cd" * 32))
        with pytest.raises(ConfigError, match="same key file"):
            await start(other)

    asyncio.run(run())
