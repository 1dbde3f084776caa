"""A cancelled job keeps its bill, and a revoked poll never leaves a job holding a slot."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from typing import Any

from api_schema import ErrorCode, JobStatus
from api_schema.producer import producer_app
from tests.harness import Stack, request

HOLDING = "('submitting', 'pending', 'processing')"


def _imagegen(live: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=live.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _events(live: Stack, job_id: str) -> list[tuple[str | None, str, str | None]]:
    rows = live.sql(
        "SELECT from_status, to_status, detail FROM job_events WHERE job_id = :id ORDER BY id",
        id=job_id,
    )
    return [(r[0], r[1], r[2]) for r in rows]


def test_a_cancelled_running_job_keeps_its_bill_and_holds_no_slot(live: Stack) -> None:
    # long enough that the job is still running when the cancel command has started
    live.sim_configure(pending_seconds=0.2, processing_seconds=12)
    job_id = live.send(request())
    live.wait_status(job_id, {"pending", "processing"})

    cancelled = _imagegen(live, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    # Its slot is free at once, while its upstream task is still followed.
    held, following = live.sql(
        f"SELECT (SELECT count(*) FROM jobs WHERE status IN {HOLDING}), "  # noqa: S608
        "(SELECT next_check_at IS NOT NULL FROM jobs WHERE id = :id)",
        id=job_id,
    )[0]
    assert held == 0
    assert following is True

    # The upstream task runs on and is billed: the bill is recorded, the job stays cancelled.
    live.wait_for(
        lambda: (
            live.sql("SELECT billing_amount FROM jobs WHERE id = :id", id=job_id)[0][0] is not None
        ),
        timeout=45,
        what="the cancelled job's bill",
    )
    view = live.views([job_id])[job_id]
    assert view is not None
    assert view.status is JobStatus.CANCELLED
    assert view.error_code is ErrorCode.CANCELLED
    tasks = live.sim_tasks()
    assert len(tasks) == 1  # followed, never sent again
    price = Decimal(live.http.get(f"{live.sim_url}/_sim/config").json()["price_per_image"])
    assert view.billing_amount == price * tasks[0]["n"]  # what the upstream charged
    last = _events(live, job_id)[-1]
    assert last[:2] == ("cancelled", "cancelled")
    assert last[2] is not None and "succeeded after the cancel" in last[2]
    # ...and the chain stopped: nothing left to follow.
    assert live.sql("SELECT next_check_at FROM jobs WHERE id = :id", id=job_id)[0][0] is None


def _poll_task_id(live: Stack, job_id: str) -> str | None:
    """The Celery task id of the job's poll chain (retries keep their task's id)."""
    inspect = producer_app(live.broker_url).control.inspect(timeout=1.0)
    found: list[dict[str, Any]] = []
    for reply in (inspect.scheduled() or {}, inspect.reserved() or {}, inspect.active() or {}):
        for entries in reply.values():
            for entry in entries:
                found.append(entry.get("request", entry))
    for req in found:
        if req.get("name") == "imagegen.poll" and list(req.get("args") or [])[:1] == [job_id]:
            return str(req["id"])
    return None


def test_a_revoked_poll_cancels_its_job_within_seconds(live: Stack) -> None:
    live.sim_configure(pending_seconds=0.2, processing_seconds=20)
    job_id = live.send(request())
    live.wait_status(job_id, {"pending", "processing"})
    task_ids: list[str] = []

    def found() -> bool:
        task_id = _poll_task_id(live, job_id)
        if task_id is not None:
            task_ids.append(task_id)
        return bool(task_ids)

    live.wait_for(found, timeout=20, what="the job's poll among the worker's tasks")
    producer_app(live.broker_url).control.revoke(task_ids[0])

    view = live.wait_status(job_id, {"cancelled", "succeeded", "failed"}, timeout=15)
    assert view.status is JobStatus.CANCELLED  # not left pending until a sweep
    assert view.error_message is not None and "revoked" in view.error_message
    assert live.sql(f"SELECT count(*) FROM jobs WHERE status IN {HOLDING}")[0][0] == 0  # noqa: S608
    # Its upstream task is still followed (a new poll chain) until it ends and is billed.
    live.wait_for(
        lambda: (
            live.sql("SELECT billing_amount FROM jobs WHERE id = :id", id=job_id)[0][0] is not None
        ),
        timeout=60,
        what="the revoked job's bill",
    )
    assert len(live.sim_tasks()) == 1
