"""Writes in progress over NFS: UNSTABLE data staged in a local file until COMMIT.

NFSv3 lets a server keep UNSTABLE writes in volatile storage until the client sends COMMIT; the
client keeps its copy until then and writes again when the server's write verifier changes (a
restart). Here a file being written is a *stage*: a private file in ``<nfs dir>/staging/``
holding the file's whole new content. WRITE lands in it with ``pwrite``; READ and GETATTR of
the file see it; COMMIT (and any FILE_SYNC/DATA_SYNC write) streams it
into the store with one ``put_object``, which makes the object visible whole or not at all.

So a crash (``kill -9``) before COMMIT leaves the object as it was (absent for a new file) and
the staging directory, which is emptied at the next start; a crash during COMMIT's put leaves
the old object or the new one, whole. A stage no WRITE touched for ``idle_commit`` seconds is
committed (a client that wrote and went away does not leave the file invisible forever), and a
clean stage is dropped after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from tunnelmesh.errors import NoSuchBucket, StorageError

__all__ = ["Stage", "Stages"]

CHUNK = 1024 * 1024


class Stage:
    """One file being written: its staging file, size and state.

    Attributes:
        share, key: the file.
        new: the store has no object for it yet (created over NFS, never committed).
        dirty: it holds writes the store does not have.
        etag: the stored object it was copied from or last committed to ("" when new).
        verf: the EXCLUSIVE create verifier it was created with (b"" otherwise).
    """

    def __init__(self, share: str, key: str, path: Path, *, new: bool) -> None:
        self.share = share
        self.key = key
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.size = 0
        self.mtime = time.time()
        self.new = new
        self.dirty = new
        self.etag = ""
        self.verf = b""
        self.lock = asyncio.Lock()
        self.touched = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        """Dropped (committed and idle, or its file removed): make a new stage."""
        return self.fd < 0

    async def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        await asyncio.to_thread(_pwrite_all, self.fd, data, offset)
        self.size = max(self.size, offset + len(data))
        self.mtime = time.time()
        self.dirty = True
        self.touched = time.monotonic()

    async def pread(self, count: int, offset: int) -> bytes:
        return await asyncio.to_thread(os.pread, self.fd, count, offset)

    async def truncate(self, size: int) -> None:
        await asyncio.to_thread(os.ftruncate, self.fd, size)
        self.size = size
        self.mtime = time.time()
        self.dirty = True
        self.touched = time.monotonic()

    async def body(self) -> AsyncIterator[bytes]:
        """The staged content, in chunks (what COMMIT hands to ``put_object``)."""
        pos = 0
        while pos < self.size:
            data = await self.pread(min(CHUNK, self.size - pos), pos)
            if not data:
                raise StorageError(f"staging file {self.path} is shorter than {self.size} bytes")
            pos += len(data)
            yield data

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            self.path.unlink()


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Stages:
    """Every stage of one server, by (share, key).

    Args:
        root: the staging directory (emptied at start: what a crash left is uncommitted).
        commit: how to commit a stage (the server's; holds ``stage.lock`` while it runs).
        limit: the most stages at once (more: the caller answers NFS3ERR_JUKEBOX, retry later).
        idle_commit: seconds without a WRITE after which a dirty stage is committed.
    """

    def __init__(
        self,
        root: Path,
        commit: Callable[[Stage], Awaitable[None]],
        *,
        limit: int = 256,
        idle_commit: float = 10.0,
    ) -> None:
        self.root = root
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, mode=0o700)
        self._commit = commit
        self.limit = limit
        self.idle_commit = idle_commit
        self._stages: dict[tuple[str, str], Stage] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._stages)

    def get(self, share: str, key: str) -> Stage | None:
        return self._stages.get((share, key))

    def full(self) -> bool:
        return len(self._stages) >= self.limit

    def new(self, share: str, key: str, *, new: bool) -> Stage:
        stage = Stage(share, key, self.root / secrets.token_hex(16), new=new)
        self._stages[(share, key)] = stage
        self.arm(stage)
        return stage

    def under(self, share: str, prefix: str) -> list[Stage]:
        """Stages of files directly or indirectly under the directory ``prefix`` ("" = root)."""
        p = prefix + "/" if prefix else ""
        return [s for (sh, k), s in self._stages.items() if sh == share and k.startswith(p)]

    def drop(self, stage: Stage) -> None:
        if self._stages.get((stage.share, stage.key)) is stage:
            del self._stages[(stage.share, stage.key)]
        stage.close()

    def arm(self, stage: Stage) -> None:
        """(Re)start the stage's idle timer."""
        if stage.timer is not None:
            stage.timer.cancel()
        loop = asyncio.get_running_loop()
        stage.timer = loop.call_later(self.idle_commit, self._idle, stage)

    def _idle(self, stage: Stage) -> None:
        stage.timer = None
        task = asyncio.get_running_loop().create_task(self._settle(stage))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, stage: Stage) -> None:
        if time.monotonic() - stage.touched < self.idle_commit * 0.9:
            self.arm(stage)  # touched since the timer was set
            return
        if stage.dirty:
            try:
                await self._commit(stage)
            except NoSuchBucket:  # the share's bucket is gone: nothing to commit into
                self.drop(stage)
                return
            except Exception:  # logged by the server's commit; retried later
                self.arm(stage)
                return
        async with stage.lock:
            if not stage.dirty:
                self.drop(stage)

    async def aclose(self) -> None:
        """Drop every stage (uncommitted data goes, as in a crash; clients resend it)."""
        for task in list(self._tasks):
            task.cancel()
        for stage in list(self._stages.values()):
            self.drop(stage)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
