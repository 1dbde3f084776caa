"""A real worker's log: every line JSON, the job on every line naming it, one end per job.

A worker of its own (its log file is this module's alone) runs jobs that succeed (more
than the upstream's slots, so some are admitted and POSTed by other jobs' tasks), one
whose upstream task fails, one whose submit gets a 500 and one invalid request; it is then
stopped, and every line it wrote is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from api_schema import ErrorCode, JobStatus
from devtools.procs import Proc
from tests.harness import Stack, request, tiny_png

SUCCEEDING = 6  # twice the upstream's 3 slots


@pytest.fixture(scope="module")
def json_worker(stack: Stack) -> Iterator[tuple[Stack, Proc]]:
    """The stack with a worker writing JSON logs to a file of its own."""
    stack.clean()
    # Without slot probes the jobs that wait are POSTed by the polls that free their slots:
    # the test checks those lines name the job they are about, not the poll's own job.
    proc = stack.start_worker("jsonlog", IMAGEGEN_LOG_FORMAT="json", IMAGEGEN_SLOT_PROBES="false")
    try:
        yield stack, proc
    finally:
        if proc in stack.workers:
            stack.workers.remove(proc)
        proc.stop()


def _parse(proc: Proc) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(proc.log_path.read_text().splitlines(), start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{proc.name}.log line {number} is not JSON: {line[:300]!r}")
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def test_every_line_is_json_and_names_its_job(json_worker: tuple[Stack, Proc]) -> None:
    live, proc = json_worker
    expected: dict[str, tuple[JobStatus, ErrorCode | None]] = {}
    # The first three hold the upstream's 3 slots long enough for the others to be accepted
    # as queued: those are admitted, and POSTed, by the polls that see a slot free.
    live.sim_configure(pending_seconds=3.0)
    ok = [live.send(request()) for _ in range(3)]
    for job_id in ok:
        live.wait_status(job_id, {"pending", "processing"})
    later = [live.send(request()) for _ in range(SUCCEEDING - 4)]
    later.append(live.send(request(subject_reference_images=[tiny_png()])))
    for job_id in later:
        live.wait_status(job_id, {"queued"})
    ok += later
    for job_id in ok:
        expected[job_id] = (JobStatus.SUCCEEDED, None)
    live.wait_ended(ok, timeout=60)
    live.sim_reset()
    for faults, status, code in (
        ({"fail_task": 1.0}, JobStatus.FAILED, ErrorCode.UPSTREAM_FAILED),
        ({"submit_500": 1.0}, JobStatus.FAILED, ErrorCode.SUBMIT_OUTCOME_UNKNOWN),
    ):
        live.sim_configure(faults=faults)
        job_id = live.send(request())
        live.wait_ended([job_id], timeout=30)
        expected[job_id] = (status, code)
        live.sim_reset()
    invalid = live.send(request(width=1000))
    live.wait_ended([invalid], timeout=30)
    expected[invalid] = (JobStatus.FAILED, ErrorCode.INVALID_REQUEST)

    views = live.views(expected)
    for job_id, (status, code) in expected.items():
        view = views[job_id]
        assert view is not None and (view.status, view.error_code) == (status, code), view
    # Stopped first, so its shutdown output is in the file too.
    live.workers.remove(proc)
    assert proc.stop() == 0
    entries = _parse(proc)
    assert len(entries) > 4 * len(expected)

    for entry in entries:
        assert {"timestamp", "level", "logger", "service", "event"} <= set(entry), entry
        assert entry["service"] == "worker"
        assert datetime.fromisoformat(entry["timestamp"]).utcoffset() == UTC.utcoffset(None)
        text = json.dumps(entry)
        # (a generate task's id is its job's: a line of it about another job names both)
        named = [j for j in expected if j in text.replace(str(entry.get("task_id")), "")]
        # a line naming a job carries it as its job, and names no other job
        assert len(named) <= 1, entry
        if named:
            assert entry.get("job_id") == named[0], entry
        assert "base64," not in text

    upstream = {j: v.upstream_task_id for j, v in views.items() if v is not None}
    by_job: dict[str, list[dict[str, Any]]] = {j: [] for j in expected}
    for entry in entries:
        job_id = entry.get("job_id")
        if job_id in by_job:
            by_job[job_id].append(entry)
            # never another job's upstream task id
            if entry.get("upstream_task_id") is not None:
                assert entry["upstream_task_id"] == upstream[job_id], entry

    for job_id, (status, code) in expected.items():
        lines = by_job[job_id]
        ended = [e for e in lines if e["event"] == "job.ended"]
        assert len(ended) == 1, (job_id, ended)
        assert ended[0]["status"] == status.value
        assert ended[0]["error_code"] == (code.value if code else None)
        assert ended[0]["upstream_task_id"] == upstream[job_id]
        assert ended[0]["level"] == ("info" if status is JobStatus.SUCCEEDED else "warning")
        assert any(e["event"] == "task.received" for e in lines), job_id
        if upstream[job_id] is not None:
            submitted = [e for e in lines if e["event"] == "job.submitted"]
            assert [e["upstream_task_id"] for e in submitted] == [upstream[job_id]]
    # polls' Celery lines carry their job too (its id is their argument, not their task id)
    polls = [e for e in entries if e.get("task") == "imagegen.poll"]
    assert polls and all(e.get("job_id") in expected for e in polls)
    assert any(e["event"] == "task.retry" for e in polls)
    # jobs were admitted and POSTed by other jobs' tasks, and named as themselves there
    submitted = [e for e in entries if e["event"] == "job.submitted"]
    assert all(e["task"] in ("imagegen.generate", "imagegen.poll") for e in submitted)
    by_polls = [e for e in submitted if e["task"] == "imagegen.poll"]
    assert {e["job_id"] for e in by_polls} == set(later), submitted
    poll_jobs = {e["task_id"]: e["job_id"] for e in polls if e["event"] == "task.received"}
    for e in by_polls:  # the poll task is another job's
        assert poll_jobs[e["task_id"]] in set(ok) - set(later), e
    assert any(e["event"] == "worker.stopped" for e in entries)


def test_the_simulators_log_is_json_too(stack: Stack) -> None:
    assert stack.sim is not None
    entries = _parse(stack.sim)
    assert any(e["event"] == "simulator.started" for e in entries)
    assert all(e["service"] == "simulator" for e in entries)
