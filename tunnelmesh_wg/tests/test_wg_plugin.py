"""The ``wg`` entry point loads and registers the ``wg`` command lazily."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
from tunnelmesh.cli.lazy import LazyGroup

from tunnelmesh_wg import plugin


def test_entry_point_loads_and_registers_the_wg_command_lazily() -> None:
    (ep,) = [e for e in entry_points(group="tunnelmesh") if e.name == "wg"]
    assert ep.load() is plugin
    group = LazyGroup()
    plugin.tunnelmesh_register_commands(group)
    assert "wg" not in group.loaded_commands()
    cmd = group.commands["wg"]
    assert isinstance(cmd, click.Group)
    assert group.loaded_commands() == ["wg"]


def test_the_wireguard_section_of_peer_yaml(tmp_path: Path) -> None:
    from tunnelmesh._manager import make_plugin_manager
    from tunnelmesh.config import load_peer_config
    from tunnelmesh.errors import ConfigError
    from tunnelmesh_wg.concentrator import WireGuardSection, section_of

    sections = make_plugin_manager().build_registry().config_sections
    path = tmp_path / "peer.yaml"
    path.write_text(
        'wireguard:\n  enabled: true\n  listen_port: 51821\n  endpoint: "vpn.example.org:51821"\n'
    )
    cfg = load_peer_config(str(path), sections)
    assert section_of(cfg) == WireGuardSection(
        enabled=True, listen_port=51821, endpoint="vpn.example.org:51821"
    )
    path.write_text("tun:\n  name: tm0\n")
    assert section_of(load_peer_config(str(path), sections)) is None  # not a concentrator
    path.write_text("wireguard:\n  enabled: true\n")
    with pytest.raises(ConfigError, match="endpoint"):
        load_peer_config(str(path), sections)


def test_the_dashboard_gets_a_wireguard_clients_page() -> None:
    from tunnelmesh._manager import make_plugin_manager

    panel = make_plugin_manager().build_registry("admin_panels").admin_panels["wireguard"]
    assert (panel.api, panel.list_key) == ("/api/v1/wg/clients", "clients")
    assert [key for key, _ in panel.columns][:4] == [
        "name",
        "mesh_ip",
        "concentrator_name",
        "state",
    ]
