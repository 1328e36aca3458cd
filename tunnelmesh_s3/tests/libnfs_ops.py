"""mkdir, rmdir, unlink, rename and overwrite through the real libnfs client library (ctypes).

Debian's libnfs-utils has nfs-ls, nfs-cp and nfs-cat only; the directory operations the issue
asks to check go through the same library those tools use (``libnfs.so.13``), so the calls on
the wire are libnfs's, not ours. Run as a script (in a lab namespace) or import :func:`run`::

    python libnfs_ops.py 'nfs://HOST/SHARE?nfsport=P&mountport=P' mkdir /dir
    python libnfs_ops.py URL rename /a /b
    python libnfs_ops.py URL put LOCAL /existing   # open O_WRONLY|O_TRUNC, 1 MiB writes, close

(nfs-cp of libnfs 4.0 creates with O_EXCL, so it cannot overwrite: ``put`` does, as ``cp`` would.)

Exit status 0 on success; otherwise 1 and libnfs's error on stderr.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["LIBNFS", "run"]

LIBNFS = ctypes.util.find_library("nfs") or "libnfs.so.13"


class _Url(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


def run(url: str, op: str, *paths: str) -> str | None:
    """Mount the export of ``url`` and do ``op`` (mkdir, rmdir, unlink, rename) on ``paths``
    (absolute within the export). Returns None on success, else libnfs's error message."""
    lib = ctypes.CDLL(LIBNFS)
    lib.nfs_init_context.restype = ctypes.c_void_p
    lib.nfs_get_error.restype = ctypes.c_char_p
    lib.nfs_get_error.argtypes = [ctypes.c_void_p]
    lib.nfs_parse_url_dir.restype = ctypes.POINTER(_Url)
    lib.nfs_parse_url_dir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nfs_destroy_url.argtypes = [ctypes.POINTER(_Url)]
    lib.nfs_destroy_context.argtypes = [ctypes.c_void_p]
    lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    for name in ("nfs_mkdir", "nfs_rmdir", "nfs_unlink"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nfs_rename.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.nfs_open.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.nfs_pwrite.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_char_p,
    ]
    lib.nfs_close.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    nfs = lib.nfs_init_context()
    if not nfs:
        return "nfs_init_context failed"
    try:
        url_p = lib.nfs_parse_url_dir(nfs, url.encode())
        if not url_p:
            return str(lib.nfs_get_error(nfs).decode())
        try:
            if lib.nfs_mount(nfs, url_p.contents.server, url_p.contents.path) != 0:
                return "mount: " + str(lib.nfs_get_error(nfs).decode())
        finally:
            lib.nfs_destroy_url(url_p)
        if op == "put":
            return _put(lib, nfs, *paths)
        rc = getattr(lib, f"nfs_{op}")(nfs, *(p.encode() for p in paths))
        return None if rc == 0 else f"{op}: {lib.nfs_get_error(nfs).decode()}"
    finally:
        lib.nfs_destroy_context(nfs)


def _put(lib: ctypes.CDLL, nfs: int, local: str, remote: str) -> str | None:
    fh = ctypes.c_void_p()
    if lib.nfs_open(nfs, remote.encode(), os.O_WRONLY | os.O_TRUNC, ctypes.byref(fh)) != 0:
        return f"open: {lib.nfs_get_error(nfs).decode()}"
    with open(local, "rb") as f:
        offset = 0
        while chunk := f.read(1 << 20):
            if lib.nfs_pwrite(nfs, fh, offset, len(chunk), chunk) != len(chunk):
                return f"pwrite: {lib.nfs_get_error(nfs).decode()}"
            offset += len(chunk)
    if lib.nfs_close(nfs, fh) != 0:  # COMMIT
        return f"close: {lib.nfs_get_error(nfs).decode()}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] not in ("mkdir", "rmdir", "unlink", "rename", "put"):
        print("usage: libnfs_ops.py URL mkdir|rmdir|unlink|rename|put PATH [PATH]", file=sys.stderr)
        return 2
    error = run(argv[0], argv[1], *argv[2:])
    if error is not None:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
