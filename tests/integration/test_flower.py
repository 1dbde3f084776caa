"""Flower tells the truth: a real worker and a real ``imagegen flower`` reading its events.

Jobs that fail on every path (an invalid request, a POST refused or with an unknown outcome,
a failed upstream task, a deadline, a copy that cannot be made) make exactly one task each
end in FAILURE, naming the job and its code; succeeded and cancelled jobs make none. Their
rows, events and deliveries are what they were before (nothing lost, nothing retried).
Task arguments are shown redacted, and ``/metrics`` asks for Flower's password.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest

from api_schema import ErrorCode, JobStatus, names
from devtools.procs import imagegen_argv
from tests.flower import Flower, running_flower, wait_value
from tests.harness import API_KEY, Stack, request, tiny_png

USER = "ops"
REPLY_QUEUE = "backend.results"
REPLY = {"task": "backend.job_done", "queue": REPLY_QUEUE}


@pytest.fixture
def flower(live: Stack) -> Iterator[Flower]:
    """``imagegen flower`` behind basic auth, once it hears the worker's events."""
    with running_flower(live, USER) as flower:

        def worker_seen() -> bool | None:
            data = flower.client.get("/workers", params={"json": 1}).json()["data"]
            return True if any(w["hostname"].startswith("w1@") for w in data) else None

        wait_value(worker_seen, 30, "Flower hearing the worker's events")
        yield flower


def _cancel(live: Stack, job_id: str) -> None:
    done = subprocess.run(
        imagegen_argv("cancel", job_id),
        env={**os.environ, **live.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _run_one(live: Stack, body: dict[str, Any], **sim: Any) -> str:
    """Send one job with the simulator configured so, and wait for its end: one job at a
    time, so no task ever POSTs another job than its own (which one would be a race)."""
    if sim:
        live.sim_configure(**sim)
    job_id = live.send({**body, "reply_to": REPLY})
    live.wait_ended([job_id], timeout=60)
    live.sim_reset()
    return job_id


def test_failed_jobs_are_failed_tasks_and_nothing_else_changes(live: Stack, flower: Flower) -> None:
    expected: dict[str, tuple[JobStatus, ErrorCode | None]] = {}

    def run(body: dict[str, Any], status: JobStatus, code: ErrorCode | None, **sim: Any) -> str:
        job_id = _run_one(live, body, **sim)
        expected[job_id] = (status, code)
        return job_id

    run(request(), JobStatus.SUCCEEDED, None)
    run(request(width=1000), JobStatus.FAILED, ErrorCode.INVALID_REQUEST)
    run(request(), JobStatus.FAILED, ErrorCode.UPSTREAM_REJECTED, faults={"submit_400": 1.0})
    unknown = run(
        request(),
        JobStatus.FAILED,
        ErrorCode.SUBMIT_OUTCOME_UNKNOWN,
        faults={"submit_500": 1.0},
    )
    # the upstream's words never reach the exception, whatever they quote
    upstream_failed = run(
        request(),
        JobStatus.FAILED,
        ErrorCode.UPSTREAM_FAILED,
        faults={"fail_task": 1.0, "fail_reason": f"refused for key {API_KEY}"},
    )
    deadline = run(
        request(deadline_seconds=2),
        JobStatus.FAILED,
        ErrorCode.DEADLINE_EXCEEDED,
        processing_seconds=60,
    )
    storage = _run_one(live, request(deadline_seconds=4), faults={"file_404": 1.0})
    # Copies are retried until the last retry before the deadline; that retry's poll can
    # still be claimed a few milliseconds past it (deadline_exceeded): either is a failed
    # job ended by a poll, which is what is checked here.
    copied = live.views([storage])[storage]
    assert copied is not None
    assert copied.error_code in (ErrorCode.STORAGE_FAILED, ErrorCode.DEADLINE_EXCEEDED)
    expected[storage] = (JobStatus.FAILED, copied.error_code)

    # A POST made by the submit task itself: three jobs hold the three slots, a fourth
    # waits; cancelling one frees a slot and the sweep it asks for admits the fourth,
    # whose submit message is refused upstream. The other two are cancelled (no failure).
    live.sim_configure(processing_seconds=60)
    holders = [live.send({**request(), "reply_to": REPLY}) for _ in range(3)]
    live.wait_for(
        lambda: all(
            v is not None and v.status.value == "pending" for v in live.views(holders).values()
        ),
        30,
        "three jobs upstream",
    )
    waiting = live.send({**request(), "reply_to": REPLY})
    # queued, or admitted as a slot probe that the upstream keeps refusing (back to queued
    # each time, for a few milliseconds): it waits either way
    live.wait_status(waiting, {"queued", "submitting"})
    live.sim_configure(faults={"submit_400": 1.0})
    _cancel(live, holders[0])
    live.wait_ended([waiting], timeout=30)
    for job_id in holders[1:]:
        _cancel(live, job_id)
    live.wait_ended(holders, timeout=30)
    expected[waiting] = (JobStatus.FAILED, ErrorCode.UPSTREAM_REJECTED)
    expected |= dict.fromkeys(holders, (JobStatus.CANCELLED, ErrorCode.CANCELLED))
    live.sim_reset()

    # --- the jobs are what they would have been -------------------------------------------
    views = live.views(expected)
    for job_id, (status, code) in expected.items():
        view = views[job_id]
        assert view is not None
        assert (view.status, view.error_code) == (status, code), (job_id, view.error_message)
    failed = {j for j, (status, _) in expected.items() if status is JobStatus.FAILED}
    assert len(failed) == 7

    # --- Flower: one FAILURE per failed job, naming it and its code ------------------------
    def settled() -> dict[str, dict[str, Any]] | None:
        tasks = flower.tasks()
        failures = [t for t in tasks.values() if t["state"] == "FAILURE"]
        busy = [t for t in tasks.values() if t["state"] in ("RECEIVED", "STARTED", "RETRY")]
        return tasks if len(failures) >= len(failed) and not busy else None

    tasks = wait_value(settled, 30, "Flower recording every failure")
    failures = {u: t for u, t in tasks.items() if t["state"] == "FAILURE"}
    assert len(failures) == len(failed), {u: t["exception"] for u, t in failures.items()}
    named: dict[str, str] = {}
    for task in failures.values():
        found = re.fullmatch(r"JobFailed\('job (\S+) failed: (\w+)'\)", task["exception"])
        assert found is not None, task["exception"]
        named[found.group(1)] = found.group(2)
        # no retry of the failure itself (a poll's retries are its chain of countdowns, and
        # a retried task would not be in FAILURE once nothing is in flight) ...
        if task["name"] != names.POLL_TASK:
            assert task["retries"] == 0
        for text in (task["exception"], task["traceback"] or ""):
            assert API_KEY not in text and "refused for key" not in text
    assert named == {j: cast(ErrorCode, expected[j][1]).value for j in failed}
    by_job = {re.findall(r"job (\S+) failed", t["exception"])[0]: t for t in failures.values()}
    # ... each on the step that ended it
    assert by_job[unknown]["name"] == names.GENERATE_TASK  # its POST was made inline
    assert by_job[waiting]["name"] == names.SUBMIT_TASK
    for job_id in (upstream_failed, deadline, storage):
        assert by_job[job_id]["name"] == names.POLL_TASK
        assert by_job[job_id]["args"].startswith(f"('{job_id}', ")  # (job id, poll number)
    # The generate task of a job whose failure came later succeeded (it queued the job).
    assert tasks[upstream_failed]["state"] == "SUCCESS"

    # --- nothing lost, nothing redone ----------------------------------------------------
    ended = [j for j, (status, _) in expected.items() if status.is_terminal]
    rows = live.sql(
        "SELECT job_id, count(*) FILTER (WHERE to_status IN ('failed', 'cancelled', 'succeeded')"
        " AND from_status IS DISTINCT FROM to_status)"  # not a note on an ended job
        " FROM job_events WHERE job_id = ANY(:ids) GROUP BY job_id",
        ids=ended,
    )
    assert {r[0]: r[1] for r in rows} == dict.fromkeys(ended, 1)  # each ended once
    # every end delivered: the outbox written with it and the reply message sent after the
    # task, failure or not
    live.wait_for(
        lambda: (
            live.sql(
                "SELECT count(*) FROM job_deliveries"
                " WHERE job_id = ANY(:ids) AND state = 'delivered'",
                ids=ended,
            )[0][0]
            == len(ended)
        ),
        30,
        "every delivery made",
    )
    assert live.redis().llen(REPLY_QUEUE) == len(ended)
    # one POST per job that reached the upstream: nothing sent twice
    prompts = [t["prompt"] for t in live.sim_tasks()]
    assert len(prompts) == len(set(prompts))
    # every message acked: none waits in a queue or in the unacked hash
    live.wait_for(
        lambda: (
            live.redis().hlen("unacked") == 0
            and all(live.redis().llen(q) == 0 for q in names.ALL_QUEUES)
        ),
        30,
        "every message acked",
    )
    log = live.workers[0].log_path.read_text(errors="replace")
    assert "raised expected: JobFailed" in log
    assert "Traceback" not in log


def test_task_arguments_are_redacted_summaries(live: Stack, flower: Flower) -> None:
    prompt = "An oil painting of a harbour at dusk with " + "very " * 20 + "secret words"
    image = tiny_png()
    body = request(
        prompt,
        subject_reference_images=[image, "https://cdn.example.com/face.jpg?sig=tok3n"],
        metadata={"ticket": "T-77-private", "customer": {"email": "someone@example.com"}},
        webhook={"url": "https://hooks.example.com/in?token=hooktoken"},
    )
    job_id = live.send(body)
    live.wait_ended([job_id])  # (how it ends does not matter here: what Flower shows does)

    def seen() -> dict[str, Any] | None:
        task = flower.tasks().get(job_id)
        return task if task is not None and task["state"] in ("SUCCESS", "FAILURE") else None

    task = wait_value(seen, 30, "Flower recording the generate task")
    pages = [
        flower.client.get("/api/tasks").text,
        flower.client.get(f"/api/task/info/{job_id}").text,
        flower.client.get(f"/task/{job_id}").text,
    ]
    raw_values = [
        prompt[40:],
        "secret words",
        image.split(",", 1)[1][:40],
        "sig=tok3n",
        "T-77-private",
        "someone@example.com",
        "hooktoken",
        "/in?",
    ]
    for page in pages:
        for value in raw_values:
            assert value not in page, value
    kwargs = task["kwargs"]
    assert f"'{prompt[:40]}…' ({len(prompt)} chars)" in kwargs
    assert re.search(r"<png \d+ B>", kwargs), kwargs
    assert "'https://cdn.example.com'" in kwargs
    assert "metadata: <keys: ticket, customer>" in kwargs
    assert "webhook: {url: 'https://hooks.example.com'}" in kwargs
    page = pages[2]
    assert "metadata: &lt;keys: ticket, customer&gt;" in page or "<keys: ticket" in page


def test_metrics_ask_for_the_password(live: Stack, flower: Flower) -> None:
    anonymous = httpx.get(f"{flower.url}/metrics", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = httpx.get(f"{flower.url}/metrics", auth=(USER, "wrong"), timeout=10)
    assert wrong.status_code == 401
    answered = flower.client.get("/metrics")
    assert answered.status_code == 200
    assert "flower_events_total" in answered.text
    # the health probe stays open and says nothing else
    health = httpx.get(f"{flower.url}/healthcheck", timeout=10)
    assert (health.status_code, health.text) == (200, "OK")
