"""Listings page exactly: the concatenated pages equal the full listing, with nothing twice.

Property tests (Hypothesis) per listing, against a model written from S3's rules: random keys
(shared prefixes, delimiters, non-ASCII, several uploads per key), random prefixes, delimiters
and start markers, and every page size from 1 up. The listing layer is tested directly (fast,
500 examples each); a smaller number of examples goes through the HTTP API with boto3, whose
markers and continuation tokens are the ones real clients follow.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tunnelmesh.abc import BucketInfo, ObjectInfo, PartInfo, UploadInfo
from tunnelmesh_s3.fsindex import Index
from tunnelmesh_s3.listing import page_buckets, page_parts, page_uploads
from tunnelmesh_s3.server import Running, ServerThread

AK, SK = "AKLISTTEST", "list-secret-for-tests"
LAYER = settings(max_examples=500, deadline=None)
HTTP = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Pieces that make keys collide on prefixes and delimiters, and sort differently in UTF-8 byte
# order than in UTF-16 order (U+FF61 against U+1F600) or as Latin-1 (U+00E9).
PIECES = ["a", "b", "/", "a/", "//", "-", "é", "\uff61", "\U0001f600", "ab", "~", "b-"]
keys = st.lists(st.sampled_from(PIECES), min_size=1, max_size=4).map("".join)
delimiters = st.sampled_from(["", "", "/", "-", "a", "é/", "//"])

Entry = tuple[str, str]
"""One line of a listing: ("key", key), ("upload", key + " " + id) or ("prefix", prefix)."""


def _rolled(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at < 0 else key[: at + len(delimiter)]


def model_keys(
    all_keys: Sequence[str], prefix: str, delimiter: str, after: str = ""
) -> list[Entry]:
    """S3's listing of ``all_keys``: UTF-8 byte order, rolled up, starting after ``after``."""
    after_prefix = after.startswith(prefix) and _rolled(after, prefix, delimiter) == after
    out: list[Entry] = []
    for key in sorted(set(all_keys), key=lambda k: k.encode("utf-8")):
        raw = key.encode("utf-8")
        if not key.startswith(prefix) or raw <= after.encode("utf-8"):
            continue
        if after and after_prefix and key.startswith(after):
            continue
        common = _rolled(key, prefix, delimiter)
        entry = ("key", key) if common is None else ("prefix", common)
        if not out or out[-1] != entry:
            out.append(entry)
    return out


def check_pages(pages: Sequence[tuple[list[Entry], bool]], size: int, model: list[Entry]) -> None:
    listed = [entry for entries, _ in pages for entry in entries]
    assert listed == model
    assert len(set(listed)) == len(listed)
    for i, (entries, truncated) in enumerate(pages):
        assert truncated == (i < len(pages) - 1)
        assert len(entries) == size if truncated else len(entries) <= size


# --- ListObjects: the SQLite index, v1 markers ---


@pytest.fixture(scope="module")
def index() -> Iterator[Index]:
    idx = Index(Path(":memory:"))
    yield idx
    idx.close()


_bucket_ids = itertools.count()


def _fill(index: Index, objects: Sequence[str]) -> str:
    bucket = f"bk{next(_bucket_ids)}"
    index.create_bucket(bucket)
    ops: list[Any] = [
        (index.put_object, (bucket, ObjectInfo(key=k, size=0, etag="e", last_modified=0), []))
        for k in set(objects)
    ]
    assert all(ok for ok, _ in index.batch(ops))
    return bucket


@LAYER
@given(
    objects=st.lists(keys, min_size=0, max_size=14),
    prefix=st.sampled_from(["", "a", "a/", "b", "é", "\uff61"]),
    delimiter=delimiters,
    start=st.one_of(st.just(""), keys),
)
def test_list_objects_pages_are_the_full_listing(
    index: Index, objects: list[str], prefix: str, delimiter: str, start: str
) -> None:
    bucket = _fill(index, objects)
    model = model_keys(objects, prefix, delimiter, start)
    for size in range(1, len(model) + 2):
        pages = []
        marker = start
        for _ in range(len(model) + 2):
            page = index.list_objects(bucket, prefix, delimiter, marker, size)
            entries = [("key", o.key) for o in page.objects] + [
                ("prefix", p) for p in page.prefixes
            ]
            entries.sort(key=lambda e: e[1].encode("utf-8"))
            pages.append((entries, page.truncated))
            if not page.truncated:
                break
            marker = page.next_marker
        check_pages(pages, size, model)


# --- ListMultipartUploads: the pager ---


def _uploads(plan: Sequence[str], suffixes: Sequence[str]) -> list[UploadInfo]:
    """One upload per entry of ``plan`` (keys repeat), IDs sorting in initiation order as
    backends make them; the random suffixes only break no ties."""
    return [
        UploadInfo(upload_id=f"{i:016x}{s}", bucket="b", key=key, initiated=float(i))
        for i, (key, s) in enumerate(zip(plan, suffixes, strict=False))
    ]


def model_uploads(uploads: Sequence[UploadInfo], prefix: str, delimiter: str) -> list[Entry]:
    """S3's order: by key (UTF-8 bytes), then initiation time; rolled up by the delimiter."""
    out: list[Entry] = []
    for u in sorted(uploads, key=lambda u: (u.key.encode("utf-8"), u.initiated)):
        if not u.key.startswith(prefix):
            continue
        common = _rolled(u.key, prefix, delimiter)
        entry = ("upload", f"{u.key} {u.upload_id}") if common is None else ("prefix", common)
        if not out or out[-1] != entry:
            out.append(entry)
    return out


def _upload_entries(uploads: Sequence[UploadInfo], prefixes: Sequence[str]) -> list[Entry]:
    entries = [("upload", f"{u.key} {u.upload_id}") for u in uploads]
    entries += [("prefix", p) for p in prefixes]
    # a page lists uploads and common prefixes apart: merge them back into listing order
    return sorted(entries, key=lambda e: e[1].split(" ")[0].encode("utf-8"))


@LAYER
@given(
    plan=st.lists(st.sampled_from(["u/a", "u/b", "v/c", "w", "u/é", "\U0001f600/x"]), max_size=12)
    | st.lists(keys, max_size=12),
    suffixes=st.lists(st.text("abcXYZ-_019", max_size=3), min_size=12, max_size=12),
    prefix=st.sampled_from(["", "u", "u/", "a", "\U0001f600"]),
    delimiter=delimiters,
    data=st.data(),
)
def test_list_uploads_pages_are_the_full_listing(
    plan: list[str],
    suffixes: list[str],
    prefix: str,
    delimiter: str,
    data: st.DataObject,
) -> None:
    uploads = _uploads(plan, suffixes)
    # storage order must not matter: the pager sorts with the same key it resumes with
    uploads = data.draw(st.permutations(uploads))
    model = model_uploads(uploads, prefix, delimiter)
    for size in range(1, len(model) + 2):
        pages = []
        key_marker = id_marker = ""
        for _ in range(len(model) + 2):
            page = page_uploads(
                uploads,
                prefix=prefix,
                delimiter=delimiter,
                key_marker=key_marker,
                upload_id_marker=id_marker,
                max_uploads=size,
            )
            pages.append((_upload_entries(page.uploads, page.prefixes), page.truncated))
            if not page.truncated:
                break
            key_marker, id_marker = page.next_key_marker, page.next_upload_id_marker
        check_pages(pages, size, model)


def test_list_uploads_key_marker_alone_skips_every_upload_of_that_key() -> None:
    uploads = _uploads(["k", "k", "l"], ["", "", ""])
    page = page_uploads(uploads, key_marker="k")
    assert [u.key for u in page.uploads] == ["l"]
    page = page_uploads(uploads, upload_id_marker=uploads[0].upload_id)  # ignored without key
    assert len(page.uploads) == 3


# --- ListParts and ListBuckets ---


@LAYER
@given(numbers=st.sets(st.integers(1, 10_000), max_size=20), data=st.data())
def test_list_parts_pages_are_the_full_listing(numbers: set[int], data: st.DataObject) -> None:
    parts = [PartInfo(number=n, size=n, etag="e", last_modified=0) for n in numbers]
    parts = data.draw(st.permutations(parts))
    model = [("part", str(n)) for n in sorted(numbers)]
    for size in range(1, len(model) + 2):
        pages = []
        marker = 0
        for _ in range(len(model) + 2):
            got, truncated = page_parts(parts, marker=marker, max_parts=size)
            pages.append(([("part", str(p.number)) for p in got], truncated))
            if not truncated:
                break
            marker = got[-1].number
        check_pages(pages, size, model)


bucket_names = st.lists(st.sampled_from(["a", "b", "0", "-", ".", "ab", "b0"]), max_size=4).map(
    lambda pieces: "a" + "".join(pieces) + "z"
)


@LAYER
@given(
    names=st.sets(bucket_names, max_size=15),
    prefix=st.sampled_from(["", "a", "ab", "a0", "a-"]),
    data=st.data(),
)
def test_list_buckets_pages_are_the_full_listing(
    names: set[str], prefix: str, data: st.DataObject
) -> None:
    buckets = data.draw(st.permutations([BucketInfo(name=n, created=0) for n in names]))
    model = [("bucket", n) for n in sorted(names) if n.startswith(prefix)]
    for size in range(1, len(model) + 2):
        pages = []
        after = ""
        for _ in range(len(model) + 2):
            got, truncated = page_buckets(buckets, prefix=prefix, after=after, max_buckets=size)
            pages.append(([("bucket", b.name) for b in got], truncated))
            if not truncated:
                break
            after = got[-1].name
        check_pages(pages, size, model)


# --- the same listings through the HTTP API, as boto3 pages them ---


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    thread = ServerThread(tmp_path_factory.mktemp("s3"), access_key=AK, secret_key=SK)
    with thread as running:
        yield _client(running)


def _client(running: Running) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=running.endpoint,
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, signature_version="s3v4"),
    )


def _new_bucket(s3: Any) -> str:
    name = f"list-{next(_bucket_ids)}"
    s3.create_bucket(Bucket=name)
    return name


@HTTP
@given(
    objects=st.lists(keys, max_size=8),
    prefix=st.sampled_from(["", "a", "a/", "é"]),
    delimiter=delimiters,
    size=st.integers(1, 9),
    v2=st.booleans(),
)
def test_http_list_objects_pages(
    s3: Any, objects: list[str], prefix: str, delimiter: str, size: int, v2: bool
) -> None:
    # (botocore asks for encoding-type=url itself and decodes keys, prefixes and markers)
    bucket = _new_bucket(s3)
    for key in set(objects):
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    model = model_keys(objects, prefix, delimiter)
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": delimiter}
    pages = []
    for _ in range(len(model) + 2):
        if v2:
            r = s3.list_objects_v2(MaxKeys=size, **args)
        else:
            r = s3.list_objects(MaxKeys=size, **args)
        entries = [("key", o["Key"]) for o in r.get("Contents", [])]
        entries += [("prefix", p["Prefix"]) for p in r.get("CommonPrefixes", [])]
        entries.sort(key=lambda e: e[1].encode("utf-8"))
        pages.append((entries, r["IsTruncated"]))
        if not r["IsTruncated"]:
            break
        if v2:
            args["ContinuationToken"] = r["NextContinuationToken"]
        else:
            args["Marker"] = r["NextMarker"]
    check_pages(pages, size, model)


@HTTP
@given(
    plan=st.lists(st.sampled_from(["u/a", "u/b", "v/c", "w", "u/é"]), max_size=8),
    prefix=st.sampled_from(["", "u", "u/"]),
    delimiter=st.sampled_from(["", "/"]),
    size=st.integers(1, 9),
)
def test_http_list_uploads_pages(
    s3: Any, plan: list[str], prefix: str, delimiter: str, size: int
) -> None:
    bucket = _new_bucket(s3)
    created = []
    for i, key in enumerate(plan):
        uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        created.append(UploadInfo(upload_id=uid, bucket=bucket, key=key, initiated=float(i)))
    model = model_uploads(created, prefix, delimiter)
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": delimiter}
    pages = []
    for _ in range(len(model) + 2):
        r = s3.list_multipart_uploads(MaxUploads=size, **args)
        entries = [("upload", f"{u['Key']} {u['UploadId']}") for u in r.get("Uploads", [])]
        entries += [("prefix", p["Prefix"]) for p in r.get("CommonPrefixes", [])]
        entries.sort(key=lambda e: e[1].split(" ")[0].encode("utf-8"))
        pages.append((entries, r["IsTruncated"]))
        if not r["IsTruncated"]:
            break
        args["KeyMarker"] = r["NextKeyMarker"]
        args["UploadIdMarker"] = r.get("NextUploadIdMarker", "")
    check_pages(pages, size, model)


def test_list_multipart_uploads_of_one_key_page_in_initiation_order_100_runs(s3: Any) -> None:
    """The reported case: uploads on u/a, u/a, u/b, v/c, w, paged two at a time."""
    bucket = _new_bucket(s3)
    for _ in range(100):
        created = [
            (key, s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
            for key in ("u/a", "u/a", "u/b", "v/c", "w")
        ]
        seen = []
        args: dict[str, Any] = {"Bucket": bucket, "MaxUploads": 2}
        while True:
            r = s3.list_multipart_uploads(**args)
            seen += [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]
            if not r["IsTruncated"]:
                break
            args["KeyMarker"] = r["NextKeyMarker"]
            args["UploadIdMarker"] = r["NextUploadIdMarker"]
        assert seen == created
        for key, uid in created:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)


def test_list_parts_pages(s3: Any) -> None:
    bucket = _new_bucket(s3)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    numbers = [7, 1, 10_000, 3, 2, 9]
    for n in numbers:
        s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=n, Body=b"x")
    for size in range(1, len(numbers) + 2):
        seen: list[int] = []
        marker = 0
        while True:
            r = s3.list_parts(
                Bucket=bucket, Key="k", UploadId=uid, MaxParts=size, PartNumberMarker=marker
            )
            seen += [p["PartNumber"] for p in r.get("Parts", [])]
            if not r["IsTruncated"]:
                break
            marker = r["NextPartNumberMarker"]
        assert seen == sorted(numbers)


def test_list_buckets_pages(s3: Any) -> None:
    for name in ("pg-c", "pg-a", "pg-b", "pg-d"):
        s3.create_bucket(Bucket=name)
    for size in range(1, 6):
        seen: list[str] = []
        args: dict[str, Any] = {"MaxBuckets": size, "Prefix": "pg-"}
        while True:
            r = s3.list_buckets(**args)
            seen += [b["Name"] for b in r["Buckets"]]
            if "ContinuationToken" not in r:
                break
            args["ContinuationToken"] = r["ContinuationToken"]
        assert seen == ["pg-a", "pg-b", "pg-c", "pg-d"]
    assert len(s3.list_buckets()["Buckets"]) >= 4  # no max-buckets: one page of all


def test_list_object_versions_pages_like_list_objects(s3: Any) -> None:
    """Buckets are never versioned: each object is its one version, "null", the latest."""
    bucket = _new_bucket(s3)
    objects = ["a", "b/1", "b/2", "c", "é/x", "é/y", "z"]
    for key in objects:
        s3.put_object(Bucket=bucket, Key=key, Body=b"v")
    for delimiter in ("", "/"):
        model = model_keys(objects, "", delimiter)
        for size in range(1, len(model) + 2):
            pages = []
            args: dict[str, Any] = {"Bucket": bucket, "Delimiter": delimiter, "MaxKeys": size}
            for _ in range(len(model) + 2):
                r = s3.list_object_versions(**args)
                assert all(
                    v["VersionId"] == "null" and v["IsLatest"] for v in r.get("Versions", [])
                )
                entries = [("key", v["Key"]) for v in r.get("Versions", [])]
                entries += [("prefix", p["Prefix"]) for p in r.get("CommonPrefixes", [])]
                entries.sort(key=lambda e: e[1].encode("utf-8"))
                pages.append((entries, r["IsTruncated"]))
                if not r["IsTruncated"]:
                    break
                args["KeyMarker"] = r["NextKeyMarker"]
                if "NextVersionIdMarker" in r:
                    args["VersionIdMarker"] = r["NextVersionIdMarker"]
            check_pages(pages, size, model)
