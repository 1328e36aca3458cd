"""ControlClient: what it keeps across coordinators and restarts (functions bound as methods of
:class:`~tunnelmesh.control.client.ControlClient`).

The coordinators of the mesh it knows (learnt from the registration answer, the push snapshot
and ``coordinators`` messages) and the move to the next one when the one in use does not
answer; the files beside its context that a restart reads while the coordinator is away:
``coordinators.json``, ``peers.json`` and ``filter.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from tunnelmesh.control.messages import PeerInfo, PolicyRule, encode

if TYPE_CHECKING:
    from tunnelmesh.control.client import ControlClient

log = logging.getLogger("tunnelmesh.control.client")
"""ControlClient's log: every part of it logs under the name it always had."""


def learn_coordinators(self: ControlClient, urls: list[str]) -> None:
    """Take the coordinators a coordinator announced (an empty list says nothing: an older
    coordinator, or one without ``public_url``). The URL joined with stays known."""
    urls = [u.rstrip("/") for u in urls if u.startswith("https://")][:64]
    if not urls:
        return
    self.announced = sorted(set(urls))
    first = self.coordinators[0]
    known = list(dict.fromkeys([first, self.server, *urls]))
    if known != self.coordinators:
        self.coordinators = known
        self._write_coordinators_cache()


def move_to_next_coordinator(self: ControlClient) -> bool:
    """The coordinator in use does not answer: take the next known one.

    Returns:
        False when there is no other one, or every one was tried since the last answer
        (the caller backs off then).
    """
    if len(self.coordinators) < 2:
        return False
    self._unanswered += 1
    if self._unanswered >= len(self.coordinators):
        self._unanswered = 0  # every one tried: back off, then go round again
        return False
    old = self.server
    i = self.coordinators.index(old) if old in self.coordinators else -1
    self.server = self.coordinators[(i + 1) % len(self.coordinators)]
    self.failovers += 1
    log.warning("coordinator %s does not answer; moving to %s", old, self.server)
    self._server_moved.set()
    return True


def _coordinators_cache(self: ControlClient) -> Path | None:
    return None if self.peers_cache is None else self.peers_cache.with_name("coordinators.json")


def _load_coordinators_cache(self: ControlClient) -> list[str]:
    path = self._coordinators_cache
    if path is None or not path.exists():
        return []
    try:
        return msgspec.json.decode(path.read_bytes(), type=list[str])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("ignoring the coordinators cache %s: %s", path, exc)
        return []


def _write_coordinators_cache(self: ControlClient) -> None:
    path = self._coordinators_cache
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(encode(self.coordinators))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot write the coordinators cache %s: %s", path, exc)


def _load_cache(self: ControlClient) -> list[PeerInfo]:
    if self.peers_cache is None or not self.peers_cache.exists():
        return []
    try:
        return msgspec.json.decode(self.peers_cache.read_bytes(), type=list[PeerInfo])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("ignoring the peers cache %s: %s", self.peers_cache, exc)
        return []


def _filter_cache(self: ControlClient) -> Path | None:
    return None if self.peers_cache is None else self.peers_cache.with_name("filter.json")


def _load_filter_cache(self: ControlClient) -> list[PolicyRule] | None:
    """The coordinator's filter rules as last received: a node restarted while the
    coordinator is away keeps enforcing them."""
    path = self._filter_cache
    if path is None or not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=list[PolicyRule])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("ignoring the filter rules cache %s: %s", path, exc)
        return None


def _write_filter_cache(self: ControlClient) -> None:
    path, rules = self._filter_cache, self.table.filter_rules
    if path is None or rules is None:
        return
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(encode(list(rules)))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot write the filter rules cache %s: %s", path, exc)


def _write_cache(self: ControlClient, force: bool = False) -> None:
    if self.peers_cache is None or not (self._cache_dirty or force):
        return
    self._cache_dirty = False
    tmp = self.peers_cache.with_suffix(".tmp")
    try:
        self.peers_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(encode(list(self.table.peers.values())))
        tmp.replace(self.peers_cache)
    except OSError as exc:
        log.warning("cannot write the peers cache %s: %s", self.peers_cache, exc)
