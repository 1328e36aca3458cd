"""The push hub closes channels that attach while the coordinator is stopping (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

from tunnelmesh.coordinator.push import PushHub


class FakeWs:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = asyncio.Event()

    async def send_str(self, data: str) -> None:
        self.sent.append(data)

    async def close(self) -> None:
        self.closed.set()


async def _attach_after_close() -> tuple[FakeWs, FakeWs, PushHub]:
    hub = PushHub()
    early: Any = FakeWs()
    hub.attach("a", early, b"snapshot-a")
    await asyncio.sleep(0)
    await hub.close()
    late: Any = FakeWs()  # its handshake finished while the hub was closing
    sub = hub.attach("b", late, b"snapshot-b")
    assert sub.task is not None
    await asyncio.wait_for(sub.task, 1)
    return early, late, hub


def test_a_channel_that_attaches_after_close_is_closed_at_once() -> None:
    early, late, hub = asyncio.run(_attach_after_close())
    assert early.sent == ["snapshot-a"] and early.closed.is_set()
    assert late.sent == [] and late.closed.is_set()
    assert len(hub) == 0 and not hub.is_connected("b")


async def _replace() -> tuple[FakeWs, FakeWs]:
    hub = PushHub()
    first: Any = FakeWs()
    second: Any = FakeWs()
    hub.attach("a", first, b"s1")
    hub.attach("a", second, b"s2")
    hub.broadcast(b"change")
    await asyncio.sleep(0.01)
    await hub.close()
    return first, second


def test_a_new_channel_replaces_the_old_one() -> None:
    first, second = asyncio.run(_replace())
    assert first.closed.is_set() and first.sent in ([], ["s1"])
    assert "change" in "\n".join(second.sent) and second.closed.is_set()
