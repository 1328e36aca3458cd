"""Object and bucket tags: S3's limits, the ``x-amz-tagging`` header and the Tagging document.

Pure functions, no I/O. An object's tags are stored with the object, among its stored headers
under :data:`HEADER` in one canonical form (URL-encoded pairs sorted by key), so PUT, copy and
multipart write them atomically with the data, and PutObjectTagging changes them in place
(:meth:`~tunnelmesh.abc.Storage.update_object_headers`). A bucket's tags are part of its
settings (:class:`~tunnelmesh_s3.auth.BucketSettings`).

Limits, as S3: at most 10 tags on an object and 50 on a bucket; a key is 1 to 128 characters
and a value 0 to 256; keys are unique and may not start with ``aws:`` (AWS's own tags). Any
breach is ``InvalidTag`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, quote, urlencode

from tunnelmesh_s3.errors import S3Error
from tunnelmesh_s3.xmlio import document, element, parse_tagging

__all__ = [
    "HEADER",
    "MAX_BUCKET_TAGS",
    "MAX_OBJECT_TAGS",
    "Tags",
    "check",
    "decode",
    "encode",
    "from_document",
    "from_header",
    "to_document",
]

HEADER = "x-amz-tagging"
MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50
MAX_KEY = 128
MAX_VALUE = 256

Tags = list[tuple[str, str]]


def _invalid(message: str) -> S3Error:
    return S3Error("InvalidTag", message)


def check(tags: Sequence[tuple[str, str]], limit: int) -> Tags:
    """``tags`` checked against S3's limits, sorted by key.

    Raises:
        S3Error: InvalidTag naming the first limit broken.
    """
    if len(tags) > limit:
        kind = "Object" if limit == MAX_OBJECT_TAGS else "Bucket"
        raise _invalid(f"{kind} tags cannot be greater than {limit}")
    seen: set[str] = set()
    for key, value in tags:
        if not key:
            raise _invalid("The TagKey you have provided is invalid")
        if len(key) > MAX_KEY:
            raise _invalid(f"The TagKey you have provided is too long, max {MAX_KEY}")
        if len(value) > MAX_VALUE:
            raise _invalid(f"The TagValue you have provided is too long, max {MAX_VALUE}")
        if key.lower().startswith("aws:"):
            raise _invalid("Your TagKey cannot be prefixed with aws:")
        if key in seen:
            raise _invalid("Cannot provide multiple Tags with the same key")
        seen.add(key)
    return sorted(tags)


def encode(tags: Sequence[tuple[str, str]]) -> str:
    """The canonical stored form: URL-encoded ``key=value`` pairs, ``&``-joined."""
    return urlencode(list(tags), quote_via=quote, safe="")


def decode(stored: str | None) -> Tags:
    """Tags back from :func:`encode`'s form ("" or None: no tags)."""
    if not stored:
        return []
    return parse_qsl(stored, keep_blank_values=True)


def from_header(value: str, limit: int = MAX_OBJECT_TAGS) -> Tags:
    """The tags of an ``x-amz-tagging`` header (URL query form; ``key`` alone has value "").

    Raises:
        S3Error: InvalidArgument for text that is not UTF-8, InvalidTag past a limit.
    """
    try:
        pairs = parse_qsl(value, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise S3Error(
            "InvalidArgument", "The x-amz-tagging header must be URL-encoded UTF-8"
        ) from None
    return check(pairs, limit)


def from_document(body: bytes, limit: int) -> Tags:
    """The tags of a ``<Tagging><TagSet><Tag>...`` request document.

    Raises:
        S3Error: MalformedXML, InvalidTag.
    """
    return check(parse_tagging(body), limit)


def to_document(tags: Sequence[tuple[str, str]]) -> bytes:
    """The ``Tagging`` document of Get(Object|Bucket)Tagging."""
    return document(
        "Tagging",
        "<TagSet>"
        + "".join(f"<Tag>{element('Key', k)}{element('Value', v)}</Tag>" for k, v in tags)
        + "</TagSet>",
    )
