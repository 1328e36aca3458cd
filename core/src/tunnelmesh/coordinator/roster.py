"""Which coordinators of a mesh are alive: kept in the shared state store, told to the peers.

Several coordinators on one database each have a ``public_url``. Every one writes
``{url: last_seen}`` under the meta key :data:`ROSTER_KEY` once per heartbeat interval (its own
entry refreshed, entries silent for :data:`TTL_INTERVALS` intervals dropped), and reads it back:
the live URLs go to peers in the registration answer, in every push snapshot and, when they
change, in a ``coordinators`` push message. A peer whose coordinator is gone moves to another
one it learnt this way.

The blob is read, changed and written back without a lock: two coordinators writing at the same
moment can lose one's refresh, which the next interval writes again; an entry is dropped only
after :data:`TTL_INTERVALS` intervals without one. Pure data in, data out; the coordinator does
the store I/O.
"""

from __future__ import annotations

import msgspec

__all__ = ["ROSTER_KEY", "TTL_INTERVALS", "decode_roster", "encode_roster", "refreshed"]

ROSTER_KEY = "coordinators"
TTL_INTERVALS = 3.5
"""A coordinator that wrote nothing for this many heartbeat intervals is taken for gone."""
MAX_COORDINATORS = 64
"""Entries kept (the most recently seen first): a bound on what every peer is sent."""

_dec = msgspec.json.Decoder(dict[str, float])
_enc = msgspec.json.Encoder()


def decode_roster(blob: bytes | None) -> dict[str, float]:
    """The stored roster; an absent or unreadable blob is an empty one (it is rewritten)."""
    if not blob:
        return {}
    try:
        return _dec.decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


def encode_roster(roster: dict[str, float]) -> bytes:
    return _enc.encode(dict(sorted(roster.items())))


def refreshed(roster: dict[str, float], own: str, now: float, interval: float) -> dict[str, float]:
    """``roster`` with ``own`` seen ``now`` (unless ``own`` is empty) and the silent dropped."""
    ttl = TTL_INTERVALS * interval
    out = {url: seen for url, seen in roster.items() if now - seen < ttl and url != own}
    if own:
        out[own] = now
    newest = sorted(out.items(), key=lambda kv: -kv[1])[:MAX_COORDINATORS]
    return dict(newest)
