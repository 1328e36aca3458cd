"""The import graph of core and every plugin has no cycle.

The graph is read from the sources (``ast``), not by importing them, so it also sees the imports
inside functions, which hide a cycle at start-up but make the modules inseparable: with
``a -> b -> a`` neither can be understood, tested or moved alone. Imports under
``if TYPE_CHECKING:`` are left out (they are for the type checker only), and so are
``importlib.import_module`` calls by name (the CLI's lazy command table).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_roots(root: Path) -> list[Path]:
    """``src`` folders of core, every ``tunnelmesh_*`` distribution and ``plugins/*``."""
    return [
        root / "core" / "src",
        *sorted(root.glob("tunnelmesh_*/src")),
        *sorted(root.glob("plugins/*/src")),
    ]


def modules(roots: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for src in roots:
        for path in sorted(src.rglob("*.py")):
            parts = path.relative_to(src).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``found`` it imports (anywhere in its body)."""

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in found.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    name = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    name = node.module or ""
                targets = [f"{name}.{a.name}" for a in node.names]
            for target in targets:
                dep = resolve(target)
                if dep is not None and dep != mod:
                    deps.add(dep)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_in_core_or_any_plugin() -> None:
    found = modules(source_roots(ROOT))
    assert "tunnelmesh.node.node" in found and "tunnelmesh_udp.transport" in found
    graph = import_graph(found)
    loops = cycles(graph)
    detail = [" <-> ".join(c) for c in loops]
    assert not loops, "import cycles (break them; see this file's docstring):\n" + "\n".join(detail)


def test_the_check_finds_a_cycle_through_a_deferred_import(tmp_path: Path) -> None:
    src = tmp_path / "core" / "src" / "pkg"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "a.py").write_text("from pkg.b import thing\n")
    (src / "b.py").write_text("def thing():\n    from . import c\n")
    (src / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
        "else:\n    import pkg.a\n"
    )
    (src / "d.py").write_text("import pkg.c\n")  # only a type-checking edge leads here
    graph = import_graph(modules(source_roots(tmp_path)))
    assert graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
