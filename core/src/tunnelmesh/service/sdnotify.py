"""systemd's notify protocol (``sd_notify``), without libsystemd.

A service of ``Type=notify`` gets ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
socket) and tells the manager ``READY=1`` when it serves, ``STATUS=...`` lines,
``WATCHDOG=1`` pings more often than ``WATCHDOG_USEC`` and ``STOPPING=1``, one datagram each.
Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

__all__ = ["notify", "watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract namespace
    if not path.startswith("/"):
        return None
    return path


def notify(*lines: str) -> bool:
    """Send ``lines`` (``READY=1``, ``STATUS=...``) as one datagram; True when sent."""
    addr = _address()
    if addr is None:
        return False
    msg = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(msg)
    except OSError as exc:
        log.debug("sd_notify %s: %s", lines, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None without one.

    ``WATCHDOG_PID``, when set, must be this process.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or _address() is None:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 / 2


async def watchdog(alive: Callable[[], bool], interval: float | None = None) -> None:
    """Ping ``WATCHDOG=1`` every ``interval`` seconds while ``alive()`` is true.

    When ``alive()`` turns false the pings stop, so systemd's watchdog restarts the service.
    Returns at once without a watchdog.
    """
    interval = watchdog_interval() if interval is None else interval
    if interval is None:
        return
    while True:
        if alive():
            notify("WATCHDOG=1")
        else:
            log.warning("watchdog: the forwarder stopped; no more pings")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.sleep(interval)
