"""Paging of the listings that storage returns whole: multipart uploads, parts and buckets.

Each listing has ONE ordering, a sort key per entry, and the same key is used both to sort the
entries and to resume after a marker: a page starts right after the marker's position in that
order, so that following the markers page after page yields every entry exactly once, whatever
the page size. (Listing uploads once sorted by initiation time but resumed by upload-id
comparison, and pages repeated or skipped uploads whenever one key had several.)

- Uploads: (key as UTF-8 bytes, upload ID). Storage backends make upload IDs that sort in
  initiation order (see :meth:`tunnelmesh.abc.Storage.create_multipart_upload`), so this is also
  AWS's order: by key, then by initiation time. A ``delimiter`` rolls keys up into common
  prefixes as in ListObjects.
- Parts: the part number.
- Buckets: the name (bucket names are ASCII).

The functions are pure: entries in, one page out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tunnelmesh.abc import BucketInfo, PartInfo, UploadInfo

__all__ = ["UploadPage", "page_buckets", "page_parts", "page_uploads", "upload_order"]


def upload_order(upload: UploadInfo) -> tuple[bytes, str]:
    """The sort key of an upload: its key in UTF-8 byte order (as S3 sorts keys), then its ID."""
    return upload.key.encode("utf-8"), upload.upload_id


def _rolled_up(key: str, prefix: str, delimiter: str) -> str | None:
    """The common prefix ``key`` rolls up into, or None when it is listed itself."""
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at < 0 else key[: at + len(delimiter)]


@dataclass
class UploadPage:
    """One page of ListMultipartUploads.

    Attributes:
        uploads: the uploads of the page, in :func:`upload_order`.
        prefixes: the common prefixes of the page, in order.
        truncated: more entries follow.
        next_key_marker, next_upload_id_marker: where the next page starts: the last upload's
            key and ID, or the last common prefix and "" when the page ends with one.
    """

    uploads: list[UploadInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_key_marker: str = ""
    next_upload_id_marker: str = ""


def page_uploads(
    uploads: Iterable[UploadInfo],
    *,
    prefix: str = "",
    delimiter: str = "",
    key_marker: str = "",
    upload_id_marker: str = "",
    max_uploads: int = 1000,
) -> UploadPage:
    """The page of ``uploads`` (any order) that follows the markers.

    As S3: without ``key_marker`` the listing starts at the beginning and ``upload_id_marker`` is
    ignored; with ``key_marker`` alone it starts after every upload of that key (or after every
    key under it, when it is a common prefix); with both it starts right after that exact
    (key, upload ID) pair in :func:`upload_order`.
    """
    raw_prefix = prefix.encode("utf-8")
    entries = sorted(
        (u for u in uploads if u.key.encode("utf-8").startswith(raw_prefix)), key=upload_order
    )
    page = UploadPage()
    if key_marker:
        raw_marker = key_marker.encode("utf-8")
        common = (
            _rolled_up(key_marker, prefix, delimiter) if key_marker.startswith(prefix) else None
        )
        if common == key_marker:
            # the marker is a common prefix: resume after every key under it
            entries = [
                u
                for u in entries
                if u.key.encode("utf-8") > raw_marker
                and not u.key.encode("utf-8").startswith(raw_marker)
            ]
        elif upload_id_marker:
            after = (raw_marker, upload_id_marker)
            entries = [u for u in entries if upload_order(u) > after]
        else:
            entries = [u for u in entries if u.key.encode("utf-8") > raw_marker]
    count = 0
    for upload in entries:
        common = _rolled_up(upload.key, prefix, delimiter)
        if common is not None and page.prefixes and page.prefixes[-1] == common:
            continue  # rolled up into the common prefix already on this page
        if count >= max_uploads:
            page.truncated = max_uploads > 0
            break
        count += 1
        if common is None:
            page.uploads.append(upload)
            page.next_key_marker, page.next_upload_id_marker = upload.key, upload.upload_id
        else:
            page.prefixes.append(common)
            page.next_key_marker, page.next_upload_id_marker = common, ""
    return page


def page_parts(
    parts: Iterable[PartInfo], *, marker: int = 0, max_parts: int = 1000
) -> tuple[list[PartInfo], bool]:
    """The parts (any order) numbered above ``marker``, at most ``max_parts``, and whether more
    follow. Ordered and resumed by part number."""
    after = sorted((p for p in parts if p.number > marker), key=lambda p: p.number)
    return after[:max_parts], len(after) > max_parts


def page_buckets(
    buckets: Sequence[BucketInfo], *, prefix: str = "", after: str = "", max_buckets: int
) -> tuple[list[BucketInfo], bool]:
    """The buckets (any order) under ``prefix`` named after ``after``, at most ``max_buckets``,
    and whether more follow. Ordered and resumed by name."""
    rest = sorted(
        (b for b in buckets if b.name.startswith(prefix) and b.name > after), key=lambda b: b.name
    )
    return rest[:max_buckets], len(rest) > max_buckets
