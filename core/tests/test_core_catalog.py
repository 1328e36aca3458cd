"""Meta-tests: plugins/catalog.toml is the one list of feature distributions; the extras of
core, the workspace, each distribution's entry point and the nox matrix agree with it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def toml(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


CATALOG = toml(ROOT / "plugins" / "catalog.toml").get("plugin", [])
CORE = toml(ROOT / "core" / "pyproject.toml")
WORKSPACE = toml(ROOT / "pyproject.toml")
VERSION = CORE["project"]["version"]


def test_every_feature_directory_is_in_the_catalog() -> None:
    dirs = sorted(p.parent.name for p in ROOT.glob("tunnelmesh_*/pyproject.toml"))
    assert dirs == sorted(p["dir"] for p in CATALOG)


def test_core_extras_match_the_catalog() -> None:
    extras = CORE["project"]["optional-dependencies"]
    pins = sorted(f"{p['dist']}=={VERSION}" for p in CATALOG)
    assert sorted(extras["all"]) == pins
    assert {k: v for k, v in extras.items() if k not in {"all", "fast"}} == {
        p["name"]: [f"{p['dist']}=={VERSION}"] for p in CATALOG
    }


@pytest.mark.parametrize("plugin", CATALOG, ids=[p["name"] for p in CATALOG])
def test_distribution_matches_its_catalog_entry(plugin: dict[str, Any]) -> None:
    project = toml(ROOT / plugin["dir"] / "pyproject.toml")["project"]
    assert project["name"] == plugin["dist"]
    assert project["version"] == VERSION, "feature distributions are versioned in lockstep"
    assert f"tunnelmesh=={VERSION}" in project["dependencies"]
    entry = project["entry-points"]["tunnelmesh"]
    assert list(entry) == [plugin["name"]], "one entry point named after the feature word"
    assert entry[plugin["name"]] == f"{plugin['dir']}.plugin"
    assert "test" in project.get("optional-dependencies", {}), "a `test` extra (may be empty)"
    assert re.fullmatch(r"[a-z0-9]+", plugin["name"])
    assert plugin["dist"] in WORKSPACE["tool"]["uv"]["sources"]
    assert f"{plugin['dist']}[test]" in WORKSPACE["project"]["dependencies"]


def test_the_architecture_feature_table_names_folders_that_exist_and_every_distribution() -> None:
    """docs/architecture.md's "Where each feature lives": each folder it names exists, and each
    feature distribution of the catalog has its row (a newcomer finds every feature there)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Where each feature lives", 1)[1].split("\n## ", 1)[0]
    folders = re.findall(r"^\|[^|]+\| `([^`]+)` \|$", section, re.MULTILINE)
    assert folders, "the table has no rows"
    missing = [f for f in folders if not (ROOT / f.rstrip("/")).exists()]
    assert not missing, missing
    assert {p["dir"] + "/" for p in CATALOG} <= set(folders)
