"""The repository as a whole: the nox matrix has one session per plugin of the catalog."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_nox_lists_one_session_per_plugin_and_the_fixed_ones() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    sessions = {s["session"] for s in json.loads(out.stdout)}
    with open(ROOT / "plugins" / "catalog.toml", "rb") as f:
        plugins = [p["name"] for p in tomllib.load(f).get("plugin", [])]
    assert {f"tests-{p}" for p in plugins} | {
        "core",
        "e2e",
        "downstream",
        "lint",
        "typecheck",
    } == sessions
    listing = subprocess.run(
        [sys.executable, "-m", "nox", "-l"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "- bench ->" in listing, "bench exists but is not in the default set"


def test_hooks_doc_is_generated_from_the_specs() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_hooks_doc.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_readme_plugin_table_matches_the_catalog() -> None:
    readme = (ROOT / "README.md").read_text()
    with open(ROOT / "plugins" / "catalog.toml", "rb") as f:
        catalog = tomllib.load(f).get("plugin", [])
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `")
        for line in readme.splitlines()
        if line.startswith("| `")
    }
    assert rows == {p["name"]: p["dist"] for p in catalog}


def test_examples_are_not_installed_in_the_development_environment() -> None:
    """`uv sync --all-packages` once installed plugins/example_transport, and every node of the
    development environment then ran the example TCP transport as a real one. Examples are
    installed only where asked for (the downstream nox session, from their own directory)."""
    from importlib.metadata import entry_points

    with open(ROOT / "pyproject.toml", "rb") as f:
        members = tomllib.load(f)["tool"]["uv"]["workspace"]["members"]
    assert not [m for m in members if m.startswith("plugins/")], members
    assert "example_tcp" not in {ep.name for ep in entry_points(group="tunnelmesh")}
