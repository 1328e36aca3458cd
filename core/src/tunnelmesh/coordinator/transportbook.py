"""Transport orders set through the coordinator: per peer, stored, pushed to that node.

An admin (or the peer itself) sets the transport order a node uses towards every other peer,
or forces one transport (an order of one, e.g. ``["relay"]``), with
``PUT /api/v1/peers/{name}/transport`` (``tunnelmesh peers transport``, the dashboard). The
coordinator keeps it in the state store (meta key ``transport_orders``, by peer ID, so a
restart keeps it and a rename does not lose it) and pushes it to that node only, as a
``transport_order`` message right after each snapshot of that node (an empty order when
none is set) and again on every change. The
node applies it at run time (its paths re-select at once) in place of ``transports.order``
of its peer.yaml; an empty order gives the node its own order back. A node reports the order
in force in its heartbeats, so the API shows both what was set and what the node applies
(a node without one of the named transports keeps its order and says so in its log).

The order is the node's own: what it sends on. Its peers keep choosing their own paths
towards it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

import msgspec

from tunnelmesh.control.messages import TransportOrder, encode
from tunnelmesh.coordinator.store import StateStore
from tunnelmesh.errors import CoordinatorError, StateStoreError

__all__ = ["MAX_ORDER", "TransportBook", "TransportBookError", "TransportSetting", "check_order"]

log = logging.getLogger(__name__)

META_KEY = "transport_orders"
MAX_ORDER = 8
"""Transports one order may name."""
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class TransportBookError(CoordinatorError):
    """A refused change: ``status`` is the HTTP status, ``error`` a short code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


class TransportSetting(msgspec.Struct, frozen=True, kw_only=True):
    """The order set for one peer (as stored)."""

    order: list[str]
    set_by: str = ""  # the peer ID that set it (an admin, or the peer itself)
    set_at: float = 0.0


def check_order(order: object) -> list[str]:
    """``order`` as a list of transport names, or why not.

    Raises:
        TransportBookError: 400 not a list of 1 to MAX_ORDER distinct transport names.
    """
    if not isinstance(order, list) or not order:
        raise TransportBookError(400, "malformed", "order must be a non-empty list of names")
    if len(order) > MAX_ORDER:
        raise TransportBookError(400, "malformed", f"at most {MAX_ORDER} transports")
    for name in order:
        if not isinstance(name, str) or not _NAME.match(name):
            raise TransportBookError(
                400,
                "malformed",
                f"transport name {name!r} must be 1 to 32 lowercase letters, digits, '-' or "
                "'_', starting with a letter",
            )
    if len(set(order)) != len(order):
        raise TransportBookError(400, "malformed", "a transport is named twice")
    return list(order)


class TransportBook:
    """The orders set per peer ID, and what each node reports in force.

    Args:
        store: where the settings are kept (meta key ``transport_orders``).
        clock: wall-clock seconds.
        send: ``(peer_id, message)``: push a message to that peer (False: not connected; it
            gets the order with its next snapshot).
    """

    def __init__(
        self,
        store: StateStore,
        *,
        clock: Callable[[], float],
        send: Callable[[str, bytes], bool],
    ) -> None:
        self.store = store
        self.clock = clock
        self._send = send
        self._set: dict[str, TransportSetting] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        blob = await self.store.get_meta(META_KEY)
        if blob is None:
            return
        try:
            self._set = msgspec.json.decode(blob, type=dict[str, TransportSetting])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("the stored transport orders are unreadable, ignored: %s", exc)

    def get(self, peer_id: str) -> TransportSetting | None:
        return self._set.get(peer_id)

    def message(self, peer_id: str) -> bytes:
        """The push message for ``peer_id`` after its snapshot (an empty order: none set, so
        a node whose order was cleared while it was away learns it too)."""
        setting = self._set.get(peer_id)
        return encode(TransportOrder(order=setting.order if setting else []))

    async def set(self, peer_id: str, order: list[str] | None, by: str) -> TransportSetting | None:
        """Set (or with ``order`` None, clear) the order of ``peer_id`` and push it.

        Raises:
            TransportBookError: 400 a bad order, 503 the store cannot save it.
        """
        setting = None
        if order is not None:
            setting = TransportSetting(order=check_order(order), set_by=by, set_at=self.clock())
        async with self._lock:
            new = dict(self._set)
            if setting is None:
                if new.pop(peer_id, None) is None:
                    return None  # nothing was set: nothing to push
            else:
                new[peer_id] = setting
            try:
                await self.store.put_meta(META_KEY, msgspec.json.encode(dict(sorted(new.items()))))
            except StateStoreError as exc:
                log.error("transport order not saved: %s", exc)
                raise TransportBookError(
                    503, "store_unavailable", "the coordinator cannot save state"
                ) from None
            self._set = new
        log.info(
            "transport order of %s %s by %s",
            peer_id,
            f"set to {','.join(setting.order)}" if setting else "cleared",
            by,
        )
        self._send(peer_id, encode(TransportOrder(order=setting.order if setting else [])))
        return setting
