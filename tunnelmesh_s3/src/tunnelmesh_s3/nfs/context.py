"""What an NFS procedure works with: who calls (:class:`_Ctx`), the file a handle names
(:class:`_Node`), the error that ends a procedure (:class:`NfsError`), names and times in
NFS's terms, and the bounds of the directory listings kept for READDIR walks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from tunnelmesh.errors import TunnelmeshError

from tunnelmesh_s3.auth import Principal
from tunnelmesh_s3.nfs import nfs3
from tunnelmesh_s3.nfs.nfs3 import Stat
from tunnelmesh_s3.nfs.rpc import AuthSys
from tunnelmesh_s3.shareaccess import Entry, ShareView

__all__ = ["LISTING_TTL", "MAX_LISTING", "MAX_LISTINGS", "NOBODY", "NfsError"]

NOBODY = 65534
LISTING_TTL = 30.0
"""Seconds a directory listing is kept for the pages of one READDIR(PLUS) walk."""
MAX_LISTINGS = 16
MAX_LISTING = 50_000
"""Listings kept at once, and the most entries one may have to be kept (bounded memory)."""


class NfsError(TunnelmeshError):
    """Ends a procedure with ``stat`` (and the directory attributes its failure arm carries)."""

    def __init__(self, stat: Stat, message: str = "") -> None:
        super().__init__(message or stat.name)
        self.stat = stat


@dataclass(slots=True)
class _Ctx:
    principal: Principal | None
    auth: AuthSys | None

    @property
    def uid(self) -> int:
        return self.auth.uid if self.auth is not None else NOBODY

    @property
    def gid(self) -> int:
        return self.auth.gid if self.auth is not None else NOBODY


@dataclass(slots=True)
class _Node:
    view: ShareView
    id: int
    key: str  # "" for the share's root; a directory's path without a trailing "/"
    entry: Entry


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


def _split_time(t: float) -> tuple[int, int]:
    sec = int(t)
    return sec & 0xFFFF_FFFF, int((t - sec) * 1e9) % 1_000_000_000


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _check_name(name: str) -> None:
    if not name or "/" in name or "\x00" in name:
        raise NfsError(Stat.INVAL, f"bad name {name!r}")
    if name in (".", ".."):
        raise NfsError(Stat.EXIST, f"{name!r} always exists")
    if len(name.encode()) > nfs3.MAX_NAME:
        raise NfsError(Stat.NAMETOOLONG)
