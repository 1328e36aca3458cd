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

__all__ = ["DavCollector", "NfsCollector", "S3Collector", "S3Stats"]


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


class NfsCollector(FamilyCollector):
    """Reads an NFS server's counts: calls by procedure and status
    (:attr:`tunnelmesh_s3.nfs.ops.NfsService.calls`) and connection events
    (:attr:`tunnelmesh_s3.nfs.server.NfsServer.counters`)."""

    FAMILIES = (
        Family(
            "tunnelmesh_nfs_calls_total",
            "counter",
            "NFSv3, MOUNT and PMAP calls by procedure (nfs_write, mount_mnt, ...) and status "
            "(ok, an NFS or MOUNT error such as acces, or an RPC one such as garbage_args).",
            ("procedure", "status"),
        ),
        Family(
            "tunnelmesh_nfs_connection_events_total",
            "counter",
            "NFS connections accepted, refused (too many open), broken (a malformed record "
            "stream: closed) and calls rejected at the RPC level (RPC version, credential).",
            ("event",),
        ),
    )

    def __init__(self, calls: dict[tuple[str, str], int], events: dict[str, int]) -> None:
        self.calls = calls
        self.events = events

    def samples(self) -> Iterable[Any]:
        m = self.family("tunnelmesh_nfs_calls_total")
        for (procedure, status), n in sorted(self.calls.items()):
            m.add_metric([procedure, status], n)
        yield m
        e = self.family("tunnelmesh_nfs_connection_events_total")
        for event, n in sorted(self.events.items()):
            e.add_metric([event], n)
        yield e
