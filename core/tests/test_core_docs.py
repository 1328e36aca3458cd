"""Meta-tests: every hook spec is documented in docs/hooks.md with its exact arguments."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from tunnelmesh import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"
SPECS = {n: f for n, f in vars(hookspecs).items() if n.startswith("tunnelmesh_") and callable(f)}


def headings() -> dict[str, list[str]]:
    text = (DOCS / "hooks.md").read_text()
    found = {}
    for m in re.finditer(r"^## `(tunnelmesh_\w+)\(([^)]*)\)`", text, re.M):
        found[m.group(1)] = [a.strip() for a in m.group(2).split(",") if a.strip()]
    return found


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_documented_with_its_arguments(name: str) -> None:
    docs = headings()
    assert name in docs, f"docs/hooks.md has no heading for {name}: run scripts/gen_hooks_doc.py"
    assert docs[name] == list(inspect.signature(SPECS[name]).parameters)


def test_no_heading_for_a_hook_that_does_not_exist() -> None:
    assert sorted(headings()) == sorted(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_docstring_says_params_and_return(name: str) -> None:
    doc = SPECS[name].__doc__ or ""
    for arg in inspect.signature(SPECS[name]).parameters:
        assert f":param {arg}:" in doc, f"{name} does not document {arg}"
    assert ":return:" in doc
