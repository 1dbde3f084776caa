"""The Prometheus exporter (``imagegen metrics``): ``/metrics`` renders, at scrape time, the
snapshot gauges (``snapshot``) and the series every worker added into Redis (``store``).

Protected twice: it binds 127.0.0.1 unless told otherwise (IMAGEGEN_METRICS_HOST, its own
port IMAGEGEN_METRICS_PORT), and with IMAGEGEN_METRICS_BASIC_AUTH (``user:password``) every
request must carry those credentials; binding another address without them is refused.
Nothing it exports carries a job's or the upstream's text: labels are fixed enums.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from . import series, store
from .series import PREFIX
from .snapshot import Reader, Snapshot

log = logging.getLogger("imagegen.metrics")

#: The snapshot gauges, defined once: name -> HELP (labels are given where they are built).
GAUGES: Final = {
    f"{PREFIX}jobs": "Jobs not finished, by status (queued, submitting, pending, processing).",
    f"{PREFIX}queue_backlog": "Jobs queued, waiting for an upstream slot.",
    f"{PREFIX}queue_oldest_age_seconds": "Age of the oldest queued job (0 when none).",
    f"{PREFIX}upstream_slots_used": "Jobs holding an upstream concurrency slot "
    "(submitting, pending, processing).",
    f"{PREFIX}upstream_slots_limit": "The team's upstream concurrency limit "
    "(IMAGEGEN_UPSTREAM_CONCURRENCY).",
    f"{PREFIX}upstream_in_flight": "Upstream tasks running (jobs pending or processing).",
    f"{PREFIX}jobs_overdue": "Live jobs whose next step (next_check_at) is in the past.",
    f"{PREFIX}oldest_overdue_seconds": "How late the most overdue live job's next step is "
    "(0 when none).",
    f"{PREFIX}deliveries": "Deliveries of job ends, by state (pending, dead).",
    f"{PREFIX}upstream_requests_window": "Upstream requests counted by the shared limiter in "
    "its current window (about 60 s).",
    f"{PREFIX}upstream_requests_budget": "Upstream requests allowed per minute "
    "(IMAGEGEN_UPSTREAM_RPM; 0: unlimited).",
    f"{PREFIX}upstream_paused_seconds": "Seconds left of a pause the upstream asked for.",
    f"{PREFIX}snapshot_ok": "1 when this scrape could read the database and Redis, else 0.",
    f"{PREFIX}snapshot_duration_seconds": "Time this scrape took to read the snapshot.",
}


def _gauge(name: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, GAUGES[name], labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def snapshot_metrics(snap: Snapshot) -> Iterator[Metric]:
    """The gauges of one snapshot."""
    jobs = GaugeMetricFamily(f"{PREFIX}jobs", GAUGES[f"{PREFIX}jobs"], labels=["status"])
    for status, n in snap.jobs.by_status.items():
        jobs.add_metric([status.value], n)
    yield jobs
    yield _gauge(f"{PREFIX}queue_backlog", snap.jobs.backlog)
    yield _gauge(f"{PREFIX}queue_oldest_age_seconds", snap.jobs.oldest_queued_age_seconds or 0.0)
    yield _gauge(f"{PREFIX}upstream_slots_used", snap.jobs.slots_used)
    yield _gauge(f"{PREFIX}upstream_slots_limit", snap.slots_limit)
    yield _gauge(f"{PREFIX}upstream_in_flight", snap.jobs.in_flight)
    yield _gauge(f"{PREFIX}jobs_overdue", snap.overdue.count)
    oldest = snap.overdue.oldest
    yield _gauge(f"{PREFIX}oldest_overdue_seconds", oldest.late_seconds if oldest else 0.0)
    deliveries = GaugeMetricFamily(
        f"{PREFIX}deliveries", GAUGES[f"{PREFIX}deliveries"], labels=["state"]
    )
    deliveries.add_metric(["pending"], snap.deliveries.pending)
    deliveries.add_metric(["dead"], snap.deliveries.dead)
    yield deliveries
    if snap.requests is not None:
        yield _gauge(f"{PREFIX}upstream_requests_window", snap.requests.used)
        yield _gauge(f"{PREFIX}upstream_requests_budget", snap.requests.budget)
        yield _gauge(f"{PREFIX}upstream_paused_seconds", snap.requests.paused_seconds)


def stored_metrics(stored: store.Stored) -> Iterator[Metric]:
    """The workers' series, every known one (an empty family when nothing was recorded)."""
    for one in series.ALL.values():
        labels = list(one.labels)
        if one.buckets is None:
            counter = CounterMetricFamily(one.name, one.help, labels=labels)
            for values, n in sorted(stored.counters.get(one.name, {}).items()):
                counter.add_metric(list(values), n)
            yield counter
            continue
        histogram = HistogramMetricFamily(one.name, one.help, labels=labels)
        bounds = [*(repr(float(b)) for b in one.buckets), "+Inf"]
        for values, h in sorted(stored.histograms.get(one.name, {}).items()):
            cumulative, running = [], 0
            for bound, n in zip(bounds, h.buckets, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            histogram.add_metric(list(values), cumulative, h.sum)
        yield histogram


class ImagegenCollector(Collector):
    """Renders the snapshot and the Redis-aggregated series at each scrape."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader

    def collect(self) -> Iterable[Metric]:
        """Everything ``/metrics`` shows; a part that cannot be read is left out and
        ``imagegen_snapshot_ok`` is 0 (the scrape itself still answers)."""
        started = time.perf_counter()
        ok = 1.0
        try:
            snap = self._reader.take()
            if snap.requests is None:  # the database answered, Redis did not
                ok = 0.0
            yield from snapshot_metrics(snap)
        except Exception as exc:  # noqa: BLE001 - a scrape answers whatever it can read
            ok = 0.0
            log.warning("snapshot failed: %s", type(exc).__name__)
        try:
            yield from stored_metrics(store.read(self._reader.redis, series.ALL))
        except RedisError as exc:
            ok = 0.0
            log.warning("reading the workers' series failed: %s", type(exc).__name__)
        yield _gauge(f"{PREFIX}snapshot_ok", ok)
        yield _gauge(f"{PREFIX}snapshot_duration_seconds", time.perf_counter() - started)


def registry_for(reader: Reader) -> CollectorRegistry:
    """A registry with only this service's series (no process metrics of the exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ImagegenCollector(reader))
    return registry


Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def basic_auth(app: Wsgi, credentials: str | None) -> Wsgi:
    """``app`` behind HTTP basic auth (``user:password``); ``app`` itself when None."""
    if credentials is None:
        return app
    expected = credentials.encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        if scheme.lower() == "basic" and hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="imagegen metrics"'), ("Content-Length", "0")],
        )
        return [b""]

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the log."""


def serve(reader: Reader, host: str, port: int, credentials: str | None) -> None:
    """Serve ``/metrics`` until interrupted (one thread per request)."""
    app = basic_auth(make_wsgi_app(registry_for(reader)), credentials)
    httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    log.info("metrics on http://%s:%d/metrics", host, port)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
