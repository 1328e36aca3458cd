"""The lab fixtures of the tunnelmesh pytest plugin: skipping, several labs per test, and one
lab for the tests of a module."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from tunnelmesh.testing import lab_unavailable_reason, pytest_plugin
from tunnelmesh.testing._netns import list_namespaces
from tunnelmesh.testing.lab import Lab

pytest_plugins = ["pytester"]


def test_lab_tests_skip_with_the_reason_where_the_lab_cannot_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pytest_plugin, "lab_unavailable_reason", lambda: "no lab here (test)")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.lab
        def test_marked():
            raise AssertionError("must not run")

        def test_uses_fixture(lab):
            raise AssertionError("must not run")

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*no lab here (test)*"])


@pytest.mark.lab
def test_lab_factory_builds_independent_labs(lab_factory: Callable[..., Lab]) -> None:
    assert lab_unavailable_reason() is None
    one, two = lab_factory(), lab_factory()
    a1, a2 = one.add_host("a"), two.add_host("a")
    b1 = one.add_host("b")
    assert a1.address == a2.address and a1.ns != a2.ns
    assert a1.ping(b1.address)
    assert not a2.ping(b1.address)  # same address space, separate wires
    assert set(one.namespaces + two.namespaces) <= set(list_namespaces())


@pytest.mark.lab
def test_module_lab_is_one_lab_for_the_tests_of_a_module_then_removed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_one="""
        import json, os

        SEEN = []

        def test_first(module_lab):
            SEEN.append(module_lab)
            module_lab.add_host("a")

        def test_second(module_lab):
            assert module_lab is SEEN[0] and "a" in module_lab.hosts
            with open(os.environ["SEEN_FILE"], "w") as f:
                json.dump(module_lab.namespaces, f)
        """,
        test_two="""
        def test_other_module(module_lab):
            assert "a" not in module_lab.hosts
        """,
    )
    seen = pytester.path / "namespaces.json"
    monkeypatch.setenv("SEEN_FILE", str(seen))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    namespaces = json.loads(seen.read_text())
    assert namespaces and not set(namespaces) & set(list_namespaces())
