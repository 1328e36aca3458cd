"""Config loading: good files, one-line errors naming file and key, plugin sections."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from tunnelmesh.config import (
    PeerConfig,
    ServerConfig,
    find_config,
    load_config,
    load_peer_config,
    load_server_config,
)
from tunnelmesh.errors import ConfigError
from tunnelmesh.registry import Registry

TOKEN = "0123456789abcdef0123456789abcdef"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_server_config_defaults_and_values(tmp_path: Path) -> None:
    p = write(
        tmp_path, f'auth_token: "{TOKEN}"\nheartbeat_interval: 2m\njoin_mesh:\n  name: coord\n'
    )
    cfg = load_config(p, ServerConfig)
    assert cfg.mesh_cidr == "172.30.0.0/16"
    assert cfg.heartbeat_interval == 120.0
    assert cfg.join_mesh is not None and cfg.join_mesh.name == "coord"


def test_peer_config_durations_and_nested(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "name: alpha\nheartbeat_interval: 500ms\ntun:\n  mtu: 1400\nexit_node: gw.tunnelmesh\n",
    )
    cfg = load_config(p, PeerConfig)
    assert (cfg.name, cfg.heartbeat_interval, cfg.tun.mtu, cfg.exit_node) == (
        "alpha",
        0.5,
        1400,
        "gw",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: alpha\ntun:\n  mtu: 100\n", r"c\.yaml: tun: mtu must be between 576 and 65535"),
        ("name: alpha\ntun:\n  mtu: big\n", r"c\.yaml: tun\.mtu: expected `int`, got `str`"),
        ("name: alpha\nbogus: 1\n", r"c\.yaml: unknown key `bogus`"),
        ("name: Not_A_Label\n", r"c\.yaml: name 'Not_A_Label' is not a DNS label"),
        ("name: a\nheartbeat_interval: soon\n", r"heartbeat_interval: expected a duration"),
        (
            "name: a\nfilter:\n  rules:\n    - port: 70000\n",
            r"filter\.rules\[0\]: port must be between",
        ),
        ("name: [unclosed\n", r"c\.yaml: line \d+: invalid YAML"),
        ("- just\n- a list\n", r"c\.yaml: the top level must be a mapping"),
    ],
)
def test_bad_peer_files_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(p, PeerConfig)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: x\n", r"missing required field `auth_token`"),
        ('auth_token: "short"\n', r"auth_token must be at least 16 characters"),
        (f'auth_token: "{TOKEN}"\nmesh_cidr: 10.0.0.0/33\n', r"mesh_cidr"),
    ],
)
def test_bad_server_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), ServerConfig)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", PeerConfig)


class S3Section(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = False
    port: int = 9000


def test_plugin_sections(tmp_path: Path) -> None:
    reg = Registry(current_plugin="s3")
    reg.add_config_section("s3", S3Section, peer=False)
    p = write(tmp_path, f'auth_token: "{TOKEN}"\ns3:\n  enabled: true\n')
    cfg = load_config(p, ServerConfig, reg.config_sections)
    assert cfg.sections["s3"] == S3Section(enabled=True)
    # absent section: defaults
    cfg = load_config(
        write(tmp_path, f'auth_token: "{TOKEN}"\n', "d.yaml"), ServerConfig, reg.config_sections
    )
    assert cfg.sections["s3"] == S3Section()
    # bad value inside the section names the section key
    with pytest.raises(ConfigError, match=r"s3\.port: expected `int`"):
        load_config(
            write(tmp_path, f'auth_token: "{TOKEN}"\ns3:\n  port: x\n', "e.yaml"),
            ServerConfig,
            reg.config_sections,
        )
    # a server-only section is an unknown key for peers
    with pytest.raises(ConfigError, match="unknown key `s3`"):
        load_config(write(tmp_path, "s3: {}\n", "f.yaml"), PeerConfig, reg.config_sections)


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_peer_config() == PeerConfig()
    write(tmp_path, "name: fromcwd\n", "peer.yaml")
    assert load_peer_config().name == "fromcwd"
    write(tmp_path, "name: tunnelmeshyaml\n", "tunnelmesh.yaml")
    assert load_peer_config().name == "tunnelmeshyaml"
    (tmp_path / "home" / ".tunnelmesh").mkdir(parents=True)
    write(tmp_path / "home" / ".tunnelmesh", "name: fromhome\n", "config.yaml")
    assert load_peer_config().name == "fromhome"
    assert load_peer_config(str(tmp_path / "peer.yaml")).name == "fromcwd"
    with pytest.raises(ConfigError, match="no server config found"):
        load_server_config()
    write(tmp_path, f'auth_token: "{TOKEN}"\n', "tunnelmesh-server.yaml")
    assert load_server_config().auth_token == TOKEN
    assert find_config(["server.yaml", "tunnelmesh-server.yaml"]) == Path("tunnelmesh-server.yaml")


def test_the_old_udp_port_key_is_read_as_listen_port_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer.yaml (or a server.yaml's join_mesh) from before the rename keeps its port."""
    peer = write(tmp_path, "name: alpha\ntransports:\n  udp_port: 4001\n", "peer.yaml")
    server = write(
        tmp_path,
        f'auth_token: "{TOKEN}"\njoin_mesh:\n  name: hub\n  transports:\n    udp_port: 4002\n',
        "server.yaml",
    )
    with caplog.at_level("WARNING", logger="tunnelmesh.config"):
        assert load_config(peer, PeerConfig).transports.listen_port == 4001
        join_mesh = load_config(server, ServerConfig).join_mesh
    assert join_mesh is not None and join_mesh.transports.listen_port == 4002
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"{peer}: transports.udp_port is deprecated: it is now transports.listen_port (same "
        "meaning); rename the key",
        f"{server}: join_mesh.transports.udp_port is deprecated: it is now "
        "join_mesh.transports.listen_port (same meaning); rename the key",
    ]
    # the new key alone: no warning
    caplog.clear()
    new = write(tmp_path, "name: alpha\ntransports:\n  listen_port: 4003\n")
    with caplog.at_level("WARNING", logger="tunnelmesh.config"):
        assert load_config(new, PeerConfig).transports.listen_port == 4003
    assert caplog.records == []


def test_the_old_and_the_new_port_key_together_are_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "transports:\n  udp_port: 4001\n  listen_port: 4002\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, PeerConfig)
    assert str(info.value) == (
        f"{p}: transports.udp_port: the old name of transports.listen_port, which is set too; "
        "keep only transports.listen_port"
    )
    bad = write(tmp_path, "transports:\n  listen_port: 70000\n")
    with pytest.raises(ConfigError, match=r"listen_port must be 0\.\.65535"):
        load_config(bad, PeerConfig)


def test_transport_order_names_no_transport_by_default() -> None:
    """Core's schema names no plugin: an empty order is every installed transport by its own
    preference (test_node_transports_built checks the node's order)."""
    assert PeerConfig().transports.order == []
