"""``imagegen jobs list | events | retry`` against real workers, database and simulator."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from api_schema import ErrorCode, JobStatus, JobView
from devtools.procs import imagegen_argv
from tests.harness import Stack, request

REPLY = {"task": "backend.job_done", "queue": "backend.results"}


def _imagegen(live: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        imagegen_argv(*args),
        env={**os.environ, **live.env(), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _row(live: Stack, job_id: str) -> Any:
    return live.sql(
        "SELECT retry_of, idempotency_key, tenant, priority, deliver_to, request, status "
        "FROM jobs WHERE id = :j",
        j=job_id,
    )[0]


def test_retry_of_a_failed_job_succeeds_and_links_both(live: Stack) -> None:
    live.sim_configure(faults={"fail_task": 1.0})
    body = request(priority=7, metadata={"order": 9}, idempotency_key="order-9", reply_to=REPLY)
    old = live.send(body)
    failed = live.wait_ended([old])[old]
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, ErrorCode.UPSTREAM_FAILED)
    live.sim_reset()

    done = _imagegen(live, "jobs", "retry", old)
    assert done.returncode == 0, done.stderr
    new = done.stdout.strip()
    assert new != old
    assert f"job {old} (failed) retried as {new}" in done.stderr
    job = live.wait_ended([new])[new]
    assert job.status is JobStatus.SUCCEEDED, job.error_message
    assert job.metadata == {"order": 9}
    assert len(job.images) == 1

    old_row, new_row = _row(live, old), _row(live, new)
    assert new_row.retry_of == old and old_row.retry_of is None
    assert (new_row.idempotency_key, old_row.idempotency_key) == (None, "order-9")
    assert (new_row.tenant, new_row.priority) == (old_row.tenant, 7)
    assert new_row.deliver_to == old_row.deliver_to and new_row.deliver_to  # the reply task
    assert new_row.request == {k: v for k, v in old_row.request.items() if k != "idempotency_key"}
    assert old_row.status == "failed"  # the old job stays where it ended
    # the same request POSTed again, once (the simulator forgot the first task at its reset)
    assert [t["prompt"] for t in live.sim_tasks()] == [body["prompt"]]
    # the new job's delivery went out like any job's
    live.wait_for(
        lambda: (
            live.sql("SELECT state FROM job_deliveries WHERE job_id = :j", j=new)
            == [("delivered",)]
        ),
        30,
        "the retried job's reply delivered",
    )

    old_events = _lines(_imagegen(live, "jobs", "events", old, "--json"))
    assert old_events[-1]["detail"] == f"retried as {new}"
    assert (old_events[-1]["from"], old_events[-1]["to"]) == ("failed", "failed")  # a note
    new_events = _lines(_imagegen(live, "jobs", "events", new, "--json"))
    assert (new_events[0]["from"], new_events[0]["to"], new_events[0]["detail"]) == (
        None,
        "queued",
        f"retry of {old}",
    )
    assert new_events[-1]["to"] == "succeeded"

    # once is what an operator means: again only with --force
    again = _imagegen(live, "jobs", "retry", old)
    assert again.returncode == 3
    assert f"already retried as {new}" in again.stderr
    # a job that succeeded pays again: only with --force
    refused = _imagegen(live, "jobs", "retry", new)
    assert refused.returncode == 3
    assert "succeeded" in refused.stderr and "--force" in refused.stderr
    forced = _imagegen(live, "jobs", "retry", new, "--force")
    assert forced.returncode == 0, forced.stderr
    third = forced.stdout.strip()
    assert live.wait_ended([third])[third].status is JobStatus.SUCCEEDED
    assert _row(live, third).retry_of == new
    assert live.sql("SELECT count(*) FROM jobs")[0][0] == 3


def test_retry_refuses_live_requestless_and_unknown_jobs(live: Stack) -> None:
    invalid = live.send(request(width=1000))
    assert live.wait_ended([invalid])[invalid].error_code is ErrorCode.INVALID_REQUEST
    refused = _imagegen(live, "jobs", "retry", invalid, "--force")
    assert refused.returncode == 3
    assert "no stored request" in refused.stderr

    live.sim_configure(processing_seconds=60)
    running = live.send(request())
    live.wait_status(running, {"pending", "processing"})
    busy = _imagegen(live, "jobs", "retry", running, "--force")
    assert busy.returncode == 3
    assert "cancel it first" in busy.stderr
    assert _imagegen(live, "cancel", running).returncode == 0
    live.wait_ended([running])

    unknown = _imagegen(live, "jobs", "retry", "no-such-job")
    assert unknown.returncode == 1
    assert "no job no-such-job" in unknown.stderr
    assert live.sql("SELECT count(*) FROM jobs WHERE retry_of IS NOT NULL")[0][0] == 0


def test_list_filters_and_orders(live: Stack) -> None:
    ids = []
    for body in (request(), request(width=1000), request()):  # one at a time: ordered
        job_id = live.send(body)
        live.wait_ended([job_id])
        ids.append(job_id)
    first, invalid, last = ids
    # the first job is from two days ago
    live.sql("UPDATE jobs SET created_at = now() - interval '2 days' WHERE id = :j", j=first)

    everything = [
        JobView.model_validate(j) for j in _lines(_imagegen(live, "jobs", "list", "--json"))
    ]
    assert [v.id for v in everything] == [last, invalid, first]  # newest first
    failed = _lines(_imagegen(live, "jobs", "list", "--status", "failed", "--json"))
    assert [j["id"] for j in failed] == [invalid]
    assert failed[0]["error_code"] == "invalid_request"
    assert [j["id"] for j in _lines(_imagegen(live, "jobs", "list", "--limit", "1", "--json"))] == [
        last
    ]
    recent = _lines(_imagegen(live, "jobs", "list", "--since", "1d", "--json"))
    assert [j["id"] for j in recent] == [last, invalid]
    since = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    assert len(_lines(_imagegen(live, "jobs", "list", "--since", since, "--json"))) == 3
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _lines(_imagegen(live, "jobs", "list", "--since", later, "--json")) == []

    table = _imagegen(live, "jobs", "list", "--status", "succeeded")
    assert table.returncode == 0, table.stderr
    assert first in table.stdout and last in table.stdout and invalid not in table.stdout

    bad_status = _imagegen(live, "jobs", "list", "--status", "done")
    assert bad_status.returncode == 2
    assert "'queued'" in bad_status.stderr and "'cancelled'" in bad_status.stderr
    bad_since = _imagegen(live, "jobs", "list", "--since", "yesterday")
    assert bad_since.returncode == 2
    assert "15m, 2h, 3d" in bad_since.stderr
    for limit in ("0", "10001"):
        bad_limit = _imagegen(live, "jobs", "list", "--limit", limit)
        assert bad_limit.returncode == 2
        assert "--limit: expected 1 to 10000" in bad_limit.stderr


def test_events_in_order_and_errors(live: Stack) -> None:
    job_id = live.send(request())
    assert live.wait_ended([job_id])[job_id].status is JobStatus.SUCCEEDED
    events = _lines(_imagegen(live, "jobs", "events", job_id, "--json"))
    path = [e["to"] for e in events]
    assert path[:3] == ["queued", "submitting", "pending"]
    assert path[-1] == "succeeded"
    assert [e["from"] for e in events[1:]] == path[:-1]  # each starts where the last ended
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert times == sorted(times)
    assert {e["job_id"] for e in events} == {job_id}
    assert any(e["worker"] and e["worker"].startswith("w1@") for e in events)

    table = _imagegen(live, "jobs", "events", job_id)
    assert table.returncode == 0, table.stderr
    assert "queued → submitting" in table.stdout
    assert "→ succeeded" in table.stdout

    unknown = _imagegen(live, "jobs", "events", "no-such-job")
    assert unknown.returncode == 1
    assert "no job no-such-job" in unknown.stderr

    helped = _imagegen(live, "jobs")
    assert all(word in helped.stdout for word in ("list", "events", "retry"))


def test_two_operators_retrying_at_once_make_one_retry(stack: Stack) -> None:
    """The second waits for the old job's row lock, then sees the first one's retry."""
    import threading

    from sqlalchemy import text

    from worker import jobs
    from worker.db import autocommit, get_engine, transaction
    from worker.jobs import operator

    stack.clean()
    old = str(uuid.uuid4())
    with autocommit() as connection:
        jobs.accept(connection, old, request(), default_deadline_seconds=600)
        assert jobs.fail(connection, old, ErrorCode.UPSTREAM_FAILED, "failed upstream")

    second: list[operator.Retried | operator.Refused] = []
    with get_engine().connect() as first:
        first_tx = first.begin()
        made = operator.record_retry(first, old, force=False, default_deadline_seconds=600)
        assert isinstance(made, operator.Retried)
        pid = first.execute(text("SELECT pg_backend_pid()")).scalar()

        def other() -> None:
            with transaction() as connection:
                second.append(
                    operator.record_retry(
                        connection, old, force=False, default_deadline_seconds=600
                    )
                )

        thread = threading.Thread(target=other)
        thread.start()
        stack.wait_for(
            lambda: (
                stack.sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND :pid = ANY(pg_blocking_pids(pid))",
                    pid=pid,
                )[0][0]
                == 1
            ),
            10,
            "the second retry waiting for the old job's lock",
        )
        first_tx.commit()
    thread.join(10)
    assert not thread.is_alive()
    assert len(second) == 1 and isinstance(second[0], operator.Refused), second
    assert second[0].reason is operator.Refusal.ALREADY_RETRIED
    assert made.job_id in second[0].message
    assert stack.sql("SELECT id FROM jobs WHERE retry_of = :j", j=old) == [(made.job_id,)]


def test_tables_show_ids_and_details_as_text_not_markup(live: Stack) -> None:
    job_id = f"odd-[/bold]-[red]{uuid.uuid4().hex[:8]}"  # any storable id is a producer's
    live.send(request(width=1000), job_id=job_id)  # its detail quotes the request's problem
    assert live.wait_ended([job_id])[job_id].status is JobStatus.FAILED
    events = _imagegen(live, "jobs", "events", job_id)
    assert events.returncode == 0, events.stderr
    assert job_id in events.stdout
    assert "∅ → failed" in events.stdout and "invalid_request:" in events.stdout
    listed = _imagegen(live, "jobs", "list")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout
    retried = _imagegen(live, "jobs", "retry", job_id)
    assert retried.returncode == 3
    assert f"job {job_id} has no stored request" in retried.stderr
