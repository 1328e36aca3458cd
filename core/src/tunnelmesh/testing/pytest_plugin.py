"""The tunnelmesh pytest plugin: the ``lab`` marker and the namespace-lab fixtures.

Loaded automatically wherever ``tunnelmesh`` is installed (``pytest11`` entry point). It defines
no autouse fixtures: a test opts in by using a fixture or the marker. Fixtures: ``lab`` (one
:class:`~tunnelmesh.testing.lab.Lab` per test, torn down also when the test fails) and
``lab_factory`` (several labs per test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tunnelmesh.testing import lab_unavailable_reason

if TYPE_CHECKING:
    from tunnelmesh.testing.lab import Lab


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab: needs root, /dev/net/tun and network namespaces (tunnelmesh lab)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("lab") is not None:
            item.add_marker(skip)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh :class:`~tunnelmesh.testing.lab.Lab`, torn down after the test (also on failure).

    Skips the test, with the reason, where the lab cannot run (no root, no /dev/net/tun, ...).
    """
    reason = lab_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from tunnelmesh.testing.lab import Lab

    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """Call it to build labs (keyword arguments go to ``Lab``); all are torn down at the end."""
    reason = lab_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from tunnelmesh.testing.lab import Lab

    labs: list[Lab] = []

    def make(**kwargs: Any) -> Lab:
        new = Lab(**kwargs)
        labs.append(new)
        return new

    yield make
    errors: list[BaseException] = []
    for made in reversed(labs):
        try:
            made.close()
        except Exception as exc:  # close every lab before reporting
            errors.append(exc)
    if errors:
        raise errors[0]
