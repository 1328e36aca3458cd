"""The whole CLI, with every installed plugin's commands: each option has an environment
variable shown in --help, and every command's --help works."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.cli import build_cli

# The reverse proxy keeps the variable names of the tool it replaces, as its spec says.
ALLOWED_PREFIXES = ("TUNNELMESH_", "CMUX_")


def walk(
    cmd: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from walk(sub, (*path, name))


PM = make_plugin_manager()
ROOT = build_cli(PM)
COMMANDS = list(walk(ROOT))


@pytest.mark.parametrize(
    ("path", "cmd"), COMMANDS, ids=[" ".join(p) or "tunnelmesh" for p, _ in COMMANDS]
)
def test_every_option_has_an_environment_variable(
    path: tuple[str, ...], cmd: click.Command
) -> None:
    missing = []
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.name in {"help", "version"}:
            continue
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        if (
            not envvars
            or not all(e.startswith(ALLOWED_PREFIXES) for e in envvars)
            or not param.show_envvar
        ):
            missing.append(param.opts[-1])
    assert not missing, f"options without a shown TUNNELMESH_* envvar: {missing}"


@pytest.mark.parametrize(
    ("path", "cmd"), COMMANDS, ids=[" ".join(p) or "tunnelmesh" for p, _ in COMMANDS]
)
def test_help_explains(path: tuple[str, ...], cmd: click.Command) -> None:
    result = CliRunner().invoke(ROOT, [*path, "--help"], obj=PM)
    assert result.exit_code == 0, result.output
    assert (cmd.help or "").strip(), f"`tunnelmesh {' '.join(path)}` has no help text"
