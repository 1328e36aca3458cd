"""File shares as a file system: the one layer WebDAV (:mod:`tunnelmesh_s3.dav`) and NFS use.

A share is a bucket (see ``tunnelmesh share``); its files are the bucket's objects, so a file
written over WebDAV or NFS is an object over S3 and the reverse. This module knows nothing of
HTTP or XDR: it resolves who calls, checks what they may do, and maps paths to object keys.

Who calls: the mesh peer the connection comes from. :class:`ShareAccess` takes a function from
a source address to a :class:`~tunnelmesh_s3.auth.Principal` (on a coordinator, the peer whose
mesh IP it is, by peer ID: :func:`peer_callers`); an address nobody holds is refused.

What they may do: the bucket's grants, as over S3 (owner and ``write`` grantees read and write,
``read`` grantees only read, admins everything), but only on buckets that are *shares*.
:meth:`ShareAccess.open` refuses a caller who may not read the share, and a read-only member's
write raises :class:`ShareError` ``denied`` before anything changes.

Paths and keys: a path is ``/``-separated text inside the share (``/a/b.txt``, ``a/b.txt`` and
``a//b.txt`` are the same path); ``.``, ``..``, NUL and over-long paths are refused, so no path
can name another share's data (keys never become file names in the store either). The file
``a/b.txt`` is the object ``a/b.txt``.

Directories: a directory ``a/b`` exists when the object ``a/b/`` exists (the marker that
:meth:`ShareView.mkdir` writes, empty, as S3 consoles make "folders") or when any key starts
with ``a/b/`` (objects written over S3 with no marker). A name that is both a file and a
directory prefix (possible over S3 only) shows as the file.

Writes stream into :meth:`~tunnelmesh.abc.Storage.put_object`, which makes the object visible
whole or not at all (a crash mid-write leaves the old file or none). A rename of a file copies
the object (the filesystem backend links its blobs: no data is copied) and then deletes the
source: each step is atomic, and a crash between them leaves both names, never neither. A
directory rename moves key by key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from tunnelmesh.abc import ObjectInfo, ObjectReader, Storage
from tunnelmesh.errors import InvalidName, NoSuchBucket, NoSuchKey, StorageError
from tunnelmesh.storage import check_key

from tunnelmesh_s3.auth import FileAuthorizer, Principal

__all__ = [
    "DIR_CONTENT_TYPE",
    "Entry",
    "ShareAccess",
    "ShareError",
    "ShareView",
    "peer_callers",
    "split_path",
]

DIR_CONTENT_TYPE = "application/x-directory"
"""The content type of a directory marker object."""

MAX_PATH_BYTES = 1000
"""The longest path (the key of a directory marker adds a ``/``; keys stop at 1024 bytes)."""

ErrorKind = Literal[
    "denied",  # the caller may not do this (not a member; a read-only member's write)
    "not_found",  # no such share, file or directory
    "exists",  # the name is taken
    "not_dir",  # a path component (or the target) is a file where a directory is needed
    "is_dir",  # a directory where a file is needed
    "not_empty",  # a directory that must be empty is not
    "bad_path",  # a path that can never be valid (``..``, NUL, too long)
]


class ShareError(StorageError):
    """A share refused an operation; :attr:`kind` says why (one of :data:`ErrorKind`)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


@dataclass(frozen=True)
class Entry:
    """A file or directory of a share.

    Attributes:
        path: its path in the share, without leading or trailing ``/`` ("" for the root).
        is_dir: a directory.
        size: bytes (0 for a directory).
        etag: the object's entity tag ("" for a directory without a marker).
        mtime: last modified, seconds since the epoch (0.0 when unknown).
        content_type: the stored media type.
        metadata: the object's user metadata (a directory's marker's).
    """

    path: str
    is_dir: bool
    size: int = 0
    etag: str = ""
    mtime: float = 0.0
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


def split_path(path: str) -> list[str]:
    """The segments of a path in a share (empty segments dropped).

    Raises:
        ShareError: ``bad_path`` for ``.``/``..`` segments, NUL, or a path over the limit.
    """
    if "\x00" in path:
        raise ShareError("bad_path", "a path must not contain NUL")
    segments = [s for s in path.split("/") if s]
    for s in segments:
        if s in (".", ".."):
            raise ShareError("bad_path", f"a path must not contain a {s!r} segment")
    if len("/".join(segments).encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ShareError("bad_path", f"a path is at most {MAX_PATH_BYTES} bytes")
    return segments


def _key(path: str) -> str:
    key = "/".join(split_path(path))
    if key:
        try:
            check_key(key)
        except InvalidName as exc:
            raise ShareError("bad_path", str(exc)) from None
    return key


def _file_entry(path: str, info: ObjectInfo) -> Entry:
    return Entry(
        path,
        False,
        info.size,
        info.etag,
        info.last_modified,
        info.content_type,
        dict(info.metadata),
    )


class ShareView:
    """One share as one caller sees it. Made by :meth:`ShareAccess.open`.

    Attributes:
        name: the share (and bucket) name.
        principal: the caller.
        writable: whether the caller may change the share.
    """

    def __init__(
        self, storage: Storage, name: str, principal: Principal, *, writable: bool
    ) -> None:
        self.storage = storage
        self.name = name
        self.principal = principal
        self.writable = writable

    def key(self, path: str) -> str:
        """The object key of a file path ("" for the root). Raises ShareError ``bad_path``."""
        return _key(path)

    def _need_write(self) -> None:
        if not self.writable:
            raise ShareError("denied", f"share {self.name}: read-only for {self.principal.name}")

    # --- reading ---

    async def stat(self, path: str) -> Entry | None:
        """The file or directory at ``path``, or None."""
        key = _key(path)
        if not key:
            info = await self.storage.head_bucket(self.name)
            return Entry("", True, mtime=info.created)
        try:
            return _file_entry(key, await self.storage.head_object(self.name, key))
        except NoSuchKey:
            pass
        try:
            marker = await self.storage.head_object(self.name, key + "/")
            return Entry(key, True, 0, marker.etag, marker.last_modified, DIR_CONTENT_TYPE,
                         dict(marker.metadata))  # fmt: skip
        except NoSuchKey:
            pass
        page = await self.storage.list_objects(self.name, prefix=key + "/", max_keys=1)
        if page.objects or page.prefixes:
            return Entry(key, True, content_type=DIR_CONTENT_TYPE)
        return None

    async def need(self, path: str) -> Entry:
        """Like :meth:`stat`, but a missing path raises ShareError ``not_found``."""
        entry = await self.stat(path)
        if entry is None:
            raise ShareError("not_found", f"{self.name}/{_key(path)}: no such file or directory")
        return entry

    async def need_dir(self, path: str) -> Entry:
        """The directory at ``path``; ``not_found`` or ``not_dir`` otherwise."""
        entry = await self.need(path)
        if not entry.is_dir:
            raise ShareError("not_dir", f"{self.name}/{entry.path}: not a directory")
        return entry

    async def listdir(self, path: str) -> AsyncIterator[Entry]:
        """The entries of the directory ``path``, in name order (UTF-8 bytes), page by page.

        Raises:
            ShareError: ``not_found`` / ``not_dir``.
        """
        entry = await self.need_dir(path)
        prefix = entry.path + "/" if entry.path else ""
        after = ""
        last_file = None
        while True:
            page = await self.storage.list_objects(
                self.name, prefix=prefix, delimiter="/", start_after=after, max_keys=1000
            )
            # objects and prefixes come as two sorted lists; merge them into name order
            items: list[tuple[str, ObjectInfo | None]] = [(o.key, o) for o in page.objects]
            items += [(p[:-1], None) for p in page.prefixes]
            items.sort(key=lambda kv: kv[0].encode())
            for key, info in items:
                if key + "/" == prefix or not key[len(prefix) :]:
                    continue  # the directory's own marker
                if info is not None:
                    last_file = key
                    yield _file_entry(key, info)
                elif key != last_file:
                    # a prefix right after a file of the same name: the file wins
                    yield Entry(key, True, content_type=DIR_CONTENT_TYPE)
            if not page.truncated:
                return
            after = page.next_marker

    async def open(self, path: str) -> ObjectReader:
        """Open the file at ``path`` for reading (a consistent snapshot).

        Raises:
            ShareError: ``not_found``, ``is_dir``.
        """
        key = _key(path)
        if key:
            try:
                return await self.storage.open_object(self.name, key)
            except NoSuchKey:
                pass
        entry = await self.need(path)
        raise ShareError("is_dir", f"{self.name}/{entry.path}: is a directory")

    # --- writing ---

    async def _parent_dir(self, key: str) -> None:
        parent = key.rpartition("/")[0]
        if parent:
            await self.need_dir(parent)

    async def write(
        self,
        path: str,
        body: AsyncIterable[bytes],
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        precondition: Callable[[ObjectInfo | None], None] | None = None,
    ) -> tuple[ObjectInfo, bool]:
        """Store ``body`` as the file ``path`` (streamed; visible whole or not at all).

        Returns:
            The stored object's info, and whether the file is new.

        Raises:
            ShareError: ``denied``; ``not_found``/``not_dir`` (no parent directory);
                ``is_dir`` (a directory is there); ``bad_path``.
        """
        self._need_write()
        key = _key(path)
        if not key:
            raise ShareError("is_dir", f"{self.name}: the share's root is a directory")
        await self._parent_dir(key)
        existing = await self.stat(key)
        if existing is not None and existing.is_dir:
            raise ShareError("is_dir", f"{self.name}/{key}: is a directory")
        info = await self.storage.put_object(
            self.name,
            key,
            body,
            content_type=content_type,
            metadata=metadata,
            precondition=precondition,
        )
        return info, existing is None

    async def mkdir(self, path: str, *, metadata: Mapping[str, str] | None = None) -> Entry:
        """Create the directory ``path`` (its parent must exist).

        Raises:
            ShareError: ``denied``, ``exists``, ``not_found``/``not_dir`` (parent), ``bad_path``.
        """
        self._need_write()
        key = _key(path)
        if not key or await self.stat(key) is not None:
            raise ShareError("exists", f"{self.name}/{key}: exists")
        await self._parent_dir(key)
        info = await self.storage.put_object(
            self.name, key + "/", _empty(), content_type=DIR_CONTENT_TYPE, metadata=metadata
        )
        return Entry(key, True, 0, info.etag, info.last_modified, DIR_CONTENT_TYPE)

    async def set_metadata(self, path: str, metadata: Mapping[str, str]) -> None:
        """Replace the user metadata of a file (or a directory's marker, made when missing)."""
        self._need_write()
        entry = await self.need(path)
        if not entry.path:
            raise ShareError("denied", f"{self.name}: the share's root keeps no properties")
        key = entry.path + "/" if entry.is_dir else entry.path
        if entry.is_dir and not entry.etag:
            await self.storage.put_object(
                self.name, key, _empty(), content_type=DIR_CONTENT_TYPE, metadata=metadata
            )
            return
        await self.storage.copy_object(self.name, key, self.name, key, metadata=metadata)

    async def _keys_under(self, key: str) -> list[str]:
        """Every object key under the directory ``key`` (its marker included)."""
        keys: list[str] = []
        after = ""
        while True:
            page = await self.storage.list_objects(
                self.name, prefix=key + "/", start_after=after, max_keys=1000
            )
            keys += [o.key for o in page.objects]
            if not page.truncated:
                return keys
            after = page.next_marker

    async def remove(self, path: str, *, recursive: bool = False) -> Entry:
        """Remove the file or directory ``path`` (a directory must be empty unless
        ``recursive``); returns what was removed.

        Raises:
            ShareError: ``denied``, ``not_found``, ``not_empty``, ``bad_path``.
        """
        self._need_write()
        entry = await self.need(path)
        if not entry.path:
            raise ShareError("denied", f"{self.name}: the share's root cannot be removed")
        if not entry.is_dir:
            await self.storage.delete_object(self.name, entry.path)
            return entry
        keys = await self._keys_under(entry.path)
        if not recursive and any(k != entry.path + "/" for k in keys):
            raise ShareError("not_empty", f"{self.name}/{entry.path}: directory not empty")
        # deepest first, the marker last: a crash midway leaves a directory that still exists
        for k in sorted(keys, reverse=True):
            await self.storage.delete_object(self.name, k)
        return entry

    async def copy(self, src: str, dst: str, *, into: ShareView | None = None) -> Entry:
        """Copy the file or directory ``src`` to ``dst`` (in ``into``, default this share).

        The destination must not exist (the caller removes it first for an overwrite) and its
        parent must. A directory is copied with everything under it.

        Raises:
            ShareError: ``denied`` (on the destination), ``not_found``, ``exists``,
                ``not_dir``, ``bad_path``.
        """
        target = into or self
        target._need_write()
        entry = await self.need(src)
        dkey = _key(dst)
        if not dkey:
            raise ShareError("exists", f"{target.name}: the share's root exists")
        if target is self and entry.is_dir and (dkey + "/").startswith(entry.path + "/"):
            raise ShareError("bad_path", "a directory cannot be copied into itself")
        if await target.stat(dkey) is not None:
            raise ShareError("exists", f"{target.name}/{dkey}: exists")
        await target._parent_dir(dkey)
        if not entry.is_dir:
            await self.storage.copy_object(self.name, entry.path, target.name, dkey)
            return entry
        keys = await self._keys_under(entry.path)
        if entry.path + "/" not in keys:
            await target.storage.put_object(
                target.name, dkey + "/", _empty(), content_type=DIR_CONTENT_TYPE
            )
        # the marker first, so the destination directory exists from the first copy on
        for k in sorted(keys, key=lambda k: (k != entry.path + "/", k)):
            await self.storage.copy_object(self.name, k, target.name, dkey + k[len(entry.path) :])
        return entry

    async def rename(self, src: str, dst: str, *, into: ShareView | None = None) -> Entry:
        """Move ``src`` to ``dst`` (which must not exist): copy, then remove the source.

        Raises:
            ShareError: as :meth:`copy`, and ``denied`` on the source.
        """
        self._need_write()
        entry = await self.copy(src, dst, into=into)
        await self.remove(entry.path, recursive=True)
        return entry


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


def peer_callers(
    peers: Callable[[], Mapping[str, object]], *, refuse: Callable[[], str | None] = lambda: None
) -> Callable[[str], Principal | None]:
    """Caller lookup for a coordinator: the source address to the peer that holds it.

    Args:
        peers: the coordinator's registered peers (peer ID to
            :class:`~tunnelmesh.coordinator.PeerRecord`), read at each call.
        refuse: an address never to accept (the serving node's own mesh IP: any local user of
            that machine could connect from it), read at each call.

    Returns:
        ``caller(address) -> Principal | None``: None for an address no (approved) peer holds.
    """

    def caller(address: str) -> Principal | None:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        text = str(ip)
        if text == refuse():
            return None
        for rec in peers().values():
            if getattr(rec, "mesh_ip", None) == text and not getattr(rec, "pending", False):
                return Principal(
                    rec.name,  # type: ignore[attr-defined]
                    admin=bool(getattr(rec, "is_admin", False)),
                    peer_id=rec.peer_id,  # type: ignore[attr-defined]
                )
        return None

    return caller


class ShareAccess:
    """The shares of one store, for callers identified by their source address.

    Args:
        storage: the store (the S3 service's, started).
        authorizer: the S3 service's grants and shares.
        caller: a source address to its principal, None when nobody holds it
            (:func:`peer_callers` on a coordinator).
    """

    def __init__(
        self,
        storage: Storage,
        authorizer: FileAuthorizer,
        caller: Callable[[str], Principal | None],
    ) -> None:
        self.storage = storage
        self.authorizer = authorizer
        self.caller = caller

    def principal(self, address: str) -> Principal:
        """The caller at ``address``. Raises ShareError ``denied`` when nobody holds it."""
        principal = self.caller(address)
        if principal is None:
            raise ShareError("denied", f"{address} is not a mesh peer's address")
        return principal

    def shares(self, principal: Principal) -> list[str]:
        """The names of the shares ``principal`` may read."""
        return [
            s.name
            for s in self.authorizer.shares()
            if self.authorizer.allowed(principal, s.name, "read")
        ]

    async def open(self, name: str, principal: Principal) -> ShareView:
        """The share ``name`` as ``principal`` sees it.

        Raises:
            ShareError: ``not_found`` (no such share: also for a non-member when the share
                does not exist), ``denied`` (not a member).
        """
        if self.authorizer.share(name) is None:
            raise ShareError("not_found", f"no share named {name!r}")
        if not self.authorizer.allowed(principal, name, "read"):
            raise ShareError("denied", f"share {name}: {principal.name} is not a member")
        try:
            await self.storage.head_bucket(name)
        except NoSuchBucket:
            raise ShareError("not_found", f"share {name}: its bucket is gone") from None
        writable = self.authorizer.allowed(principal, name, "write")
        return ShareView(self.storage, name, principal, writable=writable)
