"""What the object handlers (:mod:`.objects`, :mod:`.multipart`) read from a request and write
into a response: the metadata and headers an object keeps, the headers it is answered with,
conditional requests (``If-*``, and on writes, checked again at the commit), ranges and part
numbers of a GET, the copy source, and the body as a verified :class:`~tunnelmesh_s3.body.Body`.
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Callable, Mapping
from urllib.parse import unquote

from multidict import CIMultiDict
from tunnelmesh.abc import ObjectInfo
from tunnelmesh.errors import NoSuchKey
from tunnelmesh.storage import check_key

from tunnelmesh_s3 import tagging
from tunnelmesh_s3.body import CHECKSUM_ALGORITHMS, Body
from tunnelmesh_s3.call import MAX_OBJECT_SIZE, Call
from tunnelmesh_s3.errors import S3Error

__all__ = ["DEFAULT_TYPE", "stored_headers", "user_metadata"]

STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)
DEFAULT_TYPE = "binary/octet-stream"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name.lower()[len("x-amz-meta-") :]: value
        for name, value in headers.items()
        if name.lower().startswith("x-amz-meta-")
    }


def _without_aws_chunked(value: str) -> str:
    """A Content-Encoding without its ``aws-chunked`` coding (how this request was framed, not
    how the object is encoded); every other byte kept as sent (metadata round-trips exactly)."""
    codings = value.split(",")
    if all(c.strip().lower() != "aws-chunked" for c in codings):
        return value
    return ",".join(c for c in codings if c.strip().lower() != "aws-chunked").strip()


def stored_headers(headers: Mapping[str, str], *, tags: bool = True) -> dict[str, str]:
    """The request headers an object keeps; with ``tags``, its ``x-amz-tagging`` (checked,
    in canonical form)."""
    out = {}
    value = headers.get(tagging.HEADER) if tags else None
    if value is not None and (parsed := tagging.from_header(value)):
        out[tagging.HEADER] = tagging.encode(parsed)
    for name in STORED_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            value = _without_aws_chunked(value)
            if not value:
                continue
        out[name] = value
    return out


def _object_headers(info: ObjectInfo, checksums: bool = False) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    headers["ETag"] = f'"{info.etag}"'
    headers["Last-Modified"] = http_date(info.last_modified)
    headers["Content-Type"] = info.content_type
    headers["Accept-Ranges"] = "bytes"
    for name, value in info.headers.items():
        if name == tagging.HEADER:  # S3 tells how many tags, never what they are
            headers["x-amz-tagging-count"] = str(len(tagging.decode(value)))
        else:
            headers[name] = value
    for name, value in info.metadata.items():
        headers[f"x-amz-meta-{name}"] = value
    if info.parts:
        headers["x-amz-mp-parts-count"] = str(info.parts)
    if checksums:
        for alg, value in info.checksums.items():
            headers[f"x-amz-checksum-{alg}"] = value
    return headers


@functools.lru_cache(maxsize=256)
def _http_date_of(seconds: int) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def http_date(when: float) -> str:
    """An HTTP date (``Last-Modified``) of a Unix time (formatted once per second)."""
    return _http_date_of(int(when))


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/").strip('"') == etag:
            return True
    return False


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    parsed = email.utils.parsedate_tz(value)
    return None if parsed is None else float(email.utils.mktime_tz(parsed))


def _check_conditions(
    headers: Mapping[str, str], info: ObjectInfo, *, prefix: str = "", read: bool = True
) -> int | None:
    """The status a conditional request ends with (304 or 412), or None to go on."""
    modified = int(info.last_modified)
    if_match = headers.get(f"{prefix}if-match")
    if if_match is not None:
        if not _etag_matches(if_match, info.etag):
            return 412
    elif (
        since := _http_date(headers.get(f"{prefix}if-unmodified-since"))
    ) is not None and modified > since:
        return 412
    if_none = headers.get(f"{prefix}if-none-match")
    if if_none is not None:
        if _etag_matches(if_none, info.etag):
            return 304 if read and not prefix else 412
    elif (
        since := _http_date(headers.get(f"{prefix}if-modified-since"))
    ) is not None and modified <= since:
        return 304 if read and not prefix else 412
    return None


def _span(call: Call, info: ObjectInfo) -> tuple[int, int] | None:
    """[start, end) that a GET or HEAD asks for: its ``partNumber`` or its ``Range``."""
    raw = call.params.get("partNumber")
    if raw is None:
        return _range(call.request.headers.get("Range"), info.size)
    if "Range" in call.request.headers:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000")
    number = int(raw)
    if not info.parts:  # stored in one piece: it is its own part 1
        if number != 1:
            raise S3Error("InvalidPart", "The requested partnumber is not satisfiable")
        return None
    if number > len(info.part_sizes):
        raise S3Error("InvalidPart", "The requested partnumber is not satisfiable")
    start = sum(info.part_sizes[: number - 1])
    return start, start + info.part_sizes[number - 1]


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a ``Range: bytes=`` header, None for the whole object.

    Raises:
        S3Error: InvalidRange when the range starts past the end.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or m.group(1) == m.group(2) == "":
        return None  # unparseable or multi-range: S3 sends the whole object
    first, last = m.group(1), m.group(2)
    if first == "":
        length = int(last)
        if length == 0:
            raise S3Error(
                "InvalidRange", "The requested range is not satisfiable", ActualObjectSize=str(size)
            )
        return max(size - length, 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or (last != "" and int(last) < start):
        raise S3Error(
            "InvalidRange", "The requested range is not satisfiable", ActualObjectSize=str(size)
        )
    return start, end


def _body(call: Call) -> Body:
    headers = call.request.headers
    if (
        call.request.content_length is None
        and "chunked" not in headers.get("Transfer-Encoding", "").lower()
        and call.verified.chunk_decoder() is None
    ):
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.")
    return Body(call.request, call.verified, max_size=MAX_OBJECT_SIZE)


def _copy_source(call: Call) -> tuple[str, str]:
    raw = call.request.headers["x-amz-copy-source"]
    source = unquote(raw.partition("?")[0]).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
        )
    try:
        check_key(key)
    except Exception as exc:
        raise S3Error("InvalidArgument", str(exc)) from None
    return bucket, key


def _checksum_headers(checksums: Mapping[str, str]) -> dict[str, str]:
    return {
        f"x-amz-checksum-{alg}": value
        for alg, value in checksums.items()
        if alg in CHECKSUM_ALGORITHMS
    }


def _put_condition(call: Call) -> Callable[[ObjectInfo | None], None] | None:
    """The check of a conditional PUT (``If-None-Match: *`` / ``If-Match``), or None."""
    headers = call.request.headers
    if_none, if_match = headers.get("If-None-Match"), headers.get("If-Match")
    if if_none is None and if_match is None:
        return None
    key = call.key

    def check(current: ObjectInfo | None) -> None:
        if (
            if_none is not None and current is not None and _etag_matches(if_none, current.etag)
        ) or (
            if_match is not None and (current is None or not _etag_matches(if_match, current.etag))
        ):
            if current is None:
                raise S3Error("NoSuchKey", "The specified key does not exist.", Key=key)
            raise S3Error(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
                Condition="If-None-Match" if if_none is not None else "If-Match",
            )

    return check


async def _write_condition(call: Call) -> Callable[[ObjectInfo | None], None] | None:
    """A conditional write's check (PutObject, CopyObject's destination), or None: checked now
    against the object there (refused before any data moves), and returned to be checked again
    atomically with the commit (:func:`_conflict`)."""
    condition = _put_condition(call)
    if condition is None:
        return None
    try:
        current: ObjectInfo | None = await call.storage.head_object(call.bucket, call.key)
    except NoSuchKey:
        current = None
    condition(current)
    return _conflict(condition)


def _conflict(check: Callable[[ObjectInfo | None], None]) -> Callable[[ObjectInfo | None], None]:
    """A condition that held when the request began, checked again at the commit: failing
    there, another write came in meanwhile, which S3 answers 409 ConditionalRequestConflict
    (retry the request)."""

    def at_commit(current: ObjectInfo | None) -> None:
        try:
            check(current)
        except S3Error:
            raise S3Error(
                "ConditionalRequestConflict",
                "The conditional request cannot succeed due to a conflicting operation against "
                "this resource.",
                Key=current.key if current is not None else "",
            ) from None

    return at_commit
