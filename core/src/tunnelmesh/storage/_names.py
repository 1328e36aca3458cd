"""Which bucket names and object keys a backend accepts (S3's rules, plus a safety rule).

Keys are never turned into paths by the filesystem backend, so no key can escape its
directory whatever it holds. Still, ``.`` and ``..`` segments are refused everywhere: a key such
as ``a/../b`` means one thing to S3 and another to every tool that later mirrors the bucket onto
a disk (rclone, ``aws s3 sync``), and refusing it up front is the only safe answer for a file
share.
"""

from __future__ import annotations

import ipaddress
import re

from tunnelmesh.errors import InvalidName

__all__ = ["MAX_KEY_BYTES", "check_bucket_name", "check_key"]

MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_bucket_name(name: str) -> None:
    """Raise :class:`InvalidName` unless ``name`` is a valid S3 bucket name.

    3 to 63 characters of lower-case letters, digits, ``.`` and ``-``; starting and ending with a
    letter or digit; no ``..``, ``.-`` or ``-.``; not shaped like an IPv4 address.
    """
    if not _BUCKET.match(name):
        raise InvalidName(
            f"invalid bucket name {name!r}: 3 to 63 of a-z, 0-9, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    if ".." in name or ".-" in name or "-." in name:
        raise InvalidName(f"invalid bucket name {name!r}: '..', '.-' and '-.' are not allowed")
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return
    raise InvalidName(f"invalid bucket name {name!r}: must not look like an IP address")


def check_key(key: str) -> bytes:
    """Return the UTF-8 bytes of ``key``, or raise :class:`InvalidName`.

    A key is 1 to 1024 bytes of valid UTF-8 with no NUL and no ``.`` or ``..`` segment between
    slashes.
    """
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("object key is not valid UTF-8") from None
    if not raw:
        raise InvalidName("object key is empty")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidName(f"object key is {len(raw)} bytes long; the limit is {MAX_KEY_BYTES}")
    if "\x00" in key:
        raise InvalidName("object key contains a NUL character")
    for segment in key.split("/"):
        if segment in (".", ".."):
            raise InvalidName(f"object key {key!r} contains a {segment!r} path segment")
    return raw
