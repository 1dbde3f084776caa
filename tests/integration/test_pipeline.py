"""The core pipeline on real Redis, PostgreSQL, simulator and ``celery worker`` processes."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

from PIL import Image

from api_schema import ErrorCode, JobStatus
from tests.harness import Stack, request, tiny_png


def _tasks_for(live: Stack, prompt: str) -> list[dict[str, object]]:
    return [t for t in live.sim_tasks() if t["prompt"] == prompt]


def _events(live: Stack, job_id: str) -> list[tuple[str | None, str]]:
    rows = live.sql(
        "SELECT from_status, to_status FROM job_events WHERE job_id = :j ORDER BY id", j=job_id
    )
    return [(r[0], r[1]) for r in rows]


def test_request_becomes_n_stored_images(live: Stack) -> None:
    body = request(
        subject_reference_images=[tiny_png()], n=3, aspect_ratio="3:4", metadata={"order": 42}
    )
    job_id = live.send(body)
    job = live.wait_ended([job_id])[job_id]

    assert job.status is JobStatus.SUCCEEDED, job.error_message
    assert job.metadata == {"order": 42}
    assert job.billing_amount == Decimal("0.1050")
    assert job.upstream_task_id is not None
    assert (job.duration_ms or 0) > 0
    assert job.result_expires_at is not None
    assert job.result_expires_at > job.created_at
    assert [i.index for i in job.images] == [0, 1, 2]
    for image in job.images:
        assert (image.width, image.height, image.format) == (864, 1152, "png")
        assert image.stored_path is not None
        stored = Path(image.stored_path)
        assert stored.is_relative_to(live.storage_dir)
        with Image.open(io.BytesIO(stored.read_bytes())) as png:
            assert png.format == "PNG"
            assert png.size == (864, 1152)
    # three distinct images, not one copied three times
    assert len({Path(i.stored_path or "").read_bytes() for i in job.images}) == 3
    tasks = _tasks_for(live, body["prompt"])
    assert [t["task_id"] for t in tasks] == [job.upstream_task_id]
    path = [to for _, to in _events(live, job_id)]
    assert path[:3] == ["queued", "submitting", "pending"]
    assert path[-1] == "succeeded"


def test_width_height_and_default_sizes(live: Stack) -> None:
    sized = live.send(request(width=768, height=512))
    default = live.send(request())
    jobs = live.wait_ended([sized, default])
    assert [(i.width, i.height) for i in jobs[sized].images] == [(768, 512)]
    assert [(i.width, i.height) for i in jobs[default].images] == [(1024, 1024)]


def test_invalid_request_fails_naming_the_field_and_is_never_submitted(live: Stack) -> None:
    bad = request(subject_reference_images=["https://example.com/a.jpg"] * 11)
    worse = request(width=1000)
    ids = [live.send(bad), live.send(worse), live.send("not an object")]
    jobs = live.wait_ended(ids, timeout=20)

    for job_id in ids:
        assert jobs[job_id].status is JobStatus.FAILED
        assert jobs[job_id].error_code is ErrorCode.INVALID_REQUEST
    assert "subject_reference_images" in (jobs[ids[0]].error_message or "")
    assert "width" in (jobs[ids[1]].error_message or "")
    assert "request" in (jobs[ids[2]].error_message or "")
    stats = live.sim_stats()
    assert stats["submits_accepted"] == 0
    assert sum(stats["submits_rejected"].values()) == 0


def test_unknown_api_key_fails_upstream_auth(live: Stack) -> None:
    live.sim_configure(keys={"some-other-teams-key": "team-b"})
    job_id = live.send(request())
    job = live.wait_ended([job_id])[job_id]
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.UPSTREAM_AUTH
    assert "Authentication failed" in (job.error_message or "")
    assert live.sim_stats()["submits_accepted"] == 0


def test_upstream_task_failure_is_stored_with_its_reason(live: Stack) -> None:
    live.sim_configure(faults={"fail_task": 1.0})
    job_id = live.send(request())
    job = live.wait_ended([job_id])[job_id]
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.UPSTREAM_FAILED
    assert job.error_message
    assert job.images == []


def test_submit_500_is_outcome_unknown_and_never_resent(live: Stack) -> None:
    live.sim_configure(faults={"submit_500": 1.0})
    body = request()
    job_id = live.send(body)
    job = live.wait_ended([job_id])[job_id]
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
    stats = live.sim_stats()
    submits = stats["submits_accepted"] + sum(stats["submits_rejected"].values())
    assert submits == 1


def test_query_errors_are_retried_until_success(live: Stack) -> None:
    live.sim_configure(faults={"query_500": 0.4, "query_503": 0.2, "seed": 7})
    bodies = [request() for _ in range(4)]
    ids = [live.send(b) for b in bodies]
    jobs = live.wait_ended(ids)
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs.values()), jobs
    stats = live.sim_stats()
    assert stats["submits_accepted"] == 4
    assert (
        stats["polls_by_status"].get("fault_500", 0) + stats["polls_by_status"].get("fault_503", 0)
        > 0
    )
    for body in bodies:
        assert len(_tasks_for(live, body["prompt"])) == 1


def test_task_forgotten_upstream_fails_not_found(live: Stack) -> None:
    live.sim_configure(pending_seconds=30)
    job_id = live.send(request())
    live.wait_status(job_id, {"pending"})
    # the job is pending upstream; now the upstream forgets it
    assert live.http.post(f"{live.sim_url}/_sim/reset").status_code == 200
    job = live.wait_ended([job_id])[job_id]
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.UPSTREAM_NOT_FOUND


def test_idempotency_key_returns_the_first_job(live: Stack) -> None:
    body = request(idempotency_key="order-1234")
    first = live.send(body)
    live.wait_status(first, {"submitting", "pending", "processing", "succeeded"})
    second = live.send(body)
    jobs = live.wait_ended([first, second])
    assert jobs[second].id == first
    assert jobs[first].status is JobStatus.SUCCEEDED
    assert len(_tasks_for(live, body["prompt"])) == 1
    assert live.sql("SELECT count(*) FROM jobs")[0][0] == 1


def test_redelivered_message_is_a_no_op(live: Stack) -> None:
    body = request()
    job_id = live.send(body)
    live.send(body, job_id=job_id)
    live.wait_ended([job_id])
    live.send(body, job_id=job_id)  # a late duplicate after the job ended
    job = live.wait_ended([job_id])[job_id]
    assert job.status is JobStatus.SUCCEEDED
    assert len(_tasks_for(live, body["prompt"])) == 1
    created = live.sql(
        "SELECT count(*) FROM job_events WHERE job_id = :j AND from_status IS NULL", j=job_id
    )
    assert created[0][0] == 1


def test_request_outliving_its_deadline_stops(live: Stack) -> None:
    live.sim_configure(processing_seconds=60)
    body = request(deadline_seconds=2)
    job_id = live.send(body)
    job = live.wait_ended([job_id], timeout=30)[job_id]
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.DEADLINE_EXCEEDED
    assert len(_tasks_for(live, body["prompt"])) == 1  # it was submitted, once
    assert job.finished_at is not None
    assert job.finished_at >= job.deadline_at


def test_upstream_concurrency_429s_requeue_and_every_job_succeeds(live: Stack) -> None:
    # The upstream allows 1 task at a time but the worker believes 3: the extra submits get
    # 429 "Concurrent limit exceeded", go back to the queue, and all still finish.
    live.sim_configure(concurrency_limit=1, processing_seconds=0.3)
    bodies = [request() for _ in range(5)]
    ids = [live.send(b) for b in bodies]
    jobs = live.wait_ended(ids, timeout=90)
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs.values())
    stats = live.sim_stats()
    assert stats["submits_rejected"].get("concurrency_limit", 0) > 0
    assert stats["max_concurrency"] == 1
    for body in bodies:
        assert len(_tasks_for(live, body["prompt"])) == 1


def test_upstream_400_fails_rejected_and_is_not_retried(live: Stack) -> None:
    live.sim_configure(faults={"submit_400": 1.0})
    job_id = live.send(request())
    job = live.wait_ended([job_id])[job_id]
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.UPSTREAM_REJECTED
    assert "content moderation" in (job.error_message or "")
    assert live.sim_stats()["submits_rejected"] == {"fault_400": 1}


def test_insufficient_balance_fails_payment_and_others_still_run(live: Stack) -> None:
    live.sim_configure(balance="0.0700")  # two images' worth
    cheap = live.send(request(n=2))
    jobs = live.wait_ended([cheap])
    assert jobs[cheap].status is JobStatus.SUCCEEDED
    broke = live.send(request())
    job = live.wait_ended([broke])[broke]
    assert job.status is JobStatus.FAILED
    assert job.error_code is ErrorCode.UPSTREAM_PAYMENT
    assert "Insufficient balance" in (job.error_message or "")
    assert live.sim_stats()["submits_rejected"] == {"insufficient_balance": 1}
