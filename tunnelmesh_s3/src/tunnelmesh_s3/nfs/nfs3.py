"""NFSv3 (RFC 1813) and MOUNT v3 wire formats, sans-IO: arguments decoded into frozen
dataclasses, results encoded from them. No semantics here (see :mod:`tunnelmesh_s3.nfs.ops`).

Bounds: file handles are at most 64 bytes (``NFS3_FHSIZE``), names 255 bytes, paths 1024 bytes,
WRITE data at most :data:`MAX_IO` (the ``wtmax`` FSINFO announces). Anything else is
:class:`~tunnelmesh_s3.nfs.xdr.XdrError` and the call is answered GARBAGE_ARGS.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tunnelmesh_s3.nfs.xdr import Packer, Unpacker, XdrError

NFS_PROGRAM, NFS_V3 = 100003, 3
MOUNT_PROGRAM, MOUNT_V3 = 100005, 3
PMAP_PROGRAM, PMAP_V2 = 100000, 2

FHSIZE = 64
MAX_NAME = 255
MAX_PATH = 1024
MAX_IO = 1024 * 1024
"""rtmax and wtmax: the largest READ and WRITE."""
MAX_FILE = 64 * 1024**3
"""FSINFO's maxfilesize: a WRITE or SETATTR past it is NFS3ERR_FBIG (a one-byte write at a
huge offset would otherwise make the commit store that many zeros)."""


class Proc(enum.IntEnum):
    NULL = 0
    GETATTR = 1
    SETATTR = 2
    LOOKUP = 3
    ACCESS = 4
    READLINK = 5
    READ = 6
    WRITE = 7
    CREATE = 8
    MKDIR = 9
    SYMLINK = 10
    MKNOD = 11
    REMOVE = 12
    RMDIR = 13
    RENAME = 14
    LINK = 15
    READDIR = 16
    READDIRPLUS = 17
    FSSTAT = 18
    FSINFO = 19
    PATHCONF = 20
    COMMIT = 21


class MountProc(enum.IntEnum):
    NULL = 0
    MNT = 1
    DUMP = 2
    UMNT = 3
    UMNTALL = 4
    EXPORT = 5


class Stat(enum.IntEnum):
    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    NXIO = 6
    ACCES = 13
    EXIST = 17
    XDEV = 18
    NODEV = 19
    NOTDIR = 20
    ISDIR = 21
    INVAL = 22
    FBIG = 27
    NOSPC = 28
    ROFS = 30
    MLINK = 31
    NAMETOOLONG = 63
    NOTEMPTY = 66
    DQUOT = 69
    STALE = 70
    REMOTE = 71
    BADHANDLE = 10001
    NOT_SYNC = 10002
    BAD_COOKIE = 10003
    NOTSUPP = 10004
    TOOSMALL = 10005
    SERVERFAULT = 10006
    BADTYPE = 10007
    JUKEBOX = 10008


class MountStat(enum.IntEnum):
    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    ACCES = 13
    NOTDIR = 20
    INVAL = 22
    NAMETOOLONG = 63
    NOTSUPP = 10004
    SERVERFAULT = 10006


class Ftype(enum.IntEnum):
    REG = 1
    DIR = 2


class Stable(enum.IntEnum):
    UNSTABLE = 0
    DATA_SYNC = 1
    FILE_SYNC = 2


class CreateMode(enum.IntEnum):
    UNCHECKED = 0
    GUARDED = 1
    EXCLUSIVE = 2


# ACCESS bits
ACCESS_READ, ACCESS_LOOKUP, ACCESS_MODIFY, ACCESS_EXTEND, ACCESS_DELETE, ACCESS_EXECUTE = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x20,
)
FSF_LINK, FSF_SYMLINK, FSF_HOMOGENEOUS, FSF_CANSETTIME = 0x1, 0x2, 0x8, 0x10

# sattr3 time_how
DONT_CHANGE, SET_TO_SERVER_TIME, SET_TO_CLIENT_TIME = 0, 1, 2


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fattr:
    """fattr3. Times are (seconds, nanoseconds)."""

    type: Ftype
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    fsid: int
    fileid: int
    atime: tuple[int, int]
    mtime: tuple[int, int]
    ctime: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Sattr:
    """sattr3: None for "do not set"; a time is "server" (SET_TO_SERVER_TIME) or (sec, nsec)."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: str | tuple[int, int] | None = None
    mtime: str | tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Wcc:
    """wcc_data: pre-op (size, mtime, ctime) and post-op attributes, each optional."""

    before: tuple[int, tuple[int, int], tuple[int, int]] | None = None
    after: Fattr | None = None


# --- arguments --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FhArgs:  # GETATTR, FSSTAT, FSINFO, PATHCONF, READLINK
    fh: bytes


@dataclass(frozen=True, slots=True)
class SetattrArgs:
    fh: bytes
    attr: Sattr
    guard: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class DiropArgs:  # LOOKUP, REMOVE, RMDIR
    dir: bytes
    name: str


@dataclass(frozen=True, slots=True)
class AccessArgs:
    fh: bytes
    access: int


@dataclass(frozen=True, slots=True)
class ReadArgs:
    fh: bytes
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class WriteArgs:
    fh: bytes
    offset: int
    count: int
    stable: Stable
    data: memoryview


@dataclass(frozen=True, slots=True)
class CreateArgs:
    dir: bytes
    name: str
    how: CreateMode
    attr: Sattr
    verf: bytes  # EXCLUSIVE's createverf3, else b""


@dataclass(frozen=True, slots=True)
class MkdirArgs:
    dir: bytes
    name: str
    attr: Sattr


@dataclass(frozen=True, slots=True)
class RenameArgs:
    from_dir: bytes
    from_name: str
    to_dir: bytes
    to_name: str


@dataclass(frozen=True, slots=True)
class ReaddirArgs:
    dir: bytes
    cookie: int
    verf: bytes
    count: int  # READDIR: count; READDIRPLUS: maxcount
    dircount: int = 0
    plus: bool = False


@dataclass(frozen=True, slots=True)
class CommitArgs:
    fh: bytes
    offset: int
    count: int


# --- decoding ---------------------------------------------------------------------------------


def _fh(u: Unpacker) -> bytes:
    return u.opaque(FHSIZE)


def _name(u: Unpacker) -> str:
    return u.string(MAX_NAME)


def _time(u: Unpacker) -> tuple[int, int]:
    return u.uint32(), u.uint32()


def _set_time(u: Unpacker) -> str | tuple[int, int] | None:
    how = u.uint32()
    if how == DONT_CHANGE:
        return None
    if how == SET_TO_SERVER_TIME:
        return "server"
    if how == SET_TO_CLIENT_TIME:
        return _time(u)
    raise XdrError(f"time_how {how}")


def _sattr(u: Unpacker) -> Sattr:
    mode = u.uint32() if u.boolean() else None
    uid = u.uint32() if u.boolean() else None
    gid = u.uint32() if u.boolean() else None
    size = u.uint64() if u.boolean() else None
    return Sattr(mode, uid, gid, size, _set_time(u), _set_time(u))


def _enum(cls: type[enum.IntEnum], value: int) -> enum.IntEnum:
    try:
        return cls(value)
    except ValueError:
        raise XdrError(f"{cls.__name__} {value}") from None


def decode_args(proc: Proc, data: memoryview) -> object:
    """The arguments of ``proc`` (NULL: None). Raises XdrError on malformed or trailing data."""
    u = Unpacker(data)
    args: object
    if proc == Proc.NULL:
        args = None
    elif proc in (Proc.GETATTR, Proc.FSSTAT, Proc.FSINFO, Proc.PATHCONF, Proc.READLINK):
        args = FhArgs(_fh(u))
    elif proc == Proc.SETATTR:
        fh, attr = _fh(u), _sattr(u)
        args = SetattrArgs(fh, attr, _time(u) if u.boolean() else None)
    elif proc in (Proc.LOOKUP, Proc.REMOVE, Proc.RMDIR):
        args = DiropArgs(_fh(u), _name(u))
    elif proc == Proc.ACCESS:
        args = AccessArgs(_fh(u), u.uint32())
    elif proc == Proc.READ:
        args = ReadArgs(_fh(u), u.uint64(), u.uint32())
    elif proc == Proc.WRITE:
        fh, offset, count = _fh(u), u.uint64(), u.uint32()
        stable = Stable(_enum(Stable, u.uint32()))
        data_ = u.opaque_view(MAX_IO)
        if count > len(data_):
            raise XdrError(f"WRITE count {count} over its {len(data_)} bytes of data")
        args = WriteArgs(fh, offset, count, stable, data_[:count])
    elif proc == Proc.CREATE:
        d, name = _fh(u), _name(u)
        how = CreateMode(_enum(CreateMode, u.uint32()))
        if how == CreateMode.EXCLUSIVE:
            args = CreateArgs(d, name, how, Sattr(), u.fixed(8))
        else:
            args = CreateArgs(d, name, how, _sattr(u), b"")
    elif proc == Proc.MKDIR:
        args = MkdirArgs(_fh(u), _name(u), _sattr(u))
    elif proc == Proc.RENAME:
        args = RenameArgs(_fh(u), _name(u), _fh(u), _name(u))
    elif proc == Proc.READDIR:
        args = ReaddirArgs(_fh(u), u.uint64(), u.fixed(8), u.uint32())
    elif proc == Proc.READDIRPLUS:
        d, cookie, verf, dircount = _fh(u), u.uint64(), u.fixed(8), u.uint32()
        args = ReaddirArgs(d, cookie, verf, u.uint32(), dircount, plus=True)
    elif proc == Proc.COMMIT:
        args = CommitArgs(_fh(u), u.uint64(), u.uint32())
    else:  # SYMLINK, MKNOD, LINK: answered NOTSUPP without reading their arguments
        return None
    u.done()
    return args


# --- encoding ---------------------------------------------------------------------------------


def fattr(p: Packer, a: Fattr) -> None:
    p.uint32(a.type).uint32(a.mode).uint32(a.nlink).uint32(a.uid).uint32(a.gid)
    p.uint64(a.size).uint64(a.used).uint32(0).uint32(0).uint64(a.fsid).uint64(a.fileid)
    for t in (a.atime, a.mtime, a.ctime):
        p.uint32(t[0]).uint32(t[1])


def post_op_attr(p: Packer, a: Fattr | None) -> None:
    p.boolean(a is not None)
    if a is not None:
        fattr(p, a)


def post_op_fh(p: Packer, fh: bytes | None) -> None:
    p.boolean(fh is not None)
    if fh is not None:
        p.opaque(fh)


def wcc(p: Packer, w: Wcc) -> None:
    p.boolean(w.before is not None)
    if w.before is not None:
        size, mtime, ctime = w.before
        p.uint64(size).uint32(mtime[0]).uint32(mtime[1]).uint32(ctime[0]).uint32(ctime[1])
    post_op_attr(p, w.after)


def failure(proc: Proc, status: Stat, attr: Fattr | None = None, w: Wcc | None = None) -> bytes:
    """A failed result of ``proc``: the status and the attributes its failure arm carries."""
    p = Packer().uint32(status)
    w = w or Wcc()
    if proc in (
        Proc.SETATTR,
        Proc.WRITE,
        Proc.CREATE,
        Proc.MKDIR,
        Proc.SYMLINK,
        Proc.MKNOD,
        Proc.REMOVE,
        Proc.RMDIR,
        Proc.COMMIT,
    ):
        wcc(p, w)
    elif proc == Proc.RENAME:
        wcc(p, w)
        wcc(p, Wcc())
    elif proc == Proc.LINK:
        post_op_attr(p, attr)
        wcc(p, w)
    elif proc != Proc.GETATTR:  # LOOKUP, ACCESS, READLINK, READ, READDIR*, FSSTAT, FSINFO, PATHCONF
        post_op_attr(p, attr)
    return p.getvalue()


@dataclass(frozen=True, slots=True)
class DirEntry:
    fileid: int
    name: str
    cookie: int
    attr: Fattr | None = None
    fh: bytes | None = None


def entry_size(e: DirEntry, plus: bool) -> int:
    """Bytes ``e`` takes in a READDIR(PLUS) reply (to keep within the client's count)."""
    n = 4 + 8 + 4 + len(e.name.encode()) + (-len(e.name.encode()) % 4) + 8
    if plus:
        n += 4 + (84 if e.attr is not None else 0) + 4 + (4 + len(e.fh) if e.fh else 0)
    return n


def readdir_ok(
    attr: Fattr | None, verf: bytes, entries: list[DirEntry], eof: bool, plus: bool
) -> bytes:
    p = Packer().uint32(Stat.OK)
    post_op_attr(p, attr)
    p.fixed(verf)
    for e in entries:
        p.boolean(True).uint64(e.fileid).string(e.name).uint64(e.cookie)
        if plus:
            post_op_attr(p, e.attr)
            post_op_fh(p, e.fh)
    p.boolean(False).boolean(eof)
    return p.getvalue()


# --- MOUNT ------------------------------------------------------------------------------------


def decode_dirpath(data: memoryview) -> str:
    u = Unpacker(data)
    path = u.string(MAX_PATH)
    u.done()
    return path


def mnt_ok(fh: bytes, flavors: tuple[int, ...] = (0, 1)) -> bytes:
    p = Packer().uint32(MountStat.OK).opaque(fh).uint32(len(flavors))
    for f in flavors:
        p.uint32(f)
    return p.getvalue()


def exports(dirs: list[str]) -> bytes:
    """EXPORT's list: each directory, with no group restriction listed (membership is by key)."""
    p = Packer()
    for d in dirs:
        p.boolean(True).string(d).boolean(False)
    return p.boolean(False).getvalue()


# --- PORTMAP ----------------------------------------------------------------------------------


def decode_getport(data: memoryview) -> tuple[int, int, int]:
    """PMAPPROC_GETPORT's mapping: (program, version, protocol); the port field is ignored."""
    u = Unpacker(data)
    prog, vers, prot, _ = u.uint32(), u.uint32(), u.uint32(), u.uint32()
    u.done()
    return prog, vers, prot
