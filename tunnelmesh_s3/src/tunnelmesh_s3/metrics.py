"""S3 request counts on the process's /metrics (docs/metrics.md).

The app counts each request once, by operation (the name of the handler that served it, a
fixed set: ``get_object``, ``put_object``, ``list_buckets``, ...; ``admin`` for the admin API,
``unrouted`` for requests refused before an operation was chosen, such as a bad signature) and
HTTP status. While an app runs, its counts are served on every metrics server of the process
(the coordinator's, with ``s3:`` on a coordinator)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunnelmesh.metrics import Family, FamilyCollector

__all__ = ["DavCollector", "S3Collector", "S3Stats"]


class S3Stats:
    """Requests by (operation, status); one dict update per request."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}

    def count(self, operation: str, status: int) -> None:
        key = (operation, status)
        self.requests[key] = self.requests.get(key, 0) + 1


class S3Collector(FamilyCollector):
    """Reads an :class:`S3Stats`."""

    FAMILIES = (
        Family(
            "tunnelmesh_s3_requests_total",
            "counter",
            "S3 requests by operation and HTTP status.",
            ("operation", "status"),
        ),
    )

    def __init__(self, stats: S3Stats) -> None:
        self.stats = stats

    def samples(self) -> Iterable[Any]:
        m = self.family("tunnelmesh_s3_requests_total")
        for (op, status), n in sorted(self.stats.requests.items()):
            m.add_metric([op, str(status)], n)
        yield m


class DavCollector(FamilyCollector):
    """Reads the WebDAV service's :class:`S3Stats` (counts by method and status)."""

    FAMILIES = (
        Family(
            "tunnelmesh_dav_requests_total",
            "counter",
            "WebDAV requests by method (other: a method WebDAV does not have) and HTTP status.",
            ("method", "status"),
        ),
    )

    def __init__(self, stats: S3Stats) -> None:
        self.stats = stats

    def samples(self) -> Iterable[Any]:
        m = self.family("tunnelmesh_dav_requests_total")
        for (method, status), n in sorted(self.stats.requests.items()):
            m.add_metric([method, str(status)], n)
        yield m
