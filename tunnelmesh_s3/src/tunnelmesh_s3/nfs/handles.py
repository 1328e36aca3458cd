"""NFS file handles: stable across restarts, unforgeable, confined to their share.

A handle is ``version (1 byte) | id (8 bytes) | HMAC-SHA256(secret, version | id)[:16]``
(25 bytes; NFSv3 allows 64). The id is a row of a small SQLite table (``handles.sqlite3``) that
names the share and the key (a file's object key, a directory's path, "" for the share's root);
a handle whose MAC does not verify (checked in constant time) is refused before the table is
read, so a client cannot make up a handle that names another share or another key. The secret
is 32 random bytes in ``handles.secret`` (mode 0600), made on first use.

A rename moves the row (and every row under a renamed directory), so a client's handle follows
the file as NFS expects. A handle whose key no longer exists answers NFS3ERR_STALE (the caller
checks that). Rows are never reused: a file removed and created again under the same key gets
the same id, as a path-based server would.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import struct
import threading
from pathlib import Path

from tunnelmesh.errors import RemoteProtocolError, StorageError

__all__ = ["BadHandle", "Handles"]

_VERSION = b"\x01"
_ID = struct.Struct(">Q")
_MAC = 16
SIZE = 1 + _ID.size + _MAC


class BadHandle(RemoteProtocolError, ValueError):
    """A handle that is malformed or whose MAC does not verify."""


class Handles:
    """The handle table of one NFS server (one directory). Lookups come from memory; inserts and
    renames are committed to SQLite before they return.

    Args:
        root: the directory (created 0700 when missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._secret = self._load_secret()
        self._db = sqlite3.connect(self.root / "handles.sqlite3", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS handles ("
            " id INTEGER PRIMARY KEY, share TEXT NOT NULL, key TEXT NOT NULL,"
            " UNIQUE (share, key))"
        )
        self._db.commit()
        self._lock = threading.Lock()
        self._by_id: dict[int, tuple[str, str]] = {}
        self._by_key: dict[tuple[str, str], int] = {}
        for id_, share, key in self._db.execute("SELECT id, share, key FROM handles"):
            self._by_id[id_] = (share, key)
            self._by_key[(share, key)] = id_

    def _load_secret(self) -> bytes:
        path = self.root / "handles.secret"
        try:
            secret = path.read_bytes()
        except FileNotFoundError:
            secret = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secret)
                os.fsync(fd)
            finally:
                os.close(fd)
        if len(secret) != 32:
            raise StorageError(f"{path}: expected 32 bytes, found {len(secret)}")
        return secret

    def close(self) -> None:
        self._db.close()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_MAC]

    def encode(self, id_: int) -> bytes:
        body = _VERSION + _ID.pack(id_)
        return body + self._mac(body)

    def decode(self, fh: bytes) -> tuple[int, str, str] | None:
        """(id, share, key) of a handle; None when its id is unknown (stale).

        Raises:
            BadHandle: wrong length or version, or a MAC that does not verify.
        """
        if len(fh) != SIZE or fh[:1] != _VERSION:
            raise BadHandle("not a handle of this server")
        body, mac = fh[: 1 + _ID.size], fh[1 + _ID.size :]
        if not hmac.compare_digest(self._mac(body), mac):
            raise BadHandle("handle MAC does not verify")
        (id_,) = _ID.unpack(body[1:])
        where = self._by_id.get(id_)
        return None if where is None else (id_, *where)

    def id_of(self, share: str, key: str) -> int:
        """The id of ``share``/``key``, made (and committed) when new. Blocking: call in a thread
        when it may insert, or use :meth:`known` first."""
        with self._lock:
            id_ = self._by_key.get((share, key))
            if id_ is not None:
                return id_
            cur = self._db.execute("INSERT INTO handles (share, key) VALUES (?, ?)", (share, key))
            self._db.commit()
            id_ = int(cur.lastrowid or 0)
            self._by_id[id_] = (share, key)
            self._by_key[(share, key)] = id_
            return id_

    def ids_of(self, share: str, keys: list[str]) -> list[int]:
        """Ids of many keys, new ones inserted in one transaction."""
        with self._lock:
            new = [k for k in dict.fromkeys(keys) if (share, k) not in self._by_key]
            if new:
                for k in new:
                    cur = self._db.execute(
                        "INSERT INTO handles (share, key) VALUES (?, ?)", (share, k)
                    )
                    id_ = int(cur.lastrowid or 0)
                    self._by_id[id_] = (share, k)
                    self._by_key[(share, k)] = id_
                self._db.commit()
            return [self._by_key[(share, k)] for k in keys]

    def known(self, share: str, key: str) -> int | None:
        return self._by_key.get((share, key))

    def move(self, share: str, src: str, dst: str) -> None:
        """After a rename: ``src`` (and, for a directory, every key under ``src/``) is now
        ``dst``; a row the destination already had is dropped (its file was replaced)."""
        with self._lock:
            moves = [
                (id_, dst + k[len(src) :])
                for (s, k), id_ in self._by_key.items()
                if s == share and (k == src or k.startswith(src + "/"))
            ]
            for _, new_key in moves:
                old = self._by_key.pop((share, new_key), None)
                if old is not None:
                    self._by_id.pop(old, None)
                    self._db.execute("DELETE FROM handles WHERE id = ?", (old,))
            for id_, _ in moves:
                self._by_key.pop(self._by_id[id_], None)
            for id_, new_key in moves:
                self._db.execute("UPDATE handles SET key = ? WHERE id = ?", (new_key, id_))
                self._by_id[id_] = (share, new_key)
                self._by_key[(share, new_key)] = id_
            self._db.commit()
