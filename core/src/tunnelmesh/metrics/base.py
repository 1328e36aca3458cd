"""Declared metric families, collectors that read existing counters, and the /metrics server.

Nothing here counts anything: the data plane, the filter, the DNS resolver, the control client
and the coordinator keep their counters as before, and a collector reads them when Prometheus
scrapes (no per-packet work). Every family a collector may emit is declared in its
``FAMILIES`` (name, type, help, label names); :meth:`FamilyCollector.family` refuses an
undeclared one, and a test checks that docs/metrics.md documents every declared family.

Plugins with counters of their own (S3, proxy, relay hub) add a collector for the life of their
service with :func:`add_collector` / :func:`remove_collector`; every metrics server of the
process serves them too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from tunnelmesh.control.urls import split_hostport
from tunnelmesh.errors import ConfigError

__all__ = [
    "Family",
    "FamilyCollector",
    "MetricsServer",
    "add_collector",
    "exposition",
    "remove_collector",
]

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "summary", "histogram"]


@dataclass(frozen=True)
class Family:
    """One metric family: its name (counters end in ``_total``), kind, help and labels."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


class FamilyCollector:
    """A collector whose families are declared in ``FAMILIES``; subclasses implement
    :meth:`samples` and build each family with :meth:`family`."""

    FAMILIES: ClassVar[tuple[Family, ...]] = ()

    @classmethod
    def declared(cls) -> dict[str, Family]:
        return {f.name: f for f in cls.FAMILIES}

    def family(self, name: str) -> Any:
        """An empty family of a declared name (KeyError for an undeclared one)."""
        f = self.declared()[name]
        labels = list(f.labels)
        if f.kind == "counter":
            return CounterMetricFamily(f.name.removesuffix("_total"), f.help, labels=labels)
        if f.kind == "gauge":
            return GaugeMetricFamily(f.name, f.help, labels=labels)
        if f.kind == "histogram":
            return HistogramMetricFamily(f.name, f.help, labels=labels)
        return SummaryMetricFamily(f.name, f.help, labels=labels)

    def samples(self) -> Iterable[Metric]:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self.samples()
        except Exception:  # a scrape must not take the node down; say why and serve the rest
            log.exception("metrics collector %s failed", type(self).__name__)

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration (the objects may not be running yet)


_extra: list[Collector] = []
_extra_lock = threading.Lock()


def add_collector(collector: Collector) -> None:
    """Serve ``collector`` on every metrics server of this process (plugins' services)."""
    with _extra_lock:
        if collector not in _extra:
            _extra.append(collector)


def remove_collector(collector: Collector) -> None:
    with _extra_lock:
        if collector in _extra:
            _extra.remove(collector)


class _Extra:
    def collect(self) -> Iterator[Metric]:
        with _extra_lock:
            collectors = list(_extra)
        for c in collectors:
            yield from c.collect()

    def describe(self) -> list[Metric]:
        return []


def exposition(*collectors: Any, extra: bool = True) -> bytes:
    """The text exposition (format 0.0.4, what Prometheus 2 reads) of ``collectors`` (and the
    plugins' ones)."""
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    if extra:
        registry.register(_Extra())
    return generate_latest(registry)


class MetricsServer:
    """``GET /metrics`` on ``listen`` (HTTP), serving ``collectors`` and the plugins' ones.

    Args:
        collectors: what to serve.
        listen: ``host:port`` (or ``host``: ``default_port``).

    Raises:
        ConfigError: a bad ``listen``.
    """

    def __init__(self, *collectors: Any, listen: str, default_port: int = 0) -> None:
        self.collectors = collectors
        try:
            self.host, self.port = split_hostport(listen, default_port)
        except ConfigError as exc:
            raise ConfigError(f"metrics.listen: {exc}") from None
        self._runner: Any = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Listen (raises OSError when the address cannot be bound)."""
        from aiohttp import web

        async def metrics(request: web.Request) -> web.Response:
            body = exposition(*self.collectors)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
