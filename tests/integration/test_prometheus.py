"""Metrics end to end: a real Prometheus scrapes ``imagegen metrics``, and ``imagegen top``
reads the same snapshot, against a stack in a known state built by a real worker.

The state: two jobs succeeded, one refused as invalid_request and one garbage entry dropped
(real worker traffic: submits, polls, ends); then the simulator holds its tasks, so three
jobs hold the three upstream slots and four wait queued; the worker is stopped so nothing
moves; one pending job is made an hour overdue, and two deliveries are recorded (one
pending, one dead). Prometheus is Debian's own binary (``make tools`` installs it), run with
a temporary configuration and storage on free ports, never the package's service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.procs import Proc, free_port, imagegen_argv
from tests.harness import API_KEY, Stack, request

METRICS_USER = "prometheus"
METRICS_PASSWORD = "scrape-Pw.not_real~0123"
#: Settings every process of this module shares (the worker's, the exporter's, top's).
ENV = {
    "IMAGEGEN_UPSTREAM_CONCURRENCY": "3",
    "IMAGEGEN_UPSTREAM_RPM": "1000",  # the limiter on, so requests are counted
    "IMAGEGEN_METRICS_BASIC_AUTH": f"{METRICS_USER}:{METRICS_PASSWORD}",
    # a known, still state: no queued job admitted as a slot probe when the workers stop
    "IMAGEGEN_SLOT_PROBES": "false",
    "COLUMNS": "200",
}
HELD, QUEUED = 3, 4


@dataclass
class Known:
    """The state the module built, and the exporter serving it."""

    stack: Stack
    metrics_url: str
    exporter: Proc
    built_at: float  # Unix time once the state was complete
    overdue_job: str
    succeeded: int
    submits: int  # POSTs the simulator accepted
    polls: int  # task queries the simulator answered


def _count(stack: Stack, where: str) -> int:
    return int(stack.sql(f"SELECT count(*) FROM jobs WHERE {where}")[0][0])  # noqa: S608


@pytest.fixture(scope="module")
def known(stack: Stack) -> Iterator[Known]:
    stack.clean()
    stack.start_worker("m1", **ENV)
    # real traffic first: two jobs end to end, one invalid request, one garbage entry
    done = [stack.send(request()) for _ in range(2)]
    invalid = stack.send({"prompt": ""})
    stack.redis().lpush("imagegen.requests", b"this is not a message envelope")
    stack.wait_ended([*done, invalid])
    stack.wait_for(lambda: _count_dropped(stack) == 1, 30, "the garbage entry recorded as dropped")
    # then the upstream holds every task: three slots held, the rest queued
    stack.sim_configure(pending_seconds=600, processing_seconds=600)
    for _ in range(HELD + QUEUED):
        stack.send(request())
    stack.wait_for(
        lambda: (
            _count(stack, "status = 'pending'") == HELD
            and _count(stack, "status = 'queued'") == QUEUED
        ),
        30,
        "three jobs pending upstream and four queued",
    )
    stack.stop_workers()  # nothing moves from here on
    # a job upstream whose next poll went missing (a queued job waits for a slot, not a step)
    overdue_job = stack.sql("SELECT id FROM jobs WHERE status = 'pending' LIMIT 1")[0][0]
    stack.sql(
        "UPDATE jobs SET next_check_at = now() - interval '1 hour' WHERE id = :j", j=overdue_job
    )
    for state in ("pending", "dead"):
        stack.sql(
            "INSERT INTO job_deliveries (id, job_id, channel, target, state, next_attempt_at) "
            "VALUES (:id, :job, 'webhook', '{}'::jsonb, :state, now() + interval '1 hour')",
            id=str(uuid.uuid4()),
            job=done[0],
            state=state,
        )
    stats = stack.sim_stats()
    port = free_port()
    exporter = stack.sup.start(
        "metrics", imagegen_argv("metrics", "--port", str(port)), env=stack.env(**ENV)
    )
    url = f"http://127.0.0.1:{port}/metrics"
    stack.sup.wait_http(exporter, url, auth=(METRICS_USER, METRICS_PASSWORD))
    try:
        yield Known(
            stack=stack,
            metrics_url=url,
            exporter=exporter,
            built_at=time.time(),
            overdue_job=str(overdue_job),
            succeeded=len(done),
            submits=int(stats["submits_accepted"]),
            polls=int(stats["polls"]),
        )
    finally:
        exporter.stop()
        stack.clean()


def _count_dropped(stack: Stack) -> int:
    return int(stack.sql("SELECT count(*) FROM dropped_messages")[0][0])


# --- imagegen top ----------------------------------------------------------------------------


def _top(known: Known, *args: str) -> str:
    done = subprocess.run(
        imagegen_argv("top", *args),
        env={**os.environ, **known.stack.env(**ENV)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_top_json_reports_what_the_database_and_redis_hold(known: Known) -> None:
    snap = json.loads(_top(known, "--json"))

    assert snap["backlog"] == QUEUED == _count(known.stack, "status = 'queued'")
    assert snap["jobs"] == {"queued": QUEUED, "submitting": 0, "pending": HELD, "processing": 0}
    assert snap["slots"] == {"used": HELD, "limit": 3}
    assert snap["in_flight"] == HELD
    assert snap["oldest_queued_age_seconds"] > 0
    assert snap["overdue"]["oldest"]["job_id"] == known.overdue_job
    assert snap["overdue"]["oldest"]["late_seconds"] >= 3600
    assert snap["deliveries"] == {"pending": 1, "dead": 1}
    # every request the simulator saw took one token of the shared budget (all within 60 s)
    assert snap["requests"]["used"] == known.submits + known.polls
    assert snap["requests"]["budget"] == 1000
    assert snap["errors_last_hour"] == {"invalid_request": 1}


def test_top_once_prints_one_frame(known: Known) -> None:
    frame = _top(known, "--once")

    assert f"{QUEUED} queued" in frame
    assert f"{HELD} / 3" in frame
    assert known.overdue_job in frame
    assert "1 pending, 1 dead" in frame
    assert "invalid_request" in frame


# --- the exporter, scraped by Prometheus ----------------------------------------------------------


def test_metrics_need_the_credentials_and_never_show_the_key(known: Known) -> None:
    assert httpx.get(known.metrics_url, timeout=10).status_code == 401
    wrong = httpx.get(known.metrics_url, auth=(METRICS_USER, "wrong"), timeout=10)
    assert wrong.status_code == 401
    body = httpx.get(known.metrics_url, auth=(METRICS_USER, METRICS_PASSWORD), timeout=10).text
    assert "# HELP imagegen_queue_backlog " in body
    assert API_KEY not in body and METRICS_PASSWORD not in body


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus server binary is missing: `make tools` installs it")
    return binary


@pytest.fixture
def prometheus(known: Known, tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus scraping the exporter every second; its base URL."""
    exporter = known.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "imagegen",
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "basic_auth": {"username": METRICS_USER, "password": METRICS_PASSWORD},
                        "static_configs": [{"targets": [exporter]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    proc = known.stack.sup.start(
        "prometheus",
        [
            _prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        known.stack.sup.wait_http(proc, f"{url}/-/ready", timeout=30)
        yield url
    finally:
        proc.stop()


def _query(prometheus: str, promql: str) -> list[tuple[dict[str, str], float]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    body = answer.json()
    assert body["status"] == "success", body
    return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]


def _value(prometheus: str, promql: str) -> float:
    result = _query(prometheus, promql)
    assert len(result) == 1, f"{promql}: {result}"
    print(f"PROMQL {promql} => {result[0][1]:g}")  # shown with -s: what Prometheus answered
    return result[0][1]


def test_prometheus_scrapes_the_snapshot_and_the_workers_series(
    known: Known, prometheus: str
) -> None:
    # a scrape made after the state was complete (its samples carry the scrape's time)
    deadline = time.monotonic() + 30
    while not any(
        v > known.built_at for _, v in _query(prometheus, "timestamp(imagegen_snapshot_ok)")
    ):
        assert time.monotonic() < deadline, "no scrape of the exporter within 30 s"
        time.sleep(0.2)
    stack = known.stack

    assert _value(prometheus, 'up{job="imagegen"}') == 1
    assert _value(prometheus, "imagegen_snapshot_ok") == 1
    assert _value(prometheus, "imagegen_queue_backlog") == _count(stack, "status = 'queued'")
    assert _value(prometheus, "imagegen_upstream_slots_used") == _count(
        stack, "status IN ('submitting', 'pending', 'processing')"
    )
    assert _value(prometheus, "imagegen_upstream_slots_limit") == 3
    assert _value(prometheus, 'imagegen_jobs{status="pending"}') == HELD
    assert _value(prometheus, 'imagegen_deliveries{state="dead"}') == 1
    assert _value(prometheus, "imagegen_oldest_overdue_seconds") >= 3600

    # the workers' own observations, summed in Redis across processes
    submits = 'imagegen_upstream_request_duration_seconds_count{endpoint="submit",outcome="2xx"}'
    assert _value(prometheus, submits) == known.submits == known.succeeded + HELD
    assert (
        _value(prometheus, 'sum(imagegen_upstream_request_duration_seconds_count{endpoint="task"})')
        == known.polls
    )
    inf = submits.replace("_count{", '_bucket{le="+Inf",')
    assert _value(prometheus, inf) == known.submits
    assert _value(prometheus, "imagegen_job_polls_count") == known.succeeded
    assert _value(prometheus, "imagegen_detection_lag_seconds_count") == known.succeeded
    assert 0 < _value(prometheus, "imagegen_detection_lag_seconds_sum") < 10 * known.succeeded
    ended = 'imagegen_jobs_ended_total{status="succeeded",error_code="none"}'
    assert _value(prometheus, ended) == known.succeeded
    refused = 'imagegen_jobs_ended_total{status="failed",error_code="invalid_request"}'
    assert _value(prometheus, refused) == 1
    assert _value(prometheus, 'imagegen_messages_dropped_total{reason="not_an_envelope"}') == 1
    # a quantile Grafana would draw is computable from the buckets
    median = _value(
        prometheus,
        "histogram_quantile(0.5, sum by (le) (imagegen_upstream_request_duration_seconds_bucket))",
    )
    assert 0 < median <= 60


def test_every_dashboard_query_is_promql_prometheus_accepts(known: Known, prometheus: str) -> None:
    dashboard = Path(__file__).resolve().parents[2] / "deploy/grafana/imagegen-dashboard.json"
    panels = json.loads(dashboard.read_text())["panels"]
    exprs = [t["expr"] for panel in panels for t in panel["targets"]]
    assert exprs
    for expr in exprs:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        assert answer.status_code == 200, f"{expr}: {answer.text}"
        assert answer.json()["status"] == "success", expr
