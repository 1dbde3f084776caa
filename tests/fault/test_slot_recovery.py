"""A dead worker's slots come back in seconds: its peers reclaim the jobs it held.

Run on the shipped poll, sweep and staleness settings (the harness shortens them for speed
elsewhere): the sweeper alone would find the jobs only after ``stale_after_seconds`` (60 s)
plus a sweep interval. The figures are in the report line.
"""

from __future__ import annotations

import json
import time
from typing import Any

from api_schema import DELIVERIES_QUEUE, MAINTENANCE_QUEUE, REQUESTS_QUEUE, UPSTREAM_QUEUE
from api_schema.producer import producer_app
from devtools.procs import imagegen_argv
from tests.harness import FAST_WORKER_ENV, Stack, request
from worker.config import Settings

#: The shipped defaults of every setting the harness shortens.
SHIPPED = {
    key: str(Settings.model_fields[key.removeprefix("IMAGEGEN_").lower()].default)
    for key in FAST_WORKER_ENV
    if key.removeprefix("IMAGEGEN_").lower() in Settings.model_fields
}


def _count_events(stack: Stack, event: str) -> int:
    """Lines of every process's JSON log with this event name."""
    count = 0
    for proc in stack.sup.procs:
        if proc.log_path.exists():
            for line in proc.log_path.read_text(errors="replace").splitlines():
                if f'"{event}"' in line and json.loads(line).get("event") == event:
                    count += 1
    return count


def survivor_node(stack: Stack) -> str:
    names: list[str] = []

    def answered() -> bool:
        replies = producer_app(stack.broker_url).control.ping(timeout=2.0)
        names.extend(n for reply in replies for n in reply if n.startswith("survivor@"))
        return bool(names)

    stack.wait_for(answered, timeout=30, what="the survivor answering a ping")
    return names[0]


def test_a_killed_workers_slots_are_busy_again_within_seconds(
    stack: Stack, report: dict[str, Any]
) -> None:
    stack.clean()
    stack.sim_configure(concurrency_limit=3, pending_seconds=0.3, processing_seconds=4.0)
    beat = stack.sup.start("beat-shipped", imagegen_argv("beat"), env=stack.env(**SHIPPED))
    # The survivor starts on deliveries only, so the victim alone takes the two jobs (their
    # polls wait in its memory for their countdowns); it takes up the rest when the victim
    # dies, as a busy peer would.
    stack.start_worker("survivor", queues=DELIVERIES_QUEUE, **SHIPPED)
    victim = stack.start_worker("victim", **SHIPPED)
    try:
        held = [stack.send(request(prompt=f"held {i}")) for i in range(2)]
        for job_id in held:
            stack.wait_status(job_id, {"pending", "processing"})
        polls_sent = {row[0]: row[1] for row in stack.sql("SELECT id, poll_count FROM jobs")}
        victim.kill()
        killed_at = time.monotonic()
        stack.workers.remove(victim)
        live_at_kill = stack.sql(
            "SELECT count(*) FROM jobs WHERE id IN (:a, :b)"
            " AND status IN ('pending', 'processing')",
            a=held[0],
            b=held[1],
        )[0][0]
        # A backlog waits: one job takes the free slot, the rest wait for the victim's two.
        stack.sim_configure(processing_seconds=60.0)
        backlog = [stack.send(request(prompt=f"backlog {i}")) for i in range(6)]
        control = producer_app(stack.broker_url).control
        node = survivor_node(stack)
        for queue in (UPSTREAM_QUEUE, MAINTENANCE_QUEUE, REQUESTS_QUEUE):
            assert control.add_consumer(queue, destination=[node], reply=True, timeout=10)

        def slots_busy_again() -> bool:
            ended = stack.sql(
                "SELECT count(*) FROM jobs WHERE id IN (:a, :b) AND status = 'succeeded'",
                a=held[0],
                b=held[1],
            )[0][0]
            # the paid slots themselves, as the upstream counts them (our books may run
            # ahead of them: a slot probe waiting for its time holds a row in submitting)
            busy = sum(stack.sim_stats()["concurrency_now"].values())
            return bool(ended == 2 and busy == 3)

        stack.wait_for(slots_busy_again, timeout=120, what="both slots busy again")
        recovered_in = time.monotonic() - killed_at

        submitted = stack.sql("SELECT count(*) FROM jobs WHERE upstream_task_id IS NOT NULL")[0][0]
        report.update(
            slots_held_by_killed_worker=len(held),
            slot_limit=3,
            backlog=len(backlog),
            polls_before_kill=sum(polls_sent.get(i, 0) for i in held),
            seconds_until_both_slots_busy_again=round(recovered_in, 2),
            upstream_tasks=len(stack.sim_tasks()),
            jobs_submitted=submitted,
            reclaims=_count_events(stack, "worker.reclaimed"),
        )
        assert live_at_kill == 2  # the kill really caught both jobs upstream
        assert report["reclaims"] >= 1  # recovered by the reclaim, not by the sweeper
        # Never paid twice: one upstream task per submitted job.
        assert len(stack.sim_tasks()) == submitted
        # A sanity bound, not a target (the figure is in the report line): the sweeper
        # alone needs more than stale_after_seconds (60 s) for the same jobs.
        assert recovered_in < 30
    finally:
        beat.stop()
        stack.stop_workers()
        stack.clean()


def test_a_post_under_way_at_a_warm_shutdown_is_left_to_finish(
    stack: Stack, report: dict[str, Any]
) -> None:
    # A worker stopping (SIGTERM) stops announcing itself at once but drains its running
    # tasks: its peers take it for dead while its POST is still under way. The reclaim must
    # leave that job alone (its answer is about to be recorded), or the paid task would be
    # lost (and with IMAGEGEN_RESUBMIT_UNKNOWN=true, paid twice).
    stack.clean()
    stack.sim_configure(
        concurrency_limit=3,
        pending_seconds=0.3,
        processing_seconds=1.0,
        faults={"hang_probability": 1.0, "hang_seconds": 20.0},
    )
    drainer = stack.start_worker("drainer", **SHIPPED)
    try:
        job_id = stack.send(request(prompt="posted while stopping"))
        stack.wait_for(
            lambda: bool(
                stack.sql(
                    "SELECT count(*) FROM jobs WHERE id = :id AND status = 'submitting'"
                    " AND submit_started_at IS NOT NULL",
                    id=job_id,
                )[0][0]
            ),
            timeout=30,
            what="the job's POST under way",
        )
        stack.start_worker("peer", **SHIPPED)
        stack.sim_configure(faults={"hang_probability": 0.0})  # only that POST hangs
        drainer.popen.terminate()  # warm shutdown: the POST goes on
        stack.wait_for(
            lambda: _count_events(stack, "worker.reclaimed") >= 1,
            timeout=30,
            what="the peer reclaiming the stopping worker",
        )
        status_at_reclaim = stack.sql("SELECT status FROM jobs WHERE id = :id", id=job_id)[0][0]
        view = stack.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=60)
        report.update(
            status_when_reclaimed=status_at_reclaim,
            ended=view.status.value,
            error_code=view.error_code.value if view.error_code else None,
            upstream_tasks=len(stack.sim_tasks()),
        )
        assert status_at_reclaim == "submitting"  # the reclaim came while the POST hung
        assert view.status.value == "succeeded", view.error_message
        assert len(stack.sim_tasks()) == 1  # paid once, and that task is the job's
    finally:
        drainer.stop()
        stack.stop_workers()
        stack.clean()
