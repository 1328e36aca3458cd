"""The tunnelmesh pytest plugin: the ``lab`` marker and the namespace-lab fixtures.

Loaded automatically wherever ``tunnelmesh`` is installed (``pytest11`` entry point). It defines
no autouse fixtures: a test opts in by using a fixture or the marker. Fixtures: ``lab`` (one
:class:`~tunnelmesh.testing.lab.Lab` per test, torn down also when the test fails),
``module_lab`` (one lab shared by the tests of a module), ``lab_factory`` (several labs per
test), ``postgres_cluster`` (a throwaway PostgreSQL server per session,
:mod:`tunnelmesh.testing.postgres`) and ``postgres_dsn`` (a fresh database on it per test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tunnelmesh.testing import lab_unavailable_reason

if TYPE_CHECKING:
    from tunnelmesh.testing.lab import Lab
    from tunnelmesh.testing.postgres import PostgresCluster


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


@pytest.fixture(scope="module")
def module_lab() -> Iterator[Lab]:
    """One :class:`~tunnelmesh.testing.lab.Lab` for every test of a module, torn down after the
    module's last test: a module-scoped fixture builds its mesh in it once for those tests.

    Skips, with the reason, where the lab cannot run.
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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the session (:mod:`tunnelmesh.testing.postgres`).

    Skips, with the reason, where PostgreSQL is not installed.
    """
    from tunnelmesh.testing.postgres import PostgresCluster, postgres_unavailable_reason

    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = PostgresCluster()  # its own temporary directory, reachable by its user
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The connection string of a fresh database on ``postgres_cluster``, dropped after."""
    import secrets

    if not postgres_cluster.running():  # a test before stopped it on purpose
        postgres_cluster.start()
    name = f"tm_{secrets.token_hex(6)}"
    dsn = postgres_cluster.create_database(name)
    yield dsn
    if not postgres_cluster.running():
        postgres_cluster.start()
    postgres_cluster.drop_database(name)
