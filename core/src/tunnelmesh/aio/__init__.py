"""Thin asyncio drivers around the sans-IO cores of :mod:`tunnelmesh.proto`.

* :mod:`tunnelmesh.aio.wgdriver` -- the WireGuard engine over one UDP socket (batches,
  UDP GSO/GRO), shared by every transport that seals packets with WireGuard.
"""
