"""``tunnelmesh status`` from what the coordinator answers (its peer and client lists)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tunnelmesh.cli import status_cmd
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.messages import ClientInfo, PeerInfo

ME, OTHER = "a1" * 8, "b2" * 8


def peer(name: str, peer_id: str, **kw: object) -> PeerInfo:
    return PeerInfo(
        name=name,
        peer_id=peer_id,
        public_key="ssh-ed25519 AAAA",
        wg_public_key="x" * 44,
        mesh_ip="100.64.0.2" if peer_id == ME else "100.64.0.3",
        online=True,
        **kw,  # type: ignore[arg-type]
    )


def client(name: str, concentrator: str, *, active: bool = True) -> ClientInfo:
    return ClientInfo(
        client_id=name * 4,
        name=name,
        kind="wireguard",
        public_key="k" * 44,
        mesh_ip="100.64.0.9",
        concentrator=concentrator,
        active=active,
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path))
    ctx = Context(
        name="home", server="https://coord:8443", peer_name="conc", peer_id=ME,
        mesh_ip="100.64.0.2",
    )  # fmt: skip
    ContextStore(tmp_path).put(ctx)
    return tmp_path


def run_status(monkeypatch: pytest.MonkeyPatch, peers: list[PeerInfo], clients: list[ClientInfo],
               *args: str) -> str:  # fmt: skip
    monkeypatch.setattr(status_cmd, "fetch_mesh", lambda ctx, store: (peers, clients, True))
    got = CliRunner().invoke(status_cmd.status, list(args))
    assert got.exit_code == 0, got.output
    return got.output


def test_a_concentrator_says_where_its_clients_dial_it_and_how_many_it_serves(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers = [peer("conc", ME, concentrator_endpoint="198.51.100.7:51820"), peer("b", OTHER)]
    clients = [client("phone", ME), client("old", ME, active=False), client("tab", OTHER)]
    text = run_status(monkeypatch, peers, clients)
    assert "concentrator: 198.51.100.7:51820 (WireGuard clients: 1 active of 2;" in text
    info = json.loads(run_status(monkeypatch, peers, clients, "--json"))
    assert info["concentrator"] == {"endpoint": "198.51.100.7:51820", "clients": 2, "active": 1}


def test_a_peer_that_serves_no_clients_says_nothing_of_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers = [peer("conc", ME), peer("b", OTHER, concentrator_endpoint="198.51.100.7:51820")]
    text = run_status(monkeypatch, peers, [client("tab", OTHER)])
    assert "concentrator" not in text
    info = json.loads(run_status(monkeypatch, peers, [], "--json"))
    assert info["concentrator"] is None and info["peers_total"] == 1
