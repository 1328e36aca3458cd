"""The ``wg`` entry point loads and registers the ``wg`` command lazily."""

from __future__ import annotations

from importlib.metadata import entry_points

import click
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
