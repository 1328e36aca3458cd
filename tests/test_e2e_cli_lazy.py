"""Lazy commands with every plugin installed: ``tunnelmesh --help`` imports no command, and
lists each with the one-line help the command itself has."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.cli import build_cli
from tunnelmesh.cli.lazy import LazyGroup


@pytest.mark.parametrize("width", [80, 200, 50])
def test_help_lists_what_the_loaded_commands_say(width: int) -> None:
    pm = make_plugin_manager()
    lazy = build_cli(pm)
    assert isinstance(lazy, LazyGroup)
    shown = CliRunner().invoke(lazy, ["--help"], obj=pm, terminal_width=width)
    assert shown.exit_code == 0, shown.output
    assert lazy.loaded_commands() == []  # --help imported none of them
    loaded = build_cli(pm)
    assert len(dict(loaded.commands.items())) >= 15  # every command imported now
    full = CliRunner().invoke(loaded, ["--help"], obj=pm, terminal_width=width)
    assert shown.output == full.output


def test_help_in_a_fresh_process_imports_no_command_and_no_transport() -> None:
    code = (
        "import json, sys\n"
        "from tunnelmesh.cli import main\n"
        "code = main(['--help'])\n"
        "print(json.dumps([code, sorted(sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    code_, modules = json.loads(out.splitlines()[-1])
    assert code_ == 0
    heavy = [
        m
        for m in modules
        if m.endswith("_cmd")
        or m.startswith(("aiohttp", "asyncssh", "websockets", "cryptography", "nacl"))
        or m.endswith(".transport")
        or (m.endswith(".cli") and m != "tunnelmesh.cli")
        or m.startswith("tunnelmesh.coordinator")
        or m.startswith("tunnelmesh.node")
    ]
    assert heavy == []


def test_proxy_rules_alone_import_no_transport() -> None:
    code = (
        "import json, sys\n"
        "from tunnelmesh._manager import make_plugin_manager\n"
        "rules = make_plugin_manager().build_registry('proxy_rules').proxy_rules\n"
        "print(json.dumps([sorted(rules), sorted(sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    rules, modules = json.loads(out.splitlines()[-1])
    assert "cmux" in rules
    assert [m for m in modules if m.endswith(".transport") or m.startswith("asyncssh")] == []
