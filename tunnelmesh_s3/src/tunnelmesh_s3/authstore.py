"""The mesh S3 service's credentials, grants and shares in the coordinator's state store.

On a coordinator the S3 state is no file of its own: every issued credential, bucket ACL, share
and bucket configuration (tags) is one document of the state store (collections
``s3.credentials``, ``s3.acls``, ``s3.shares``, ``s3.buckets``; ``s3.meta``), so every
coordinator of a mesh that shares a database (PostgreSQL) knows them, and no coordinator keeps a
secret of its own. A credential's secret is stored sealed with the operator's
``state.encryption_key_file`` (:meth:`CoordinatorView.seal`); the others are plain JSON.

Writes go item by item (what changed since the last save), so two coordinators changing
different buckets never overwrite each other. :func:`follow` applies what other coordinators
write, from the store's change feed.

An ``auth.json`` of an older release found in the S3 data dir is imported once and removed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from tunnelmesh_s3.auth import BucketAcl, BucketSettings, IssuedCredential, Share, _State

if TYPE_CHECKING:
    from tunnelmesh.abc import CoordinatorView

__all__ = ["COLLECTIONS", "StoredState", "follow"]

log = logging.getLogger(__name__)

COLLECTIONS: dict[str, tuple[str, type[Any]]] = {
    "credentials": ("s3.credentials", IssuedCredential),
    "acls": ("s3.acls", BucketAcl),
    "shares": ("s3.shares", Share),
    "buckets": ("s3.buckets", BucketSettings),
}
"""``_State`` field -> (store collection, item type)."""

_META = "s3.meta"
_enc = msgspec.json.Encoder()


class StoredState:
    """Loads and saves one authorizer's ``_State`` in the coordinator's state store."""

    def __init__(self, coordinator: CoordinatorView) -> None:
        self.coordinator = coordinator
        self._saved: dict[tuple[str, str], bytes] = {}

    def _slot(self, collection: str, key: str) -> str:
        return f"{collection}/{key}"

    def _encode(self, collection: str, key: str, item: Any) -> bytes:
        return _enc.encode(item)

    def _stored(self, collection: str, key: str, plain: bytes) -> bytes:
        if collection == "s3.credentials":  # the secret key: sealed
            return self.coordinator.seal(plain, self._slot(collection, key))
        return plain

    def _plain(self, collection: str, key: str, blob: bytes) -> bytes:
        if collection == "s3.credentials":
            return self.coordinator.unseal(blob, self._slot(collection, key))
        return blob

    async def load(self, legacy: Path) -> _State:
        """The state in the store; an older ``auth.json`` at ``legacy`` is imported (once)."""
        store = self.coordinator.store
        state = _State()
        self._saved = {}
        found = False
        for field, (collection, kind) in COLLECTIONS.items():
            items = getattr(state, field)
            for key, blob in (await store.load_docs(collection)).items():
                plain = self._plain(collection, key, blob)
                items[key] = msgspec.json.decode(plain, type=kind)
                self._saved[(collection, key)] = plain
                found = True
        keyed = await store.get_doc(_META, "keyed_by")
        if keyed is not None:
            state.keyed_by = keyed.decode()
            self._saved[(_META, "keyed_by")] = keyed
            found = True
        if not found and legacy.exists():
            state = msgspec.json.decode(legacy.read_bytes(), type=_State)
            await self.save(state)
            legacy.unlink()
            log.info(
                "s3: %d credentials, %d bucket grants and %d shares moved from %s into the "
                "state store",
                len(state.credentials),
                len(state.acls),
                len(state.shares),
                legacy,
            )
        return state

    async def save(self, state: _State) -> None:
        """Write the items that changed since the last load or save; delete the gone ones."""
        store = self.coordinator.store
        now: dict[tuple[str, str], bytes] = {}
        for field, (collection, _kind) in COLLECTIONS.items():
            for key, item in getattr(state, field).items():
                now[(collection, key)] = self._encode(collection, key, item)
        if state.keyed_by:
            now[(_META, "keyed_by")] = state.keyed_by.encode()
        for (collection, key), plain in now.items():
            if self._saved.get((collection, key)) != plain:
                await store.put_doc(collection, key, self._stored(collection, key, plain))
                self._saved[(collection, key)] = plain
        for collection, key in [k for k in self._saved if k not in now]:
            await store.delete_doc(collection, key)
            del self._saved[(collection, key)]

    async def reload_item(self, state: _State, collection: str, key: str) -> None:
        """Apply one document another coordinator changed (or deleted)."""
        for field, (name, kind) in COLLECTIONS.items():
            if name != collection:
                continue
            items = getattr(state, field)
            blob = await self.coordinator.store.get_doc(collection, key)
            if blob is None:
                items.pop(key, None)
                self._saved.pop((collection, key), None)
            else:
                plain = self._plain(collection, key, blob)
                items[key] = msgspec.json.decode(plain, type=kind)
                self._saved[(collection, key)] = plain


async def follow(coordinator: CoordinatorView, apply: Any) -> None:
    """Hand ``apply(collection, key)`` every S3 document another coordinator changed, and
    ``apply("", "")`` after a gap in the feed (reload everything); until the store closes."""
    store = coordinator.store
    async for change in store.changes():
        if change.kind == "resync":
            await apply("", "")
        elif change.kind == "doc" and change.origin != store.origin:
            collection, _, key = change.key.partition("/")
            if collection.startswith("s3."):
                await apply(collection, key)
