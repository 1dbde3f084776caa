"""The team's request budget and concurrency with three workers on the shipped poll defaults:
learned poll placement and slot probes, against a simulator that refuses every request over
the limits (so one refusal of the rate kind fails the test)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from api_schema import JobStatus
from tests.harness import Stack, request
from worker.jobs.durations import KEY as DURATIONS_KEY

LIMIT = 2
RPM = 20
JOBS = 12


@pytest.fixture
def three_workers(stack: Stack) -> Iterator[Stack]:
    stack.clean()
    shipped = {
        # the team's tier; every poll setting back to its shipped default
        "IMAGEGEN_UPSTREAM_CONCURRENCY": str(LIMIT),
        "IMAGEGEN_UPSTREAM_RPM": str(RPM),
        "IMAGEGEN_POLL_ADAPTIVE": "true",
        "IMAGEGEN_SLOT_PROBES": "true",
        "IMAGEGEN_POLL_INITIAL_SECONDS": "3",
        "IMAGEGEN_POLL_INTERVAL_SECONDS": "1",
        "IMAGEGEN_POLL_MAX_INTERVAL_SECONDS": "10",
        "IMAGEGEN_POLL_JITTER": "0.2",
    }
    for name in ("b1", "b2", "b3"):
        stack.start_worker(name, concurrency=4, **shipped)
    try:
        yield stack
    finally:
        stack.stop_workers()
        stack.clean()


def test_three_workers_keep_to_the_request_budget_and_the_slots(three_workers: Stack) -> None:
    st = three_workers
    st.sim_configure(
        concurrency_limit=LIMIT,
        rpm_limit=RPM,
        timing="lognormal",
        duration_median_seconds=1.5,
        duration_sigma=0.5,
        pending_median_seconds=0.2,
        timing_seed=12,
    )
    bodies = [request() for _ in range(JOBS)]
    ids = [st.send(body) for body in bodies]

    # 12 submits and at least 12 polls cannot fit one window of 20 requests: the gate must
    # hold the workers back for most of a minute, and then let them finish.
    jobs = st.wait_ended(ids, timeout=240)

    assert Counter(j.status for j in jobs.values()) == {JobStatus.SUCCEEDED: JOBS}
    stats = st.sim_stats()
    # refused for the rate: never, neither a submit nor a poll
    assert "rate_limit" not in stats["submits_rejected"], stats
    assert "rate_limit" not in stats["polls_by_status"], stats
    # refused for concurrency: only the slot probes, which are never charged
    assert set(stats["submits_rejected"]) <= {"concurrency_limit"}, stats
    assert stats["max_concurrency"] <= LIMIT
    # each job became exactly one upstream task
    assert Counter(t["prompt"] for t in st.sim_tasks()) == Counter({b["prompt"]: 1 for b in bodies})
    # the budget bound the run: more requests than one window allows went out
    requests = stats["submits_accepted"] + sum(stats["submits_rejected"].values())
    requests += stats["polls"]
    assert requests > RPM, stats
    # every finished task taught the shared model its duration
    learned = st.redis().llen(DURATIONS_KEY)
    assert learned == JOBS
