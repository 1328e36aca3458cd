"""Attack suite, hardening part (issue 11): what a local user or a flooding source can no longer do.

Each test plays one attack and checks that it is refused, bounded or harmless:

* a local user reading secrets: the node key, the coordinator's state database and SQLite's
  ``-wal``/``-shm`` files (they hold the mesh CA's key) are 0600 from the first start, whatever
  the umask; a data dir or home open to other users is refused with the fix in the message.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from tunnelmesh.config import ServerConfig
from tunnelmesh.control import daemon
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh.errors import ConfigError
from tunnelmesh.identity import Identity

TOKEN = "attack-token-0123456789abcdef"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _server_config(data_dir: Path) -> ServerConfig:
    return ServerConfig(auth_token=TOKEN, data_dir=str(data_dir))


# --- 1. files and secrets -----------------------------------------------------------------------


def test_state_db_wal_shm_are_0600_from_the_first_start(
    tmp_path: Path, permissive_umask: None
) -> None:
    data = tmp_path / "fresh" / "state"

    async def main() -> None:
        coord = Coordinator(_server_config(data))
        await coord.load()  # first start: creates the database and the mesh CA (a write)
        try:
            files = [data / "state.db", data / "state.db-wal", data / "state.db-shm"]
            for f in files:
                assert f.exists(), f
                assert _mode(f) == 0o600, (f, oct(_mode(f)))
            assert _mode(data) == 0o700
            assert _mode(data.parent) == 0o700  # missing parents are created private too
        finally:
            await coord.close()

    asyncio.run(main())


def test_node_key_and_contexts_are_0600_with_a_permissive_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    key = tmp_path / "home" / "id_ed25519"
    Identity.load_or_create(key)
    assert _mode(key) == 0o600
    assert _mode(key.parent) == 0o700
    store = ContextStore(tmp_path / "ctxhome")
    store.put(Context(name="m", server="https://127.0.0.1:1", session_token="secret"))
    assert _mode(store.path) == 0o600
    assert _mode(store.home) == 0o700


def test_a_data_dir_open_to_others_is_refused_and_left_untouched(tmp_path: Path) -> None:
    data = tmp_path / "state"
    data.mkdir()
    data.chmod(0o755)

    async def main() -> None:
        coord = Coordinator(_server_config(data))
        with pytest.raises(ConfigError) as err:
            await coord.load()
        assert f"chmod 700 {data}" in str(err.value)
        assert "0755" in str(err.value)

    asyncio.run(main())
    assert list(data.iterdir()) == []  # no database, no CA written into the open directory
    data.chmod(0o700)

    async def again() -> None:  # after the fix the same directory works
        coord = Coordinator(_server_config(data))
        await coord.load()
        await coord.close()

    asyncio.run(again())
    assert _mode(data / "state.db") == 0o600


def test_join_refuses_a_home_open_to_others_before_contacting_anyone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o750)

    async def main() -> None:
        with pytest.raises(ConfigError) as err:
            await daemon.join(
                server="https://127.0.0.1:9",  # never dialled: refused before any request
                token=TOKEN,
                context_name="m",
                name="n",
                key_path=home / "id_ed25519",
                store=ContextStore(home),
            )
        assert f"chmod 700 {home}" in str(err.value)

    asyncio.run(main())
    assert not (home / "id_ed25519").exists()
