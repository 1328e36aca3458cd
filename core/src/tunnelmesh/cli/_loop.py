"""The event loop a long-running command runs on: uvloop when it is installed, else asyncio's.

A node's data plane is reader callbacks on the TUN device and the transports' sockets; uvloop
dispatches them with less Python per wake-up than asyncio's selector loop. ``tunnelmesh join``
(a peer), ``tunnelmesh serve`` with ``join_mesh`` and a TUN device (the coordinator's own peer)
and ``tunnelmesh dns serve`` run on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on a uvloop loop, or on asyncio's when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional (not on Windows)
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
