"""QueuedLink, the receive side of every link (UDP, relay, SSH, the memory double).

The four copies it replaced disagreed; these tests pin the behaviour that was kept:
* every pending ``recv_batch`` wakes on close (the UDP and memory links woke only one);
* closing a link whose queue is full does not raise (the UDP link raised QueueFull);
* the transport closing a link (``_lost``) wakes a pending ``recv_batch`` (the UDP socket's
  close only set a flag: a pending receive hung for ever);
* after the peer ended a link its queued batches are still handed out, after our own
  ``aclose`` they are not (the SSH link returned them after ``aclose``, against the contract).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest
from tunnelmesh.abc import Packet
from tunnelmesh.aio.queuedlink import QueuedLink
from tunnelmesh.errors import TransportError


def sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class Link(QueuedLink):
    kind = "test link"

    def __init__(self, queue_size: int = 4) -> None:
        super().__init__("b", 1420, queue_size=queue_size)
        self.sent: list[bytes] = []
        self.dropped = 0

    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        if self.closed:
            raise self._closed_error()
        self.sent.extend(bytes(d) for d in datagrams)

    def _queue_full(self, count: int) -> None:
        self.dropped += count


@sync
async def test_queued_batches_come_out_in_order() -> None:
    link = Link()
    link._received([b"1", b"2"])
    link._received([b"3"])
    link._received([])  # an empty batch is not a close
    assert await link.recv_batch() == [b"1", b"2"]
    assert await link.recv_batch() == [b"3"]
    assert link._queue.empty()


@sync
async def test_a_full_queue_drops_and_counts() -> None:
    link = Link(queue_size=2)
    for i in range(5):
        link._received([b"x", bytes([i])])
    assert link.dropped == 6
    assert await link.recv_batch() == [b"x", b"\0"]


@sync
async def test_set_receiver_gets_what_arrived_before_then_everything() -> None:
    link = Link()
    link._received([b"early"])
    got: list[list[bytes]] = []
    link.set_receiver(lambda lk, packets: got.append(packets))
    link._received([b"late"])
    assert got == [[b"early"], [b"late"]]
    link.set_receiver(None)
    link._received([b"queued"])
    assert got == [[b"early"], [b"late"]]
    assert await link.recv_batch() == [b"queued"]


@sync
async def test_aclose_wakes_every_pending_receive() -> None:
    link = Link()
    waiters = [asyncio.create_task(link.recv_batch()) for _ in range(3)]
    await asyncio.sleep(0)
    await link.aclose()
    for waiter in waiters:
        with pytest.raises(TransportError, match="test link to b is closed"):
            await asyncio.wait_for(waiter, 1.0)
    with pytest.raises(TransportError):
        await link.recv_batch()
    with pytest.raises(TransportError):
        link.send_batch([b"x"])


@sync
async def test_aclose_with_a_full_queue_discards_it_and_raises_after() -> None:
    link = Link(queue_size=2)
    link._received([b"1"])
    link._received([b"2"])
    await link.aclose()  # must not raise QueueFull
    await link.aclose()  # idempotent
    with pytest.raises(TransportError):
        await asyncio.wait_for(link.recv_batch(), 1.0)


@sync
async def test_lost_wakes_a_pending_receive() -> None:
    link = Link()
    waiter = asyncio.create_task(link.recv_batch())
    await asyncio.sleep(0)
    assert link._lost() and not link._lost()
    with pytest.raises(TransportError):
        await asyncio.wait_for(waiter, 1.0)


@sync
async def test_lost_keeps_queued_batches_readable_then_raises() -> None:
    link = Link(queue_size=2)
    link._received([b"1"])
    link._received([b"2"])  # the queue is full: no room for the sentinel
    link._lost()
    link._received([b"after"])  # dropped: the link is closed
    assert await link.recv_batch() == [b"1"]
    assert await link.recv_batch() == [b"2"]
    with pytest.raises(TransportError):
        await asyncio.wait_for(link.recv_batch(), 1.0)


@sync
async def test_aclose_right_after_lost_still_wakes_the_waiter() -> None:
    link = Link()
    waiter = asyncio.create_task(link.recv_batch())
    await asyncio.sleep(0)
    link._lost()  # wakes the waiter with the sentinel ...
    await link.aclose()  # ... which aclose discards before the waiter runs
    with pytest.raises(TransportError):
        await asyncio.wait_for(waiter, 1.0)
