"""The CLI: help, init, plugins, and errors as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from tunnelmesh import hookimpl
from tunnelmesh._manager import PluginManager
from tunnelmesh.cli import build_cli, main
from tunnelmesh.config import PeerConfig, ServerConfig, load_config
from tunnelmesh.errors import ConfigError


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`init` creates the node's identity key: keep it out of the real ~/.tunnelmesh."""
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "tmhome"))


def run(pm: PluginManager, *args: str) -> Any:
    return CliRunner().invoke(build_cli(pm), list(args), obj=pm, catch_exceptions=False)


def test_help_lists_commands_and_envvars() -> None:
    result = run(PluginManager(), "--help")
    assert result.exit_code == 0
    assert "TUNNELMESH_LOG_LEVEL" in result.output
    assert "plugins" in result.output and "init" in result.output


def test_init_writes_files_that_load(tmp_path: Path) -> None:
    result = run(PluginManager(), "init", "--server", "--peer", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    server = load_config(tmp_path / "server.yaml", ServerConfig)
    assert len(server.auth_token) == 64
    peer = load_config(tmp_path / "peer.yaml", PeerConfig)
    assert peer.transports.order == ["udp", "ssh", "relay"]
    assert (tmp_path / "server.yaml").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tmhome" / "id_ed25519").stat().st_mode & 0o777 == 0o600
    # a second run refuses to overwrite
    with pytest.raises(ConfigError, match="exists; pass --force"):
        run(PluginManager(), "init", "--peer", "-o", str(tmp_path))
    assert run(PluginManager(), "init", "--peer", "-o", str(tmp_path), "--force").exit_code == 0


def test_init_needs_a_choice() -> None:
    result = CliRunner().invoke(build_cli(PluginManager()), ["init"], obj=PluginManager())
    assert result.exit_code == 2
    assert "--server, --peer or both" in result.output


def test_plugin_commands_are_added() -> None:
    mod = types.ModuleType("cmdplugin")

    @click.command()
    def hello() -> None:
        """Say hello."""
        click.echo("hello from a plugin")

    @hookimpl
    def tunnelmesh_register_commands(cli: click.Group) -> None:
        cli.add_command(hello)

    mod.tunnelmesh_register_commands = tunnelmesh_register_commands  # type: ignore[attr-defined]
    pm = PluginManager()
    pm.register(mod, name="cmdplugin")
    assert run(pm, "hello").output == "hello from a plugin\n"


def test_plugins_json() -> None:
    pm = PluginManager()
    result = run(pm, "plugins", "--json")
    assert json.loads(result.output) == []
    assert "no plugins installed" in run(pm, "plugins").output


def test_errors_print_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "peer.yaml").write_text("x")
    assert main(["init", "--peer", "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert err.startswith("tunnelmesh: error: ") and "Traceback" not in err


def test_console_script_runs() -> None:
    env = {**os.environ, "TUNNELMESH_LOG_LEVEL": "error"}
    out = subprocess.run(
        [sys.executable, "-m", "tunnelmesh", "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.startswith("tunnelmesh, version ")
