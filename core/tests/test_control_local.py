"""Peer-side local state: contexts store, trust store install, URL handling."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from tunnelmesh.control import trust
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.urls import normalize_server_url, split_hostport
from tunnelmesh.errors import ConfigError, TunnelmeshError


def test_contexts_roundtrip(tmp_path: Path) -> None:
    store = ContextStore(tmp_path)
    with pytest.raises(ConfigError, match="no active context"):
        store.get()
    store.put(Context(name="work", server="https://a:8443", session_token="s"))
    store.put(Context(name="home", server="https://b:8443"), activate=False)
    again = ContextStore(tmp_path)
    assert again.active == "work" and again.names() == ["home", "work"]
    assert again.get().session_token == "s"
    assert stat.S_IMODE((tmp_path / "contexts.json").stat().st_mode) == 0o600
    again.use("home")
    assert ContextStore(tmp_path).active == "home"
    again.delete("home")
    assert ContextStore(tmp_path).active == "work"
    with pytest.raises(ConfigError, match="no context named 'nope'"):
        again.get("nope")


def test_corrupt_contexts_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "contexts.json").write_text("{broken")
    with pytest.raises(ConfigError, match="corrupt"):
        ContextStore(tmp_path)


def test_trust_install_uses_configured_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "updated"
    monkeypatch.setenv("TUNNELMESH_CA_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("TUNNELMESH_UPDATE_CA_CMD", f"touch {marker}")
    path = trust.install_ca("-----BEGIN CERTIFICATE-----\n", "my mesh")
    assert path == tmp_path / "store" / "tunnelmesh-my_mesh.crt"
    assert path.read_text().startswith("-----BEGIN CERTIFICATE")
    assert marker.exists()
    marker.unlink()
    trust.remove_ca(path)
    assert not path.exists() and marker.exists()


def test_trust_update_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNELMESH_CA_STORE_DIR", str(tmp_path))
    monkeypatch.setenv("TUNNELMESH_UPDATE_CA_CMD", "no-such-command-tm")
    with pytest.raises(TunnelmeshError, match="not found"):
        trust.install_ca("pem", "x")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("coord.example.com", "https://coord.example.com:8443"),
        ("https://coord.example.com:9000/", "https://coord.example.com:9000"),
        ("10.0.0.1", "https://10.0.0.1:8443"),
        ("[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
    ],
)
def test_normalize_server_url(given: str, expected: str) -> None:
    assert normalize_server_url(given) == expected


@pytest.mark.parametrize("bad", ["", "http://x", "https://x/path", "https://x?q=1", "ftp://x"])
def test_normalize_server_url_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        normalize_server_url(bad)


def test_split_hostport() -> None:
    assert split_hostport("0.0.0.0:8443", 1) == ("0.0.0.0", 8443)
    assert split_hostport("[::]:3478", 1) == ("::", 3478)
    assert split_hostport(":9", 1) == ("0.0.0.0", 9)
    assert split_hostport("host", 7) == ("host", 7)
    with pytest.raises(ConfigError):
        split_hostport("h:99999", 1)


def test_stopping_the_client_loops_survives_a_swallowed_cancellation() -> None:
    """A loop that loses one cancellation (Python 3.11: a timeout in the same loop turn) is
    cancelled again, so the client's run() ends instead of waiting forever."""
    from tunnelmesh.control.client import _cancel_and_wait

    async def main() -> list[str]:
        ended: list[str] = []

        async def swallows_once() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            try:
                await asyncio.sleep(3600)
            finally:
                ended.append("swallower")

        async def plain() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                ended.append("plain")

        tasks = [asyncio.create_task(swallows_once()), asyncio.create_task(plain())]
        await asyncio.sleep(0)
        await asyncio.wait_for(_cancel_and_wait(tasks), 5)
        return sorted(ended)

    assert asyncio.run(main()) == ["plain", "swallower"]
