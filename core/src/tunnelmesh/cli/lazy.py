"""Commands imported when they are used: ``tunnelmesh --help`` imports none of them.

The root group is a :class:`LazyGroup`. Core and plugins name each command by
``"module:attribute"`` with its one-line help (:func:`add_lazy_command`); the module is imported
when the command runs, when its own ``--help`` is asked for, or when code reads it from
``group.commands``. ``tunnelmesh --help`` lists the names and the one-line helps without
importing anything, so starting the CLI costs only click, pluggy and core's small modules, and a
long-running command (``tunnelmesh proxy``, ``tunnelmesh join``) holds only what it uses.

A plugin adds its commands in ``tunnelmesh_register_commands``::

    @hookimpl
    def tunnelmesh_register_commands(cli):
        add_lazy_command(cli, "udp", "tunnelmesh_udp.cli:udp", "UDP transport tools.")

Given a plain :class:`click.Group`, :func:`add_lazy_command` imports the command at once.
"""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import ItemsView, ValuesView
from typing import Any

import click

__all__ = ["LazyGroup", "add_lazy_command"]


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters as click cuts a command's one-line help."""
    if len(text) <= limit:
        return text
    if limit < 3:
        return "..."
    return textwrap.shorten(text, limit, placeholder="...", break_on_hyphens=False)


class _Lazy:
    """A command not imported yet: where it lives and its one-line help."""

    __slots__ = ("import_path", "short_help")

    def __init__(self, import_path: str, short_help: str) -> None:
        self.import_path = import_path
        self.short_help = short_help

    def load(self, name: str) -> click.Command:
        module, _, attr = self.import_path.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{self.import_path} is not a click command")
        if cmd.name != name:
            raise ValueError(f"{self.import_path} is the command {cmd.name!r}, not {name!r}")
        return cmd


class _Commands(dict[str, Any]):
    """``group.commands``: the names at once, each command imported when it is read."""

    def __getitem__(self, name: str) -> click.Command:
        value = dict.__getitem__(self, name)
        if isinstance(value, _Lazy):
            value = value.load(name)
            dict.__setitem__(self, name, value)
        cmd: click.Command = value
        return cmd

    def get(self, name: str, default: Any = None) -> Any:
        if not dict.__contains__(self, name):
            return default
        return self[name]

    def items(self) -> ItemsView[str, click.Command]:  # type: ignore[override]
        for name in list(self):
            self[name]
        return dict.items(self)

    def values(self) -> ValuesView[click.Command]:  # type: ignore[override]
        self.items()
        return dict.values(self)

    def hidden(self, name: str) -> bool:
        value = dict.__getitem__(self, name)
        return not isinstance(value, _Lazy) and bool(value.hidden)

    def short_help(self, name: str, limit: int) -> str:
        """The one-line help, without importing the command."""
        value = dict.__getitem__(self, name)
        if isinstance(value, _Lazy):
            return _shorten(value.short_help, limit)
        cmd: click.Command = value
        return cmd.get_short_help_str(limit)

    def loaded(self) -> list[str]:
        """The names whose command is imported."""
        return [n for n, v in dict.items(self) if not isinstance(v, _Lazy)]


class LazyGroup(click.Group):
    """A click group whose commands may be named by import path (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self.commands)

    def add_lazy_command(self, name: str, import_path: str, short_help: str) -> None:
        """Add the command ``name`` found at ``"module:attribute"``, imported on first use."""
        commands = self.commands
        assert isinstance(commands, _Commands)
        dict.__setitem__(commands, name, _Lazy(import_path, short_help))

    def loaded_commands(self) -> list[str]:
        """The names of the commands imported so far."""
        commands = self.commands
        assert isinstance(commands, _Commands)
        return commands.loaded()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, without importing a lazy command."""
        commands = self.commands
        assert isinstance(commands, _Commands)
        names = [n for n in self.list_commands(ctx) if not commands.hidden(n)]
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(name, commands.short_help(name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def add_lazy_command(group: click.Group, name: str, import_path: str, short_help: str) -> None:
    """Add a command by import path: lazily to a :class:`LazyGroup`, else imported now.

    Args:
        group: the group to add to (the root group handed to ``tunnelmesh_register_commands``).
        name: the command's name (the command at ``import_path`` must have it).
        import_path: ``"package.module:attribute"`` of the click command.
        short_help: the one-line help ``tunnelmesh --help`` lists; it must be what the command
            itself shows (``tests/test_e2e_cli.py`` compares them).

    Raises:
        TypeError / ValueError: (plain group) ``import_path`` is not a command named ``name``.
    """
    if isinstance(group, LazyGroup):
        group.add_lazy_command(name, import_path, short_help)
    else:
        group.add_command(_Lazy(import_path, short_help).load(name), name)
