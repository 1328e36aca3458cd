"""Choosing the coordinator's state store from ``server.yaml``'s ``state:`` section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunnelmesh.coordinator.sqlite import SqliteStore
from tunnelmesh.coordinator.store import StateBackend, StateStore
from tunnelmesh.errors import ConfigError

if TYPE_CHECKING:
    from tunnelmesh.config import ServerConfig

__all__ = ["state_store_for"]


def state_store_for(config: ServerConfig, pm: Any = None) -> StateStore:
    """The unopened store ``server.yaml``'s ``state:`` section chooses.

    Args:
        config: the server config (``state``, ``data_dir``).
        pm: the plugin manager whose ``tunnelmesh_register_state_backends`` hooks offer the
            backends; None: only core's SQLite.

    Raises:
        ConfigError: no installed backend has that name, or its section is incomplete.
    """
    data_dir = Path(config.data_dir).expanduser()
    name = config.state.backend
    backends: dict[str, type[StateBackend]] = (
        pm.build_registry("state_backends").state_backends if pm is not None else {}
    )
    if name == "sqlite" and name not in backends:  # a bare coordinator (tests) has no pm
        return SqliteStore.from_config(config.state, data_dir)
    cls = backends.get(name)
    if cls is None:
        raise ConfigError(
            f"no state backend {name!r} is installed (installed: "
            f"{', '.join(sorted(backends)) or 'sqlite'}); for PostgreSQL: "
            "pip install 'tunnelmesh[postgres]'",
            key="state.backend",
        )
    return cls.from_config(config.state, data_dir)
