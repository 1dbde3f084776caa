"""IMAGEGEN_RESUBMIT_UNKNOWN=true: the opt-in that trades "never paid twice" for completion."""

from __future__ import annotations

from api_schema import JobStatus
from tests.harness import Stack, request


def test_resubmit_unknown_opt_in_sends_again(stack: Stack) -> None:
    # A separate worker with IMAGEGEN_RESUBMIT_UNKNOWN=true: the documented risk is a second
    # paid task, and that is exactly what happens when the first POST did create one.
    stack.clean()
    worker = stack.start_worker("resubmit", IMAGEGEN_RESUBMIT_UNKNOWN="true")
    try:
        stack.sim_configure(faults={"drop_after_create": 1.0})
        body = request()
        job_id = stack.send(body)
        stack.wait_for(lambda: len(stack.sim_tasks()) >= 2, 60, "a second upstream task")
        stack.sim_configure(faults={"drop_after_create": 0.0})
        job = stack.wait_ended([job_id])[job_id]
        assert job.status is JobStatus.SUCCEEDED
        assert [t["prompt"] for t in stack.sim_tasks()].count(body["prompt"]) >= 2
    finally:
        worker.stop()
        stack.workers.remove(worker)
