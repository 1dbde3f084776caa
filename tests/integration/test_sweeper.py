"""The sweeper, run as the Celery task beat sends, against jobs left in every overdue state."""

from __future__ import annotations

from api_schema import ErrorCode, JobStatus
from tests.harness import Stack, request


def _sweep(live: Stack) -> None:
    from api_schema import SWEEP_TASK

    live.send_signed(SWEEP_TASK)


def _strand(live: Stack, job_id: str, status: str, *, started: bool, task: str | None) -> None:
    """Leave a job as a crashed worker would: its next message never comes."""
    live.sql(
        "UPDATE jobs SET status = :s, submit_started_at = CASE WHEN :st THEN now() END, "
        "upstream_task_id = :t, next_check_at = now() - interval '1 hour' WHERE id = :j",
        s=status,
        st=started,
        t=task,
        j=job_id,
    )


def test_sweeper_moves_every_kind_of_stranded_job_on(live: Stack) -> None:
    live.sim_configure(processing_seconds=60)
    holder = live.send(request())  # occupies the upstream so the others stay put
    live.wait_status(holder, {"pending", "processing"})
    live.sql("UPDATE jobs SET status = 'cancelled' WHERE id = :j", j=holder)
    live.sim_reset()

    never_sent = live.send(request(), job_id="never-sent")
    live.wait_status(never_sent, {"pending", "processing", "succeeded"})
    unknown = live.send(request(), job_id="unknown-outcome")
    live.wait_status(unknown, {"pending", "processing", "succeeded"})
    lost_poll = live.send(request(), job_id="lost-poll")
    live.wait_status(lost_poll, {"pending", "processing", "succeeded"})
    live.wait_ended([never_sent, unknown, lost_poll])

    # rewind them into the states a killed worker or a flushed broker leaves behind
    upstream = live.sql("SELECT upstream_task_id FROM jobs WHERE id = :j", j=lost_poll)[0][0]
    live.sql("DELETE FROM job_images")
    _strand(live, never_sent, "submitting", started=False, task=None)
    _strand(live, unknown, "submitting", started=True, task=None)
    _strand(live, lost_poll, "pending", started=True, task=upstream)
    live.sql("UPDATE jobs SET poll_count = 0, finished_at = NULL, error_code = NULL")
    submits_before = live.sim_stats()["submits_accepted"]

    _sweep(live)
    jobs = live.wait_ended([never_sent, unknown, lost_poll])

    assert jobs[never_sent].status is JobStatus.SUCCEEDED  # its POST was never sent: sent now
    assert jobs[unknown].status is JobStatus.FAILED  # its POST may have been sent: never again
    assert jobs[unknown].error_code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
    assert jobs[lost_poll].status is JobStatus.SUCCEEDED  # polling picked up where it stopped
    assert jobs[lost_poll].upstream_task_id == upstream
    assert live.sim_stats()["submits_accepted"] == submits_before + 1  # only never-sent


def test_queued_job_past_its_deadline_is_expired_by_the_sweeper(live: Stack) -> None:
    live.sim_configure(processing_seconds=60)
    busy = [live.send(request()) for _ in range(3)]
    for job_id in busy:
        live.wait_status(job_id, {"pending", "processing"})
    late = live.send(request(deadline_seconds=1))
    # queued, or admitted as a slot probe the upstream keeps refusing: it waits either way
    live.wait_status(late, {"queued", "submitting"})
    live.sql("UPDATE jobs SET deadline_at = now() - interval '1 second' WHERE id = :j", j=late)
    _sweep(live)
    job = live.wait_ended([late])[late]
    assert job.error_code is ErrorCode.DEADLINE_EXCEEDED
    assert job.upstream_task_id is None
