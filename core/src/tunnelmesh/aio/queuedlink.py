"""The receive side every link shares: push to a receiver, else a queue for ``recv_batch``.

A transport's socket callback hands each decrypted (or decoded) batch to
:meth:`QueuedLink._received`. With a receiver set (:meth:`~tunnelmesh.abc.Link.set_receiver`,
the forwarder's push mode) the batch goes straight to it; without one it waits in a queue for
:meth:`recv_batch`, and batches that arrived before the receiver was set are handed to it when it
is set. A full queue drops the batch and counts it (:meth:`_queue_full`); it never blocks the
socket callback.

Closing has two causes with one rule each:

* the transport or the peer ended the link (:meth:`_lost`): sending stops at once; batches
  already queued are still handed out, then ``recv_batch`` raises;
* our side closed it (:meth:`aclose`): queued batches are discarded, and a ``recv_batch``
  pending or called later raises :class:`~tunnelmesh.errors.TransportError` (the
  :class:`~tunnelmesh.abc.Link` contract).

A pending ``recv_batch`` is woken by an empty batch put behind the data (the sentinel); a waiter
that takes it puts it back, so every waiter wakes. Subclasses implement :meth:`send_batch` and
may extend :meth:`aclose` (call ``super().aclose()``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tunnelmesh.abc import Link
from tunnelmesh.errors import TransportError

__all__ = ["QueuedLink"]


class QueuedLink(Link):
    """A :class:`~tunnelmesh.abc.Link` whose received batches are pushed or queued.

    Args:
        peer: the name of the peer at the other end.
        mtu: the largest IP packet :meth:`send_batch` accepts.
        queue_size: how many batches wait for ``recv_batch`` before new ones are dropped
            (0: no limit, for reliable transports such as the in-memory double).
    """

    kind = "link"
    """How error messages name the link (``"relay link to b is closed"``)."""

    def __init__(self, peer: str, mtu: int, *, queue_size: int = 256) -> None:
        self.peer = peer
        self.mtu = mtu
        self.closed = False
        self._deliver: Callable[[Link, list[bytes]], None] | None = None
        self._queue: asyncio.Queue[list[bytes]] = asyncio.Queue(queue_size)

    def _closed_error(self, detail: str = "") -> TransportError:
        suffix = f": {detail}" if detail else ""
        return TransportError(f"{self.kind} to {self.peer} is closed{suffix}")

    # --- receiving ----------------------------------------------------------------------------

    def _received(self, packets: list[bytes]) -> None:
        """Hand a batch to the receiver, or queue it for ``recv_batch`` (drops when closed)."""
        if self.closed or not packets:
            return
        deliver = self._deliver
        if deliver is not None:
            deliver(self, packets)
            return
        try:
            self._queue.put_nowait(packets)
        except asyncio.QueueFull:
            self._queue_full(len(packets))

    def _queue_full(self, count: int) -> None:
        """``count`` received packets were dropped: no receiver and a full queue."""

    def set_receiver(self, deliver: Callable[[Link, list[bytes]], None] | None) -> None:
        self._deliver = deliver
        queue = self._queue
        while deliver is not None and not queue.empty():
            packets = queue.get_nowait()
            if packets:  # what arrived before the receiver was set
                deliver(self, packets)

    async def recv_batch(self) -> list[bytes]:
        queue = self._queue
        if self.closed and queue.empty():
            raise self._closed_error()
        packets = await queue.get()
        if not packets:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait([])  # wake every other waiter too
            raise self._closed_error()
        return packets

    # --- closing ------------------------------------------------------------------------------

    def _lost(self) -> bool:
        """Mark the link closed (the peer or the transport ended it); False if it already was.

        Batches already queued stay readable; then ``recv_batch`` raises.
        """
        if self.closed:
            return False
        self.closed = True
        # a full queue has no waiter: recv_batch raises once it is drained
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait([])
        return True

    async def aclose(self) -> None:
        """Close the link: queued batches are discarded, ``recv_batch`` raises. Idempotent."""
        self.closed = True
        queue = self._queue
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait([])  # the queue is empty now: the sentinel always fits
