"""Metrics without services: the dashboard names only exported series, observations are
classified into fixed labels, a broken Redis never reaches a job, the exporter renders
histograms and guards /metrics."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from worker.broker import MAX_ENTRY_BYTES, Drop, screen
from worker.metrics import observe, series, store
from worker.metrics.exporter import GAUGES, basic_auth, stored_metrics
from worker.metrics.series import DropReason, Outcome, ThrottleKind

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "imagegen-dashboard.json"


def exported_names() -> set[str]:
    """Every series name ``/metrics`` can show, with the suffixes Prometheus stores."""
    names = set(GAUGES)
    for one in series.ALL.values():
        if one.histogram:
            names |= {f"{one.name}_bucket", f"{one.name}_sum", f"{one.name}_count"}
        else:
            names.add(f"{one.name}_total")
    return names


# --- the Grafana dashboard ------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_PROMQL_WORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group()
        after = text[match.end() :].lstrip()
        if word.lower() in _PROMQL_WORDS or after.startswith("("):
            continue  # a keyword or a function
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_metric_names_parser_sees_names_not_functions_or_labels() -> None:
    expr = 'histogram_quantile(0.5, sum by (le, endpoint) (rate(a_bucket{x="b c"}[5m]))) / b'
    assert metric_names(expr) == {"a_bucket", "b"}


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat", "table", "bargauge"}, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"


def test_dashboard_queries_name_only_exported_metrics() -> None:
    exported = exported_names()
    used: set[str] = set()
    for expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"{expr}: {sorted(names - exported)} not exported"
        used |= names
    # and the panels the operators asked for are all there
    wanted = {
        "imagegen_queue_backlog",
        "imagegen_queue_oldest_age_seconds",
        "imagegen_upstream_slots_used",
        "imagegen_upstream_slots_limit",
        "imagegen_upstream_requests_budget",
        "imagegen_upstream_request_duration_seconds_bucket",
        "imagegen_upstream_throttled_total",
        "imagegen_detection_lag_seconds_bucket",
        "imagegen_job_polls_count",
        "imagegen_jobs_ended_total",
        "imagegen_deliveries",
    }
    assert wanted <= used, sorted(wanted - used)


def test_every_series_has_help_and_the_prefix() -> None:
    for name, text in GAUGES.items():
        assert name.startswith("imagegen_") and text.strip(), name
    for one in series.ALL.values():
        assert one.name.startswith("imagegen_") and one.help.strip(), one.name
        assert not one.name.endswith("_total"), "counters get _total from the client library"
        if one.buckets is not None:
            assert list(one.buckets) == sorted(set(one.buckets)), one.name


# --- classifying observations --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.OK),
        (404, Outcome.CLIENT_ERROR),
        (429, Outcome.THROTTLED),
        (503, Outcome.SERVER_ERROR),
        (302, Outcome.OTHER),
    ],
)
def test_outcome_classes(status: int, outcome: Outcome) -> None:
    assert observe.outcome_of(status) is outcome


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"code": 429, "message": "Rate limit exceeded: too many requests"}, ThrottleKind.RATE),
        ({"code": 429, "message": "Concurrent limit exceeded: 3 tasks"}, ThrottleKind.CONCURRENCY),
        ({"code": 429, "message": "Slow down"}, ThrottleKind.UNKNOWN),
        ({"code": 429}, ThrottleKind.UNKNOWN),
        ([1, 2], ThrottleKind.UNKNOWN),
    ],
)
def test_throttle_kind_reads_the_upstream_category(body: object, kind: ThrottleKind) -> None:
    assert observe.throttle_kind(httpx.Response(429, json=body)) is kind


def test_throttle_kind_of_a_non_json_429() -> None:
    assert observe.throttle_kind(httpx.Response(429, content=b"<html>")) is ThrottleKind.UNKNOWN


@pytest.mark.parametrize(
    ("raw", "queue", "reason"),
    [
        (b"not json", "imagegen.requests", DropReason.NOT_AN_ENVELOPE),
        (b"[1]", "imagegen.requests", DropReason.NOT_AN_ENVELOPE),
        (b'{"headers": 3}', "imagegen.requests", DropReason.HEADERS),
        (b'{"headers": {"task": "evil", "id": "x"}}', "imagegen.requests", DropReason.WRONG_TASK),
        (b'{"headers": {"task": "imagegen.generate"}}', "imagegen.requests", DropReason.NO_TASK_ID),
        (b'{"headers": {"task": "x", "id": "y"}}', "imagegen.upstream", DropReason.WRONG_TASK),
        (b"x" * (MAX_ENTRY_BYTES + 1), "imagegen.requests", DropReason.OVERSIZED),
    ],
)
def test_drop_reasons_of_real_verdicts(raw: bytes, queue: str, reason: DropReason) -> None:
    verdict = screen(raw, queue, key=lambda: b"k" * 32)
    assert isinstance(verdict, Drop), verdict
    assert observe.drop_reason(verdict.reason) is reason


def test_label_values_are_known_words_only() -> None:
    assert store.label_value("submit") == "submit"
    assert store.label_value(Outcome.THROTTLED) == "429"
    for hostile in ("a,b=c", "x\ty", "é", "", "Bearer abc", "a" * 41):
        assert store.label_value(hostile) == "other"


# --- the Redis writer never reaches a job -------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_redis_that_does_not_answer_costs_a_job_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    clock = _Clock()
    writer = store.Writer(lambda: f"redis://127.0.0.1:{port}/0", clock=clock)
    calls: list[int] = []

    def build(pipe: Any) -> None:
        calls.append(1)
        store.add(pipe, series.SWEEPER_ACTIONS, ("expired",))

    caplog.set_level(logging.WARNING, logger="imagegen.metrics")
    started = time.perf_counter()
    writer.send(build)  # fails, swallowed
    assert time.perf_counter() - started < 2 * store.WRITE_TIMEOUT_SECONDS + 0.5
    writer.send(build)  # within the hold-off: not even tried
    assert len(calls) == 1
    clock.now += store.HOLD_OFF_SECONDS + 0.1
    writer.send(build)  # tried again, fails again, but no second warning within the minute
    assert len(calls) == 2
    warnings = [r for r in caplog.records if r.name == "imagegen.metrics"]
    assert len(warnings) == 1
    clock.now += store.WARN_EVERY_SECONDS
    writer.send(build)
    assert len([r for r in caplog.records if r.name == "imagegen.metrics"]) == 2


def test_an_error_inside_a_metrics_call_is_swallowed() -> None:
    writer = store.Writer(lambda: "redis://127.0.0.1:1/0")

    def broken(pipe: Any) -> None:
        raise ValueError("a defect in a metric")

    writer.send(broken)  # no exception


def test_upstream_call_passes_the_answer_and_the_exception_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, str, ThrottleKind | None]] = []
    monkeypatch.setattr(observe, "_upstream", lambda e, o, s, k: seen.append((e.value, o.value, k)))
    response = httpx.Response(429, json={"message": "Concurrent limit exceeded: 3"})
    assert observe.upstream_call(series.Endpoint.SUBMIT, lambda: response) is response

    def times_out() -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    def refused() -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ReadTimeout):
        observe.upstream_call(series.Endpoint.TASK, times_out)
    with pytest.raises(httpx.ConnectError):
        observe.upstream_call(series.Endpoint.TASK, refused)
    assert seen == [
        ("submit", "429", ThrottleKind.CONCURRENCY),
        ("task", "timeout", None),
        ("task", "network", None),
    ]


# --- the exporter ------------------------------------------------------------------------------


class _Fixed(Collector):
    def __init__(self, stored: store.Stored) -> None:
        self._stored = stored

    def collect(self) -> Iterable[Any]:
        return stored_metrics(self._stored)


def test_histograms_render_cumulative_buckets() -> None:
    lag = series.DETECTION_LAG
    assert lag.buckets is not None
    buckets = [0] * (len(lag.buckets) + 1)
    buckets[0], buckets[2], buckets[-1] = 2, 3, 1  # <=0.05: 2, <=0.25: 3, over 60: 1
    stored = store.Stored(
        counters={series.UPSTREAM_429.name: {("submit", "rate"): 4.0}},
        histograms={lag.name: {(): store.Histogram(buckets, sum=70.5, count=6)}},
    )
    registry = CollectorRegistry()
    registry.register(_Fixed(stored))
    text = generate_latest(registry).decode()

    assert 'imagegen_detection_lag_seconds_bucket{le="0.05"} 2.0' in text
    assert 'imagegen_detection_lag_seconds_bucket{le="0.1"} 2.0' in text
    assert 'imagegen_detection_lag_seconds_bucket{le="0.25"} 5.0' in text
    assert 'imagegen_detection_lag_seconds_bucket{le="60.0"} 5.0' in text
    assert 'imagegen_detection_lag_seconds_bucket{le="+Inf"} 6.0' in text
    assert "imagegen_detection_lag_seconds_count 6.0" in text
    assert "imagegen_detection_lag_seconds_sum 70.5" in text
    assert 'imagegen_upstream_throttled_total{endpoint="submit",kind="rate"} 4.0' in text
    assert "# HELP imagegen_job_polls " in text  # every series is announced, even empty


def _call(app: Callable[..., Iterable[bytes]], authorization: str | None) -> str:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    status: list[str] = []
    b"".join(app(environ, lambda s, headers: status.append(s)))
    return status[0]


def test_basic_auth_guards_metrics() -> None:
    def ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [b"metrics"]

    guarded = basic_auth(ok, "prom:s3cret")
    good = "Basic " + base64.b64encode(b"prom:s3cret").decode()
    assert _call(guarded, good).startswith("200")
    assert _call(guarded, None).startswith("401")
    assert _call(guarded, "Basic " + base64.b64encode(b"prom:wrong").decode()).startswith("401")
    assert _call(guarded, "Basic !!notbase64").startswith("401")
    assert _call(guarded, "Bearer prom:s3cret").startswith("401")
    assert basic_auth(ok, None) is ok


def test_the_upstream_client_reports_each_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import SecretStr

    from worker.upstream.client import ModellixClient, RetryableError

    seen: list[tuple[str, str, ThrottleKind | None]] = []
    monkeypatch.setattr(observe, "_upstream", lambda e, o, s, k: seen.append((e.value, o.value, k)))

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = {"code": 429, "message": "Concurrent limit exceeded: 3 tasks running"}
            return httpx.Response(429, json=body, headers={"Retry-After": "1"})
        raise httpx.ReadTimeout("slow", request=request)

    client = ModellixClient(
        "http://upstream.test", SecretStr("k" * 32), transport=httpx.MockTransport(answer)
    )
    with pytest.raises(RetryableError):
        client.submit({"prompt": "x"})
    with pytest.raises(RetryableError):
        client.get_task("task-1")
    assert seen == [("submit", "429", ThrottleKind.CONCURRENCY), ("task", "timeout", None)]


def test_the_exporter_refuses_another_address_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from worker.cli import app
    from worker.config import get_settings

    monkeypatch.delenv("IMAGEGEN_METRICS_BASIC_AUTH", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["metrics", "--host", "0.0.0.0", "--port", "1"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "IMAGEGEN_METRICS_BASIC_AUTH" in result.output
