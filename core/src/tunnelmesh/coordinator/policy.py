"""The coordinator's policy for the peers: the peers' DNS aliases (filter rules: filterbook).

Filter rules
    The coordinator layer of every peer's packet filter (server.yaml's ``filter.rules`` and
    the rules admins add at run time) is kept by :mod:`tunnelmesh.coordinator.filterbook`.

DNS aliases
    A peer's ``dns.aliases`` travel in its heartbeats. The coordinator keeps the ones it
    accepts on the peer's record (stored, pushed in ``PeerInfo.aliases``, answered by
    ``GET /api/v1/dns``), so every peer's resolver answers them. An alias is refused (left
    out, with a log line) when it is not a DNS name, is reserved (``this``, ``www``, ...), is
    another peer's name or a name under it (``x.beta``), or another peer already holds it: an
    alias never takes a name from anybody. A peer
    name registered later wins over an alias (resolvers answer names first).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tunnelmesh.coordinator.alloc import LABEL, RESERVED_NAMES
from tunnelmesh.coordinator.store import PeerRecord

__all__ = ["MAX_ALIASES", "accepted_aliases"]

log = logging.getLogger(__name__)

MAX_ALIASES = 16
"""Aliases one peer may hold."""


def _alias_problem(alias: str) -> str | None:
    if not isinstance(alias, str) or not 0 < len(alias) <= 253:
        return "not a DNS name"
    if alias in RESERVED_NAMES:
        return f"{alias!r} is reserved"
    for label in alias.split("."):
        if not LABEL.match(label):
            return f"{label!r} is not a DNS label"
    return None


def accepted_aliases(
    wanted: Iterable[str], rec: PeerRecord, peers: Iterable[PeerRecord]
) -> list[str]:
    """The aliases of ``wanted`` that ``rec`` may hold, in order; see the module docstring."""
    others = [p for p in peers if p.peer_id != rec.peer_id]
    names = {p.name for p in others}
    taken = names | {a for p in others for a in p.aliases}
    out: list[str] = []
    for alias in wanted:
        if len(out) >= MAX_ALIASES:
            log.warning(
                "peer %s: more than %d dns aliases; the rest ignored", rec.name, MAX_ALIASES
            )
            break
        alias = alias.lower() if isinstance(alias, str) else alias
        why = _alias_problem(alias)
        if why is None and alias == rec.name:
            continue  # its own name: nothing to add
        if why is None and alias in taken:
            why = "another peer's name or alias"
        if why is None and alias.rsplit(".", 1)[-1] in names:
            why = "a name under another peer's name"
        if why is not None:
            log.warning("peer %s: dns alias %r refused: %s", rec.name, alias, why)
            continue
        if alias not in out:
            out.append(alias)
    return out
