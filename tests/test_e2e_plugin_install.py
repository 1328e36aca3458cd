"""A third-party plugin distribution installed into a fresh environment shows up in
`tunnelmesh plugins`; uninstalling it removes it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = """
from typing import ClassVar

from tunnelmesh import hookimpl
from tunnelmesh.abc import PacketFilter


class DropAll(PacketFilter):
    name: ClassVar[str] = "dropall"

    def verdicts(self, packets, peer, inbound):
        return [False] * len(packets)


@hookimpl
def tunnelmesh_register_filters(registry):
    registry.add_filter(DropAll)
"""


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uv", *args], capture_output=True, text=True, check=True
    )


@pytest.mark.slow
def test_throwaway_plugin_install_and_uninstall(tmp_path: Path) -> None:
    dist = tmp_path / "tm-throwaway"
    (dist / "src" / "tm_throwaway").mkdir(parents=True)
    (dist / "src" / "tm_throwaway" / "__init__.py").write_text("")
    (dist / "src" / "tm_throwaway" / "plugin.py").write_text(PLUGIN)
    (dist / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "tm-throwaway"
            version = "9.9.9"
            dependencies = ["tunnelmesh"]

            [project.entry-points.tunnelmesh]
            throwaway = "tm_throwaway.plugin"

            [tool.hatch.build.targets.wheel]
            packages = ["src/tm_throwaway"]
            """
        )
    )
    venv = tmp_path / "venv"
    uv("venv", "--quiet", "--python", sys.executable, str(venv))
    python = str(venv / "bin" / "python")
    uv("pip", "install", "--quiet", "--python", python, "-e", str(ROOT / "core"))
    cli = str(venv / "bin" / "tunnelmesh")

    def plugins() -> dict[str, dict[str, object]]:
        out = subprocess.run([cli, "plugins", "--json"], capture_output=True, text=True, check=True)
        return {p["name"]: p for p in json.loads(out.stdout)}

    assert "throwaway" not in plugins()
    uv("pip", "install", "--quiet", "--python", python, str(dist))
    listed = plugins()["throwaway"]
    assert listed["dist"] == "tm-throwaway" and listed["version"] == "9.9.9"
    assert listed["status"] == "loaded"
    assert listed["hooks"] == ["tunnelmesh_register_filters"]
    assert listed["provides"] == {"filter": ["dropall"]}
    uv("pip", "uninstall", "--quiet", "--python", python, "tm-throwaway")
    assert "throwaway" not in plugins()
