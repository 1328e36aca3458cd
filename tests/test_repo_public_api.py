"""Plugins import only the public core modules that docs/api.md lists.

The list is read from the table of ``docs/api.md``, so the document and the check cannot drift.
The imports are read with ``ast`` from the installed code (``src/``) of every ``tunnelmesh_*``
distribution and of ``plugins/*``: top-level, inside functions and under ``if TYPE_CHECKING:``.
A module or an imported name that starts with ``_`` is private even in a listed module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "src"
API_DOC = ROOT / "docs" / "api.md"
PLUGIN_ROOTS = [*sorted(ROOT.glob("tunnelmesh_*/src")), *sorted(ROOT.glob("plugins/*/src"))]

_ROW = re.compile(r"^\| `(tunnelmesh(?:\.[a-z_]+)*)` \|", re.MULTILINE)


def public_modules(doc: str) -> set[str]:
    return set(_ROW.findall(doc))


def _is_module(name: str, core: Path) -> bool:
    path = core.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def core_imports(tree: ast.AST, core: Path) -> list[tuple[int, str, str | None]]:
    """(line, core module, imported name or None) for every import of a core module."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tunnelmesh":
                    found.append((node.lineno, alias.name, None))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "tunnelmesh":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if _is_module(sub, core):
                    found.append((node.lineno, sub, None))
                else:
                    found.append((node.lineno, node.module, alias.name))
    return found


def violations(sources: dict[str, str], public: set[str], core: Path) -> list[tuple[str, int, str]]:
    """(file, line, what) for every import of a private or unlisted core module or name."""
    bad: list[tuple[str, int, str]] = []
    for rel, text in sources.items():
        for line, module, name in core_imports(ast.parse(text), core):
            private = any(part.startswith("_") for part in module.split("."))
            if private or module not in public:
                bad.append((rel, line, module))
            elif name is not None and name.startswith("_") and not name.startswith("__"):
                bad.append((rel, line, f"{module}.{name}"))
    return bad


def plugin_sources() -> dict[str, str]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_text()
        for src in PLUGIN_ROOTS
        for path in sorted(src.rglob("*.py"))
    }


def test_plugins_import_only_the_public_api() -> None:
    public = public_modules(API_DOC.read_text())
    bad = violations(plugin_sources(), public, CORE)
    assert not bad, (
        "plugins import core modules docs/api.md does not list (list and document the module, "
        f"or import it from a public one): {bad}"
    )


def test_every_listed_module_exists_and_is_public() -> None:
    public = public_modules(API_DOC.read_text())
    assert len(public) > 20, "the table of docs/api.md was not read"
    missing = sorted(m for m in public if not _is_module(m, CORE))
    assert not missing, f"docs/api.md lists modules core does not have: {missing}"
    private = sorted(m for m in public if any(p.startswith("_") for p in m.split(".")))
    assert not private, f"docs/api.md lists private modules: {private}"


def test_the_check_finds_private_and_unlisted_imports() -> None:
    source = (
        "from tunnelmesh import hookimpl, _manager\n"
        "import tunnelmesh.coordinator.store\n"
        "from tunnelmesh.errors import TunnelmeshError\n"
        "from tunnelmesh.coordinator import core\n"
        "from tunnelmesh.abc import _Private\n"
        "def f():\n"
        "    from tunnelmesh.node.node import Node\n"
        "if TYPE_CHECKING:\n"
        "    from tunnelmesh.mesh.offload import Coalescer\n"
    )
    public = {"tunnelmesh", "tunnelmesh.errors", "tunnelmesh.abc", "tunnelmesh.coordinator"}
    assert violations({"p.py": source}, public, CORE) == [
        ("p.py", 1, "tunnelmesh._manager"),
        ("p.py", 2, "tunnelmesh.coordinator.store"),
        ("p.py", 4, "tunnelmesh.coordinator.core"),
        ("p.py", 5, "tunnelmesh.abc._Private"),
        ("p.py", 7, "tunnelmesh.node.node"),
        ("p.py", 9, "tunnelmesh.mesh.offload"),
    ]
