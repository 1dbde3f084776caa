"""Nothing lost, nothing paid twice: real faults injected into a running pipeline."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from api_schema import ErrorCode, JobStatus, JobView
from tests.fault.conftest import FaultStack, restart_postgres
from tests.harness import request


def _audit(
    fs: FaultStack, bodies: list[dict[str, Any]], jobs: dict[str, JobView]
) -> dict[str, int]:
    """Check the promises over a finished run; return its figures."""
    tasks = Counter(t["prompt"] for t in fs.sim_tasks())
    by_id = {job_id: body["prompt"] for job_id, body in zip(jobs, bodies, strict=False)}
    duplicates = sum(1 for n in tasks.values() if n > 1)
    assert duplicates == 0, [p for p, n in tasks.items() if n > 1]
    unknown = 0
    for job_id, job in jobs.items():
        assert job.status.is_terminal
        prompt = by_id[job_id]
        if job.status is JobStatus.SUCCEEDED:
            assert tasks[prompt] == 1
            assert job.images
        else:
            # the only failure a crash may cause: a POST whose answer nobody stored
            assert job.error_code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN, (job_id, job.error_message)
            unknown += 1
    return {
        "succeeded": sum(j.status is JobStatus.SUCCEEDED for j in jobs.values()),
        "submit_outcome_unknown": unknown,
        "upstream_tasks": sum(tasks.values()),
        "duplicates": duplicates,
    }


def _send_all(fs: FaultStack, n: int) -> tuple[list[dict[str, Any]], list[str]]:
    bodies = [request() for _ in range(n)]
    return bodies, [
        fs.send(body, job_id=f"job-{i:04d}-{body['prompt'][-12:]}") for i, body in enumerate(bodies)
    ]


def test_sigkill_workers_at_random_moments(faults: FaultStack, report: dict[str, Any]) -> None:
    fs = faults
    fs.clean()
    fs.sim_configure(concurrency_limit=20, pending_seconds=0.2, processing_seconds=0.8)
    jobs_total = 240
    bodies, ids = _send_all(fs, jobs_total)
    rng = random.Random(20261123)
    killed: list[str] = []
    live_at_kills = 0
    for threshold in sorted(rng.sample(range(15, jobs_total - 40), 6)):
        fs.wait_for(lambda t=threshold: fs.count_ended() >= t, 180, f"{threshold} jobs ended")
        victim = rng.choice(fs.workers)
        live_at_kills += fs.live_jobs()
        killed.append(victim.name)
        fs.kill_worker(victim)
        fs.start_fault_worker(victim.name.split("-")[0])

    jobs = fs.wait_ended(ids, timeout=300)

    figures = _audit(fs, bodies, {i: jobs[i] for i in ids})
    touched = {
        job_id
        for job_id, worker in fs.sql(
            "SELECT job_id, worker FROM job_events WHERE worker IS NOT NULL"
        )
        if worker.split("@")[0] in killed
    }
    # jobs a killed worker had moved but not finished: someone else had to end them
    ended_by = dict(
        fs.sql(
            "SELECT job_id, worker FROM job_events WHERE to_status IN "
            "('succeeded', 'failed', 'cancelled') AND from_status IS DISTINCT FROM to_status"
        )
    )
    recovered = {j for j in touched if (ended_by.get(j) or "").split("@")[0] not in killed}
    report.update(
        jobs=jobs_total,
        kills=len(killed),
        live_at_kills=live_at_kills,
        finished_by_survivors=len(recovered),
        sweeper=fs.sweeper_totals(),
        **figures,
    )
    assert len(killed) == 6
    assert figures["succeeded"] + figures["submit_outcome_unknown"] == jobs_total
    assert recovered  # the kills really interrupted jobs, and other workers finished them


def test_redis_flushed_and_workers_restarted_mid_run(
    faults: FaultStack, report: dict[str, Any]
) -> None:
    fs = faults
    fs.clean()
    fs.sim_configure(concurrency_limit=20, pending_seconds=0.3, processing_seconds=1.5)
    bodies, ids = _send_all(fs, 150)
    fs.wait_for(lambda: fs.count_ended() >= 30, 120, "30 jobs ended")
    live_before = int(
        fs.sql("SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded','failed','cancelled')")[
            0
        ][0]
    )

    # Redis loses everything (queued requests, submits, polls, the limiter) and every worker
    # dies with the countdown messages it held in memory.
    for proc in list(fs.workers):
        fs.kill_worker(proc)
    fs.redis().flushdb()
    for base in ("a", "b"):
        fs.start_fault_worker(base)

    accepted = [row[0] for row in fs.sql("SELECT id FROM jobs")]
    jobs = fs.wait_ended(accepted, timeout=240)

    never_accepted = len(ids) - len(accepted)
    figures = _audit(
        fs,
        [b for b, i in zip(bodies, ids, strict=True) if i in jobs],
        {i: jobs[i] for i in ids if i in jobs},
    )
    report.update(
        jobs_sent=len(ids),
        accepted=len(accepted),
        live_at_flush=live_before,
        lost_before_acceptance=never_accepted,
        sweeper=fs.sweeper_totals(),
        **figures,
    )
    assert live_before > 0  # the flush really hit jobs in progress
    assert figures["succeeded"] + figures["submit_outcome_unknown"] == len(accepted)


def test_postgres_restarted_mid_run(faults: FaultStack, report: dict[str, Any]) -> None:
    fs = faults
    fs.clean()
    fs.sim_configure(concurrency_limit=20, pending_seconds=0.2, processing_seconds=0.8)
    bodies, ids = _send_all(fs, 150)
    fs.wait_for(lambda: fs.count_ended() >= 25, 120, "25 jobs ended")

    restart_postgres()

    jobs = fs.wait_ended(ids, timeout=240)
    figures = _audit(fs, bodies, {i: jobs[i] for i in ids})
    report.update(jobs=len(ids), restarts=1, sweeper=fs.sweeper_totals(), **figures)
    assert len(jobs) == len(ids)  # every request became a job, none lost in the outage
    assert figures["succeeded"] + figures["submit_outcome_unknown"] == len(ids)


def test_upstream_chaos_every_knob(faults: FaultStack, report: dict[str, Any]) -> None:
    fs = faults
    fs.clean()
    fs.sim_configure(
        concurrency_limit=10,
        pending_seconds=0.2,
        processing_seconds=0.5,
        faults={
            "seed": 4,
            "submit_500": 0.05,
            "submit_503": 0.05,
            "query_500": 0.1,
            "query_503": 0.1,
            "rate_burst_429": 0.1,
            "latency_ms": 20,
            "hang_probability": 0.03,
            "hang_seconds": 7,  # past the workers' 5 s read timeout
            "drop_after_create": 0.05,
            "malformed_json": 0.05,
            "fail_task": 0.1,
        },
    )
    bodies, ids = _send_all(fs, 100)
    jobs = fs.wait_ended(ids, timeout=300)

    tasks: dict[str, list[dict[str, Any]]] = {}
    for task in fs.sim_tasks():
        tasks.setdefault(task["prompt"], []).append(task)
    codes: Counter[str] = Counter()
    for job_id, body in zip(ids, bodies, strict=True):
        job, created = jobs[job_id], tasks.get(body["prompt"], [])
        assert len(created) <= 1, f"{job_id} was submitted {len(created)} times"
        codes[job.error_code.value if job.error_code else job.status.value] += 1
        if job.status is JobStatus.SUCCEEDED:
            assert created[0]["status"] == "success"
        elif job.error_code is ErrorCode.UPSTREAM_FAILED:
            assert created[0]["status"] == "failed"
        else:
            assert job.error_code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN, (job_id, job.error_message)
    injected = fs.sim_stats()["faults_injected"]
    report.update(jobs=len(ids), outcomes=dict(codes), faults_injected=injected)
    assert codes["succeeded"] > 0
    assert codes["upstream_failed"] > 0
    assert codes["submit_outcome_unknown"] > 0
    assert sum(codes.values()) == len(ids)
