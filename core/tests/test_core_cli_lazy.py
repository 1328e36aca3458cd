"""LazyGroup: commands named by import path are imported on first use, and only then."""

from __future__ import annotations

import sys

import click
import pytest
from click.testing import CliRunner
from tunnelmesh.cli.lazy import LazyGroup, add_lazy_command

PLUGINS = "tunnelmesh.cli.plugins_cmd"


def _forget(module: str) -> None:
    sys.modules.pop(module, None)


def test_a_lazy_command_is_imported_when_read_not_when_listed() -> None:
    _forget(PLUGINS)
    group = LazyGroup(name="root")
    add_lazy_command(group, "plugins", f"{PLUGINS}:plugins", "List installed plugins.")
    assert "plugins" in group.commands and list(group.commands) == ["plugins"]
    assert group.loaded_commands() == [] and PLUGINS not in sys.modules
    result = CliRunner().invoke(group, ["--help"])
    assert "List installed plugins." in result.output
    assert PLUGINS not in sys.modules
    cmd = group.commands["plugins"]
    assert isinstance(cmd, click.Command) and cmd.name == "plugins"
    assert group.loaded_commands() == ["plugins"] and PLUGINS in sys.modules
    assert group.commands.get("nope") is None
    assert dict(group.commands.items()) == {"plugins": cmd}


def test_a_plain_group_gets_the_command_at_once() -> None:
    group = click.Group(name="root")
    add_lazy_command(group, "plugins", f"{PLUGINS}:plugins", "List installed plugins.")
    assert isinstance(group.commands["plugins"], click.Command)


def test_a_wrong_import_path_fails_when_the_command_is_used() -> None:
    group = LazyGroup(name="root")
    add_lazy_command(group, "other", f"{PLUGINS}:plugins", "Misnamed.")
    with pytest.raises(ValueError, match="is the command 'plugins', not 'other'"):
        group.commands["other"]
    add_lazy_command(group, "json", f"{PLUGINS}:json", "Not a command.")
    with pytest.raises(TypeError, match="is not a click command"):
        group.commands["json"]


def test_long_help_is_cut_as_click_cuts_it() -> None:
    text = "A long line of help that goes on and on, well past the width of the terminal."
    group = LazyGroup(name="root")
    add_lazy_command(group, "x", "nowhere:x", text)
    eager = click.Group(name="root")
    eager.add_command(click.Command("x", help=text))
    for width in (40, 60, 100):
        lazy_out = CliRunner().invoke(group, ["--help"], terminal_width=width).output
        eager_out = CliRunner().invoke(eager, ["--help"], terminal_width=width).output
        assert lazy_out == eager_out
