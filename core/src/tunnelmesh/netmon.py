"""Network monitoring: netlink address and route events, debounced, to one callback.

A node whose underlay changes (a new address, a lost route, Wi-Fi to Ethernet) must re-learn
its endpoints, tell the coordinator and re-establish paths quickly. :class:`NetworkMonitor`
listens to the kernel's rtnetlink multicast groups for IPv4/IPv6 addresses and routes and for
links (through pyroute2's asyncio socket), drops events about the node's own TUN device and
the mesh's routes, and calls ``on_change()`` once things have been quiet for ``debounce``
seconds (a DHCP renewal or an interface coming up sends a burst of messages), but never later
than ``max_delay`` after the first event of a burst.

The decisions are sans-IO and tested alone: :func:`relevant` (is this message about the
underlay?) and :class:`Debouncer` (when to fire, with explicit ``now``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

__all__ = ["Debouncer", "NetworkMonitor", "relevant"]

log = logging.getLogger(__name__)

# rtnetlink multicast groups (linux/rtnetlink.h)
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
)

_ADDR_EVENTS = {"RTM_NEWADDR", "RTM_DELADDR"}
_ROUTE_EVENTS = {"RTM_NEWROUTE", "RTM_DELROUTE"}
_LINK_EVENTS = {"RTM_NEWLINK", "RTM_DELLINK"}
_RT_TABLE_LOCAL = 255


def relevant(
    event: str,
    fields: Mapping[str, Any],
    attrs: Mapping[str, Any],
    *,
    ignore_indexes: Iterable[int] = (),
    ignore_networks: Iterable[str] = (),
) -> bool:
    """Whether one rtnetlink message is about the underlay (worth re-learning endpoints).

    Args:
        event: the message type (``RTM_NEWADDR``, ``RTM_DELROUTE``, ...).
        fields: the message's header fields (``index``, ``table``, ``dst_len``, ...).
        attrs: its attributes by name (``IFA_ADDRESS``, ``RTA_DST``, ``RTA_OIF``, ...).
        ignore_indexes: interface indexes to ignore (the node's TUN device).
        ignore_networks: CIDRs whose addresses and routes are ignored (the mesh).
    """
    skip = set(ignore_indexes)
    nets = [ipaddress.ip_network(n, strict=False) for n in ignore_networks]

    def in_mesh(value: Any) -> bool:
        try:
            ip = ipaddress.ip_address(str(value))
        except ValueError:
            return False
        return any(ip in n for n in nets)

    if event in _ADDR_EVENTS:
        if fields.get("index") in skip:
            return False
        addr = attrs.get("IFA_LOCAL") or attrs.get("IFA_ADDRESS")
        if addr is None:
            return True
        ip = ipaddress.ip_address(str(addr))
        return not (ip.is_loopback or ip.is_link_local or in_mesh(ip))
    if event in _ROUTE_EVENTS:
        if fields.get("table") == _RT_TABLE_LOCAL or attrs.get("RTA_TABLE") == _RT_TABLE_LOCAL:
            return False  # the kernel's own local/broadcast routes follow address changes
        if attrs.get("RTA_OIF") in skip:
            return False
        dst = attrs.get("RTA_DST")
        if dst is not None:
            try:
                ip = ipaddress.ip_address(str(dst))
            except ValueError:
                return True
            if ip.is_multicast or ip.is_link_local or in_mesh(ip):
                return False
            if ip.version == 6 and str(ip).startswith("fe80"):
                return False
        return True
    if event in _LINK_EVENTS:
        if fields.get("index") in skip:
            return False
        # a link going up or down changes reachability; statistics updates do not matter,
        # but rtnetlink does not tell them apart cheaply: let the debounce absorb them
        return event == "RTM_DELLINK" or fields.get("change", 0xFFFFFFFF) != 0
    return False


class Debouncer:
    """When to act on a burst of events: ``quiet`` seconds after the last, at most ``max_delay``
    after the first."""

    def __init__(self, quiet: float = 0.5, max_delay: float = 2.0) -> None:
        self.quiet = quiet
        self.max_delay = max_delay
        self.first: float | None = None
        self.last: float | None = None

    def event(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def deadline(self) -> float | None:
        """When to fire (None: nothing pending)."""
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.quiet, self.first + self.max_delay)

    def due(self, now: float) -> bool:
        """True (once per burst) when it is time to fire; resets the burst."""
        d = self.deadline()
        if d is None or now < d:
            return False
        self.first = self.last = None
        return True


class NetworkMonitor:
    """Watches netlink in the current network namespace; see the module docstring.

    Args:
        on_change: called (and awaited when it returns an awaitable) after each debounced
            burst of relevant events.
        ignore_links: interface names to ignore (the TUN device).
        ignore_networks: CIDRs to ignore (the mesh).
        debounce / max_delay: see :class:`Debouncer`.
    """

    def __init__(
        self,
        on_change: Callable[[], Awaitable[object] | object],
        *,
        ignore_links: Iterable[str] = (),
        ignore_networks: Iterable[str] = (),
        debounce: float = 0.5,
        max_delay: float = 2.0,
    ) -> None:
        self.on_change = on_change
        self.ignore_links = list(ignore_links)
        self.ignore_networks = list(ignore_networks)
        self.debouncer = Debouncer(debounce, max_delay)
        self.events = 0
        """Relevant netlink messages seen."""
        self.fired = 0
        """Times ``on_change`` ran."""
        self._task: asyncio.Task[None] | None = None
        self._thread_stop: Any = None
        self._closing = False
        self._kick = asyncio.Event()
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Start listening (returns once subscribed, or when netlink is unavailable)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tm-netmon")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), 5.0)

    def _indexes(self) -> set[int]:
        out = set()
        for name in self.ignore_links:
            with contextlib.suppress(OSError):
                out.add(socket.if_nametoindex(name))
        return out

    def feed(self, event: str, fields: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """One netlink message (the reader calls it; tests may too)."""
        if relevant(
            event,
            fields,
            attrs,
            ignore_indexes=self._indexes(),
            ignore_networks=self.ignore_networks,
        ):
            self.events += 1
            self.debouncer.event(asyncio.get_running_loop().time())
            self._kick.set()

    async def _run(self) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(), name="tm-netmon-read")
        try:
            while not self._closing:
                deadline = self.debouncer.deadline()
                loop = asyncio.get_running_loop()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the finished
                # wait when an event and the close's cancellation come in the same loop turn
                # (an exit client removing its routes just before it closes the monitor), and
                # the monitor then ran on, holding up the node's stop for good.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._kick.wait()
                self._kick.clear()
                if self.debouncer.due(loop.time()):
                    self.fired += 1
                    try:
                        result = self.on_change()
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        log.exception("network change handler failed")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self) -> None:
        """Read netlink in a thread with a plain selector event loop (uvloop, which the node
        may run on, cannot open AF_NETLINK datagram endpoints); events come back to this loop
        with ``call_soon_threadsafe``. Stopping never blocks: the thread is told to stop (flag,
        task cancelled) and, being a daemon, is not waited for (no executor either, so a
        netlink read that ignores cancellation cannot hold up the event loop's shutdown)."""
        import threading

        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        state: dict[str, Any] = {}
        stop = threading.Event()
        self._thread_stop = stop

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def thread_main() -> None:
            tloop = asyncio.SelectorEventLoop()
            try:
                task = tloop.create_task(self._read_netlink(loop, stop))
                state["loop"], state["task"] = tloop, task
                with contextlib.suppress(BaseException):
                    tloop.run_until_complete(task)
            finally:
                state.pop("loop", None)
                with contextlib.suppress(Exception):
                    tloop.close()
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(finished)

        thread = threading.Thread(target=thread_main, name="tm-netmon", daemon=True)
        thread.start()
        try:
            await done
        finally:
            stop.set()
            tloop, task = state.get("loop"), state.get("task")
            if tloop is not None and task is not None:
                with contextlib.suppress(RuntimeError):
                    tloop.call_soon_threadsafe(task.cancel)

    async def _read_netlink(self, main: asyncio.AbstractEventLoop, stop: Any) -> None:
        try:
            from pyroute2 import AsyncIPRoute  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - pyroute2 is a core dependency
            log.warning("pyroute2 is missing: network changes are not watched")
            main.call_soon_threadsafe(self._ready.set)
            return
        try:
            async with AsyncIPRoute() as ipr:
                await ipr.bind(groups=GROUPS)
                with contextlib.suppress(RuntimeError):
                    main.call_soon_threadsafe(self._ready.set)
                while not stop.is_set():
                    async for msg in ipr.get():
                        if stop.is_set():
                            return
                        event = msg.get("event") or ""
                        fields = {k: msg.get(k) for k in ("index", "table", "change", "family")}
                        attrs = dict(msg.get("attrs") or [])
                        try:
                            main.call_soon_threadsafe(self.feed, event, fields, attrs)
                        except RuntimeError:  # the node's loop is gone
                            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not stop.is_set():
                log.warning("network monitor stopped: %s", exc)
            with contextlib.suppress(RuntimeError):
                main.call_soon_threadsafe(self._ready.set)

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
