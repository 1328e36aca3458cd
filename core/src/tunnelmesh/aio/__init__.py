"""Thin asyncio drivers around the sans-IO cores of :mod:`tunnelmesh.proto`.

* :mod:`tunnelmesh.aio.wgsession` -- the WireGuard engine, its links, events and timer, for any
  carrier: it knows no socket and sends through a transmit callable (the UDP socket of
  ``tunnelmesh_udp``, the relay's WebSocket).
* :mod:`tunnelmesh.aio.wgsocket` -- a session over one UDP socket: batched reads (GRO), GSO
  sends, keepalives when a local address changes (the UDP transport's socket, and the WireGuard
  concentrator's listener in ``tunnelmesh_wg``).
* :mod:`tunnelmesh.aio.queuedlink` -- the receive side every link shares (push to a receiver or
  queue for ``recv_batch``, close semantics).
"""
