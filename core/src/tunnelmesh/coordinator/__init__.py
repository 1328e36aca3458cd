"""The coordination server: discovery, IP allocation, DNS records and NAT-traversal help.

It never routes ordinary traffic. See ``docs/control-plane.md`` for the protocol.

* :mod:`~tunnelmesh.coordinator.core`: the registry and its rules (:class:`Coordinator`),
  its parts in :mod:`.registration`, :mod:`.peerops`, :mod:`.views`, :mod:`.announce`,
  :mod:`.sharing` and :mod:`.failures` (:class:`ApiFailure`);
* :mod:`~tunnelmesh.coordinator.api`: the aiohttp HTTPS API and push WebSocket;
* :mod:`~tunnelmesh.coordinator.server`: running it all (:class:`CoordinatorServer`);
* sans-IO parts: :mod:`.auth`, :mod:`.alloc`, :mod:`.liveness`, and :mod:`tunnelmesh.stun`;
* :mod:`~tunnelmesh.coordinator.store`: the :class:`StateStore` interface;
  :mod:`~tunnelmesh.coordinator.sqlite`: the embedded SQLite store;
* :mod:`~tunnelmesh.coordinator.clients`: clients of concentrator peers (:class:`ClientBook`).
"""

from __future__ import annotations

from tunnelmesh.coordinator.clients import ClientBook, ClientRefused
from tunnelmesh.coordinator.core import ApiFailure, Coordinator
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.coordinator.sqlite import SqliteStore
from tunnelmesh.coordinator.store import (
    ClientRecord,
    PeerRecord,
    StateStore,
    StoreChange,
    StoreConflict,
)

__all__ = [
    "ApiFailure",
    "ClientBook",
    "ClientRecord",
    "ClientRefused",
    "Coordinator",
    "CoordinatorServer",
    "PeerRecord",
    "SqliteStore",
    "StateStore",
    "StoreChange",
    "StoreConflict",
]
