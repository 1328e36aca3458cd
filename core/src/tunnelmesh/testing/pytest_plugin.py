"""The tunnelmesh pytest plugin: the ``lab`` marker and the namespace-lab fixtures.

Loaded automatically wherever ``tunnelmesh`` is installed (``pytest11`` entry point). It defines
no autouse fixtures: a test opts in by using a fixture or the marker.
"""

from __future__ import annotations

import pytest

from tunnelmesh.testing import lab_unavailable_reason


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
