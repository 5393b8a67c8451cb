"""Prometheus metrics of a build server, served over HTTP at ``/metrics``.

Every Prometheus object of the product lives here. The layers below know
nothing of Prometheus: the build service reports builds to a ``BuildObserver``
and keeps plain counts of its caches, the castore servicers count blob bytes
into a ``BlobTraffic``, and the call-counting interceptor reports each call's
end; this module turns those into metrics, reading counts and gauges when
scraped so that they are always current and cost nothing between scrapes.

Each ``ServerMetrics`` has a registry of its own rather than the process-wide
default one: tests start several servers in one process, and the default
registry refuses a second metric of the same name and would mix the servers'
counts. The process and platform collectors the default registry carries are
added to each registry explicitly, so a scrape still shows memory, CPU and
open descriptors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from builder.castore.hit_counts import HitCounts
from builder.errors import InvalidArgumentError, UnavailableError
from builder.executor.outcome import Outcome
from builder.executor.service import BuildService
from builder.server.blob_traffic import BlobTraffic

logger = logging.getLogger(__name__)

BUILD_SECONDS_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
)
"""From answers out of the result cache (milliseconds) to builds at the default
four-hour wall-time limit and past it, roughly two to three buckets a decade."""


class ServerMetrics:
    """The metrics of one server over its build service; a ``BuildObserver`` of it."""

    def __init__(
        self, builds: BuildService, near_caches: Mapping[str, HitCounts] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.traffic = BlobTraffic()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._started = Counter(
            "builder_builds_started",
            "Build calls that reached the build service, including those refused at once.",
            registry=self.registry,
        )
        self._finished = Counter(
            "builder_builds_finished",
            "Build calls that ended, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "builder_build_duration_seconds",
            "Time from a build call reaching the build service to its end, by outcome.",
            ["outcome"],
            buckets=BUILD_SECONDS_BUCKETS,
            registry=self.registry,
        )
        for outcome in Outcome:
            self._finished.labels(outcome.value)
            self._duration.labels(outcome.value)
        self._calls = Counter(
            "builder_grpc_calls",
            "gRPC calls that ended, by full method name and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        Gauge(
            "builder_build_queue_depth",
            "Admitted builds waiting for a job slot.",
            registry=self.registry,
        ).set_function(lambda: builds.queued)
        Gauge(
            "builder_job_slots_busy",
            "Job slots held by builds setting up their sandbox or running.",
            registry=self.registry,
        ).set_function(lambda: builds.busy_slots)
        Gauge(
            "builder_job_slots",
            "Job slots of the build service (--jobs).",
            registry=self.registry,
        ).set(builds.job_slots)
        self.registry.register(_CountsCollector(builds, self.traffic, near_caches or {}))
        builds.observe(self)

    def build_started(self) -> None:
        self._started.inc()

    def build_finished(self, outcome: Outcome, seconds: float) -> None:
        self._finished.labels(outcome.value).inc()
        self._duration.labels(outcome.value).observe(seconds)

    def call_ended(self, method: str, code: grpc.StatusCode) -> None:
        self._calls.labels(method, code.name).inc()


class _CountsCollector(Collector):
    """Counts the build service and the servicers keep themselves, read at each scrape."""

    def __init__(
        self, builds: BuildService, traffic: BlobTraffic, near_caches: Mapping[str, HitCounts]
    ) -> None:
        self._builds = builds
        self._traffic = traffic
        self._near_caches = near_caches

    def collect(self) -> Iterator[Metric]:
        traffic = self._traffic
        yield CounterMetricFamily(
            "builder_castore_received_bytes",
            "Blob bytes received by castore uploads (Put streams and batches).",
            value=traffic.received_bytes,
        )
        yield CounterMetricFamily(
            "builder_castore_sent_bytes",
            "Blob bytes sent by castore reads (Read streams and batches).",
            value=traffic.sent_bytes,
        )
        yield CounterMetricFamily(
            "builder_castore_blobs_stored",
            "Blob uploads that completed (Put streams and blobs of batches).",
            value=traffic.blobs_stored,
        )
        results = self._builds.result_cache_counts
        yield CounterMetricFamily(
            "builder_result_cache_hits",
            "Builds answered from the result cache.",
            value=results.hits,
        )
        yield CounterMetricFamily(
            "builder_result_cache_misses",
            "Builds the result cache could not answer (unknown, or outputs gone).",
            value=results.misses,
        )
        cache = self._builds.cache.stats()
        yield GaugeMetricFamily(
            "builder_materialisation_cache_bytes",
            "Bytes the materialisation cache holds on disk.",
            value=cache.bytes_used,
        )
        yield GaugeMetricFamily(
            "builder_materialisation_cache_max_bytes",
            "Bound of the materialisation cache (--cache-max-bytes).",
            value=cache.max_bytes,
        )
        yield CounterMetricFamily(
            "builder_materialisation_cache_hits",
            "Build inputs found materialised already.",
            value=cache.hits,
        )
        yield CounterMetricFamily(
            "builder_materialisation_cache_misses",
            "Build inputs that had to be materialised (or waited for another build's fill).",
            value=cache.misses,
        )
        if self._near_caches:
            hits = CounterMetricFamily(
                "builder_near_cache_hits",
                "Reads a near/far store answered from its near store (combined blobs, "
                "cache directories).",
                labels=["cache"],
            )
            misses = CounterMetricFamily(
                "builder_near_cache_misses",
                "Reads a near/far store had to send to its far store.",
                labels=["cache"],
            )
            for name, counts in self._near_caches.items():
                hits.add_metric([name], counts.hits)
                misses.add_metric([name], counts.misses)
            yield hits
            yield misses


@dataclass(frozen=True)
class MetricsAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_metrics_address(text: str) -> MetricsAddress:
    """``HOST:PORT`` as given to ``--metrics-listen``; ``[::1]:9100`` for IPv6, port 0 for any."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgumentError(
            f"--metrics-listen {text!r}: expected HOST:PORT with a port from 0 to 65535"
        )
    return MetricsAddress(host, int(port))


class MetricsServer:
    """``/metrics`` of ``metrics`` over HTTP on a thread of its own, until ``stop``."""

    def __init__(self, metrics: ServerMetrics, address: MetricsAddress) -> None:
        try:
            self._httpd: WSGIServer
            self._thread: threading.Thread
            self._httpd, self._thread = start_http_server(
                address.port, address.host, metrics.registry
            )
        except OSError as error:
            raise UnavailableError(f"--metrics-listen {address}: cannot listen: {error}") from error
        self.address = MetricsAddress(address.host, self._httpd.server_port)
        logger.info(
            "metrics on http://%s/metrics",
            self.address,
            extra={"metrics_address": str(self.address)},
        )

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
