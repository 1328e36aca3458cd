"""The filesystem backend's index: buckets, objects, uploads and parts in one SQLite database.

Synchronous on purpose: :class:`~tunnelmesh_s3.filesystem.FilesystemStorage` runs every
call on one dedicated thread, which also serialises writers. Object data lives in blob files
named by random ids; a row points at its blobs only once they are synced, and a transaction
commit (WAL, ``synchronous=FULL``) is what makes a new object visible. Every method that drops a
row returns the blob ids that nothing references any more, for the caller to delete.

Keys are stored as UTF-8 BLOBs so that SQLite's ``memcmp`` order is S3's listing order.

A small object may be stored *inline*: its bytes in the row's ``data`` column and no segments.
The commit that makes it visible then also makes its bytes durable (one WAL fsync, shared by
the writes of a group commit), instead of a file write, two fsyncs and a rename per object.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
from tunnelmesh.abc import BucketInfo, ObjectInfo, ObjectListing, PartInfo, UploadInfo
from tunnelmesh.errors import (
    BucketAlreadyExists,
    BucketNotEmpty,
    InvalidPart,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
)

Segment = tuple[str, int]
"""One blob of an object: (blob id, length)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key BLOB NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    mtime REAL NOT NULL, content_type TEXT NOT NULL, meta TEXT NOT NULL, parts INTEGER NOT NULL,
    segments TEXT NOT NULL, data BLOB, PRIMARY KEY (bucket, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key BLOB NOT NULL, initiated REAL NOT NULL,
    content_type TEXT NOT NULL, meta TEXT NOT NULL);
DROP INDEX IF EXISTS uploads_by_key;
CREATE INDEX IF NOT EXISTS uploads_by_key_id ON uploads (bucket, key, upload_id);
CREATE TABLE IF NOT EXISTS completed (
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key BLOB NOT NULL, completed REAL NOT NULL,
    object TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, number INTEGER NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, mtime REAL NOT NULL, checksums TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (upload_id, number)) WITHOUT ROWID;
"""

_OBJECT_COLUMNS = "key, size, etag, mtime, content_type, meta, parts"
_INSERT_OBJECT = (
    "INSERT OR REPLACE INTO objects"
    " (bucket, key, size, etag, mtime, content_type, meta, parts, segments, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_BUCKET_AND_SEGMENTS = (
    "SELECT (SELECT 1 FROM buckets WHERE name=?),"
    " (SELECT segments FROM objects WHERE bucket=? AND key=?)"
)
"""Whether a bucket exists and the segments of the object a write replaces, in one statement."""
_BATCH = 256
COMPLETED_KEPT = 24 * 3600
"""How long a completed upload's result is kept for clients that complete it again (a retry
after a lost response): seconds."""


def upper_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _dumps(value: Any) -> str:
    """A JSON column's text: msgspec's encoder (json.dumps with separators builds an encoder
    per call), or json's for what msgspec refuses (a lone surrogate); both read back alike."""
    try:
        return msgspec.json.encode(value).decode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))


def _meta_json(metadata: Any, headers: Any, checksums: Any, part_checksums: Any = ()) -> str:
    """The ``meta`` column: user metadata, headers, checksums and, only for a multipart object
    whose parts had checksums, the parts' checksums in order."""
    meta: dict[str, Any] = {
        "m": dict(metadata or {}),
        "h": dict(headers or {}),
        "c": dict(checksums or {}),
    }
    if part_checksums:
        meta["p"] = [dict(c) for c in part_checksums]
    return _dumps(meta)


def _upload_meta(upload: UploadInfo) -> str:
    meta: dict[str, Any] = {"m": dict(upload.metadata), "h": dict(upload.headers), "c": {}}
    if upload.checksum_algorithm:
        meta["a"] = upload.checksum_algorithm
    return json.dumps(meta, separators=(",", ":"))


def _loads(text: str) -> Any:
    """A JSON column's value: msgspec's decoder (several times faster than json's), or json's
    for what msgspec refuses (a lone surrogate, as non-UTF-8 metadata decodes to)."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def _object_info(row: Sequence[Any]) -> ObjectInfo:
    key, size, etag, mtime, content_type, meta, parts = row[:7]
    m = _loads(meta)
    return ObjectInfo(
        key=bytes(key).decode("utf-8"),
        size=size,
        etag=etag,
        last_modified=mtime,
        content_type=content_type,
        metadata=m["m"],
        headers=m["h"],
        checksums=m["c"],
        parts=parts,
        part_checksums=m.get("p", ()),
    )


class Index:
    """The SQLite index of one filesystem store. Use each instance from one thread at a time."""

    def __init__(self, path: Path, *, reads_only: bool = False) -> None:
        """Open (and create or upgrade) the index; ``reads_only``: a second connection to an
        index opened already, for reads beside the writer (WAL: readers never wait for it)."""
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if reads_only:
            self.db.execute("PRAGMA query_only=ON")
            return
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(objects)")}
        if "data" not in columns:  # a store made before objects could be inline
            self.db.execute("ALTER TABLE objects ADD COLUMN data BLOB")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(parts)")}
        if "checksums" not in columns:  # a store made before parts kept their checksums
            self.db.execute("ALTER TABLE parts ADD COLUMN checksums TEXT NOT NULL DEFAULT '{}'")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _write(self, *, one_statement: bool = False) -> Iterator[None]:
        """One write: its own transaction, or a savepoint inside a batch (group commit).

        ``one_statement``: the write checks everything before the one statement that changes
        the database, which SQLite undoes by itself when it fails; inside a batch it needs no
        savepoint (two statements fewer per write).
        """
        if self.db.in_transaction:
            if one_statement:
                yield
                return
            self.db.execute("SAVEPOINT op")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK TO op")
                self.db.execute("RELEASE op")
                raise
            self.db.execute("RELEASE op")
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def batch(
        self, ops: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[tuple[bool, Any]]:
        """Run several writes in one transaction (one fsync); each succeeds or fails alone.

        Returns (True, result) or (False, exception) per op, in order.
        """
        results: list[tuple[bool, Any]] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for fn, args in ops:
                try:
                    results.append((True, fn(*args)))
                except Exception as exc:
                    results.append((False, exc))
            self.db.execute("COMMIT")
        except BaseException as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return [(False, exc)] * len(ops)
        return results

    def _need_bucket(self, bucket: str) -> None:
        if self.db.execute("SELECT 1 FROM buckets WHERE name=?", (bucket,)).fetchone() is None:
            raise NoSuchBucket(f"no such bucket: {bucket}")

    def all_blobs(self) -> set[str]:
        blobs: set[str] = set()
        for (segments,) in self.db.execute("SELECT segments FROM objects"):
            blobs.update(blob for blob, _ in json.loads(segments))
        blobs.update(blob for (blob,) in self.db.execute("SELECT blob FROM parts"))
        return blobs

    # --- buckets ---

    def create_bucket(self, bucket: str) -> BucketInfo:
        created = time.time()
        try:
            with self._write():
                self.db.execute("INSERT INTO buckets VALUES (?, ?)", (bucket, created))
        except sqlite3.IntegrityError:
            raise BucketAlreadyExists(f"bucket exists: {bucket}") from None
        return BucketInfo(name=bucket, created=created)

    def head_bucket(self, bucket: str) -> BucketInfo:
        row = self.db.execute("SELECT created FROM buckets WHERE name=?", (bucket,)).fetchone()
        if row is None:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        return BucketInfo(name=bucket, created=row[0])

    def list_buckets(self) -> list[BucketInfo]:
        rows = self.db.execute("SELECT name, created FROM buckets ORDER BY name")
        return [BucketInfo(name=name, created=created) for name, created in rows]

    def delete_bucket(self, bucket: str) -> list[str]:
        db = self.db
        with self._write():
            self._need_bucket(bucket)
            if db.execute("SELECT 1 FROM objects WHERE bucket=? LIMIT 1", (bucket,)).fetchone():
                raise BucketNotEmpty(f"bucket is not empty: {bucket}")
            uploads = [
                u for (u,) in db.execute("SELECT upload_id FROM uploads WHERE bucket=?", (bucket,))
            ]
            freed = self._drop_uploads(uploads)
            db.execute("DELETE FROM completed WHERE bucket=?", (bucket,))
            db.execute("DELETE FROM buckets WHERE name=?", (bucket,))
        return freed

    def _drop_uploads(self, uploads: Iterable[str]) -> list[str]:
        freed: list[str] = []
        for upload_id in uploads:
            freed += [
                b
                for (b,) in self.db.execute(
                    "SELECT blob FROM parts WHERE upload_id=?", (upload_id,)
                )
            ]
            self.db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            self.db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
        return freed

    # --- objects ---

    def put_object(
        self,
        bucket: str,
        info: ObjectInfo,
        segments: Sequence[Segment],
        precondition: Callable[[ObjectInfo | None], None] | None = None,
        data: bytes | None = None,
    ) -> list[str]:
        """Insert or replace an object row; return the replaced object's blobs.

        ``precondition`` sees the replaced object (or None) inside the same transaction.
        ``data``: the bytes of an inline object (then ``segments`` is empty).
        """
        raw_key = info.key.encode("utf-8")
        db = self.db
        with self._write(one_statement=True):
            found, old_segments = db.execute(
                _BUCKET_AND_SEGMENTS, (bucket, bucket, raw_key)
            ).fetchone()
            if found is None:
                raise NoSuchBucket(f"no such bucket: {bucket}")
            if precondition is not None:
                row = db.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket=? AND key=?",
                    (bucket, raw_key),
                ).fetchone()
                precondition(None if row is None else _object_info(row))
            freed = [] if old_segments is None else [blob for blob, _ in _loads(old_segments)]
            db.execute(_INSERT_OBJECT, _object_row(bucket, raw_key, info, segments, data))
        return freed

    def update_headers(
        self, bucket: str, key: str, changes: Mapping[str, str | None]
    ) -> ObjectInfo:
        """Change an object's stored headers in its row (None removes one); its new info."""
        raw_key = key.encode("utf-8")
        db = self.db
        with self._write():
            row = db.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket=? AND key=?",
                (bucket, raw_key),
            ).fetchone()
            if row is None:
                self._need_bucket(bucket)
                raise NoSuchKey(f"no such key: {bucket}/{key}")
            info = _object_info(row)
            headers = dict(info.headers)
            for name, value in changes.items():
                if value is None:
                    headers.pop(name, None)
                else:
                    headers[name] = value
            db.execute(
                "UPDATE objects SET meta=? WHERE bucket=? AND key=?",
                (
                    _meta_json(info.metadata, headers, info.checksums, info.part_checksums),
                    bucket,
                    raw_key,
                ),
            )
        return msgspec.structs.replace(info, headers=headers)

    def _segments_of(self, bucket: str, raw_key: bytes) -> list[str]:
        row = self.db.execute(
            "SELECT segments FROM objects WHERE bucket=? AND key=?", (bucket, raw_key)
        ).fetchone()
        return [] if row is None else [blob for blob, _ in _loads(row[0])]

    def get_object(self, bucket: str, key: str) -> tuple[ObjectInfo, list[Segment], bytes | None]:
        """An object's info, its blobs and, for an inline object, its bytes."""
        row = self.db.execute(
            f"SELECT {_OBJECT_COLUMNS}, segments, data FROM objects WHERE bucket=? AND key=?",
            (bucket, key.encode("utf-8")),
        ).fetchone()
        if row is None:
            self._need_bucket(bucket)
            raise NoSuchKey(f"no such key: {bucket}/{key}")
        segments = [(blob, size) for blob, size in _loads(row[7])]
        info = _object_info(row)
        if info.parts:  # a multipart object keeps one segment per part
            info = msgspec.structs.replace(info, part_sizes=[size for _, size in segments])
        return info, segments, row[8]

    def delete_object(self, bucket: str, key: str) -> tuple[bool, list[str]]:
        raw_key = key.encode("utf-8")
        db = self.db
        with self._write():
            self._need_bucket(bucket)
            freed = self._segments_of(bucket, raw_key)
            existed = db.execute(
                "DELETE FROM objects WHERE bucket=? AND key=?", (bucket, raw_key)
            ).rowcount
        return existed > 0, freed

    def list_objects(
        self, bucket: str, prefix: str, delimiter: str, start_after: str, max_keys: int
    ) -> ObjectListing:
        self._need_bucket(bucket)
        raw_prefix = prefix.encode("utf-8")
        high = upper_bound(raw_prefix)
        low, inclusive = raw_prefix, True
        if start_after:
            raw_after = start_after.encode("utf-8")
            at = -1
            if delimiter and start_after.startswith(prefix):
                at = start_after.find(delimiter, len(prefix))
            if at >= 0 and at + len(delimiter) == len(start_after):
                # start_after is a common prefix: skip everything under it
                skip = upper_bound(raw_after)
                if skip is None:
                    return ObjectListing()
                if skip > low:
                    low, inclusive = skip, True
            elif raw_after >= low:
                low, inclusive = raw_after, False
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        marker = ""
        while True:
            sql = f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket=? AND key {'>=' if inclusive else '>'} ?"
            args: list[Any] = [bucket, low]
            if high is not None:
                sql += " AND key < ?"
                args.append(high)
            rows = self.db.execute(sql + f" ORDER BY key LIMIT {_BATCH}", args).fetchall()
            if not rows:
                return ObjectListing(objects=objects, prefixes=prefixes, next_marker=marker)
            jumped = False
            for row in rows:
                key = bytes(row[0]).decode("utf-8")
                if len(objects) + len(prefixes) >= max_keys:
                    return ObjectListing(
                        objects=objects,
                        prefixes=prefixes,
                        truncated=max_keys > 0,
                        next_marker=marker,
                    )
                if delimiter:
                    at = key.find(delimiter, len(prefix))
                    if at >= 0:
                        common = key[: at + len(delimiter)]
                        prefixes.append(common)
                        marker = common
                        nxt = upper_bound(common.encode("utf-8"))
                        if nxt is None:
                            return ObjectListing(
                                objects=objects, prefixes=prefixes, next_marker=marker
                            )
                        low, inclusive, jumped = nxt, True, True
                        break
                objects.append(_object_info(row))
                marker = key
            if not jumped:
                low, inclusive = bytes(rows[-1][0]), False

    # --- multipart uploads ---

    def create_upload(self, upload: UploadInfo) -> None:
        db = self.db
        with self._write():
            self._need_bucket(upload.bucket)
            db.execute(
                "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                (
                    upload.upload_id,
                    upload.bucket,
                    upload.key.encode("utf-8"),
                    upload.initiated,
                    upload.content_type,
                    _upload_meta(upload),
                ),
            )

    def get_upload(self, bucket: str, key: str, upload_id: str) -> UploadInfo:
        row = self.db.execute(
            "SELECT initiated, content_type, meta FROM uploads WHERE upload_id=? AND bucket=? AND key=?",
            (upload_id, bucket, key.encode("utf-8")),
        ).fetchone()
        if row is None:
            raise NoSuchUpload(f"no such upload: {upload_id}")
        meta = json.loads(row[2])
        return UploadInfo(
            upload_id=upload_id,
            bucket=bucket,
            key=key,
            initiated=row[0],
            content_type=row[1],
            metadata=meta["m"],
            headers=meta["h"],
            checksum_algorithm=meta.get("a", ""),
        )

    def put_part(
        self, bucket: str, key: str, upload_id: str, part: PartInfo, blob: str
    ) -> list[str]:
        db = self.db
        with self._write():
            self.get_upload(bucket, key, upload_id)
            old = db.execute(
                "SELECT blob FROM parts WHERE upload_id=? AND number=?", (upload_id, part.number)
            ).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO parts"
                " (upload_id, number, blob, size, etag, mtime, checksums)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    upload_id,
                    part.number,
                    blob,
                    part.size,
                    part.etag,
                    part.last_modified,
                    json.dumps(dict(part.checksums)),
                ),
            )
        return [] if old is None else [old[0]]

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        self.get_upload(bucket, key, upload_id)
        rows = self.db.execute(
            "SELECT number, size, etag, mtime, checksums FROM parts WHERE upload_id=?"
            " ORDER BY number",
            (upload_id,),
        )
        return [
            PartInfo(number=n, size=s, etag=e, last_modified=m, checksums=json.loads(c))
            for n, s, e, m, c in rows
        ]

    def complete_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        wanted: Sequence[tuple[int, str]],
        min_part: int,
        precondition: Callable[[ObjectInfo | None], None] | None = None,
        checksums: Mapping[str, str] | None = None,
    ) -> tuple[ObjectInfo, list[str]]:
        db = self.db
        with self._write():
            try:
                upload = self.get_upload(bucket, key, upload_id)
            except NoSuchUpload:
                row = db.execute(
                    "SELECT object FROM completed WHERE upload_id=? AND bucket=? AND key=?",
                    (upload_id, bucket, key.encode("utf-8")),
                ).fetchone()
                if row is None:
                    raise
                # completed already: the same answer again, as S3 gives a retrying client
                return msgspec.json.decode(row[0], type=ObjectInfo), []
            have = {
                n: (blob, size, etag, checksums)
                for n, blob, size, etag, checksums in db.execute(
                    "SELECT number, blob, size, etag, checksums FROM parts WHERE upload_id=?",
                    (upload_id,),
                )
            }
            if not wanted:
                raise InvalidPart("a multipart upload needs at least one part", reason="missing")
            segments: list[Segment] = []
            part_checksums: list[dict[str, str]] = []
            digests = hashlib.md5(usedforsecurity=False)
            numbers = [number for number, _ in wanted]
            if any(b < a for a, b in itertools.pairwise(numbers)):
                raise InvalidPart("parts must be listed in ascending order", reason="order")
            # a number listed twice (a client that re-sent a part lists both answers): the last
            # ETag listed for it is the one that counts, as S3
            wanted = list({number: (number, etag) for number, etag in wanted}.values())
            for i, (number, etag) in enumerate(wanted):
                part = have.get(number)
                if part is None or part[2] != etag.strip('"').lower():
                    raise InvalidPart(
                        f"part {number} was not uploaded with that ETag", reason="missing"
                    )
                if part[1] < min_part and i != len(wanted) - 1:
                    raise InvalidPart(
                        f"part {number} is {part[1]} bytes; all parts but the last need {min_part}",
                        reason="too_small",
                    )
                segments.append((part[0], part[1]))
                part_checksums.append(_loads(part[3]))
                digests.update(bytes.fromhex(part[2]))
            raw_key = key.encode("utf-8")
            if precondition is not None:
                row = db.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket=? AND key=?",
                    (bucket, raw_key),
                ).fetchone()
                precondition(None if row is None else _object_info(row))
            used = {blob for blob, _ in segments}
            info = ObjectInfo(
                key=key,
                size=sum(size for _, size in segments),
                etag=f"{digests.hexdigest()}-{len(segments)}",
                last_modified=time.time(),
                content_type=upload.content_type,
                metadata=upload.metadata,
                headers=upload.headers,
                checksums=dict(checksums or {}),
                parts=len(segments),
                part_checksums=part_checksums if any(part_checksums) else (),
            )
            freed = [blob for blob, _, _, _ in have.values() if blob not in used]
            db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
            db.execute("DELETE FROM completed WHERE completed < ?", (time.time() - COMPLETED_KEPT,))
            db.execute(
                "INSERT OR REPLACE INTO completed VALUES (?, ?, ?, ?, ?)",
                (upload_id, bucket, raw_key, time.time(), msgspec.json.encode(info).decode()),
            )
            freed += self._segments_of(bucket, raw_key)
            db.execute(_INSERT_OBJECT, _object_row(bucket, raw_key, info, segments, None))
        return info, freed

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> list[str]:
        with self._write():
            self.get_upload(bucket, key, upload_id)
            freed = self._drop_uploads([upload_id])
        return freed

    def list_uploads(self, bucket: str, prefix: str) -> list[UploadInfo]:
        self._need_bucket(bucket)
        raw_prefix = prefix.encode("utf-8")
        high = upper_bound(raw_prefix)
        sql = "SELECT upload_id, key, initiated, content_type, meta FROM uploads WHERE bucket=? AND key >= ?"
        args: list[Any] = [bucket, raw_prefix]
        if high is not None:
            sql += " AND key < ?"
            args.append(high)
        out = []
        for upload_id, key, initiated, content_type, meta in self.db.execute(
            sql + " ORDER BY key, upload_id", args
        ):
            m = json.loads(meta)
            out.append(
                UploadInfo(
                    upload_id=upload_id,
                    bucket=bucket,
                    key=bytes(key).decode("utf-8"),
                    initiated=initiated,
                    content_type=content_type,
                    metadata=m["m"],
                    headers=m["h"],
                    checksum_algorithm=m.get("a", ""),
                )
            )
        return out


def _object_row(
    bucket: str, raw_key: bytes, info: ObjectInfo, segments: Iterable[Any], data: bytes | None
) -> tuple[object, ...]:
    """The values of :data:`_INSERT_OBJECT` for ``info`` (``data``: the bytes of an inline
    object, else None)."""
    return (
        bucket,
        raw_key,
        info.size,
        info.etag,
        info.last_modified,
        info.content_type,
        _meta_json(info.metadata, info.headers, info.checksums, info.part_checksums),
        info.parts,
        _dumps(list(segments)),
        data,
    )
