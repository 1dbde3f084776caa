"""Horizontal scaling: three separate worker processes share one team's upstream limits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from api_schema import JobStatus
from tests.harness import Stack, request

JOBS = 64
LIMIT = 3


@pytest.fixture(scope="module")
def three_workers(stack: Stack) -> Iterator[Stack]:
    """Three ``celery worker`` processes, each with its own pools, like three hosts."""
    stack.clean()
    for name in ("w1", "w2", "w3"):
        # exact admission: no slot probes (tests/integration/test_budget.py has them)
        stack.start_worker(
            name,
            concurrency=4,
            IMAGEGEN_UPSTREAM_CONCURRENCY=str(LIMIT),
            IMAGEGEN_SLOT_PROBES="false",
        )
    try:
        yield stack
    finally:
        stack.stop_workers()


def test_three_workers_never_exceed_the_upstream_limit(three_workers: Stack) -> None:
    st = three_workers
    st.clean()
    st.sim_configure(concurrency_limit=LIMIT, pending_seconds=0.1, processing_seconds=0.3)
    bodies = [request(priority=i % 10) for i in range(JOBS)]
    ids = [st.send(body) for body in bodies]

    jobs = st.wait_ended(ids, timeout=180)

    assert Counter(j.status for j in jobs.values()) == {JobStatus.SUCCEEDED: JOBS}
    prompts = Counter(t["prompt"] for t in st.sim_tasks())
    assert prompts == Counter({b["prompt"]: 1 for b in bodies})  # each submitted exactly once
    stats = st.sim_stats()
    assert stats["submits_accepted"] == JOBS
    assert stats["max_concurrency"] <= LIMIT
    assert stats["max_concurrency"] == LIMIT  # and the slots were actually used
    assert stats["submits_rejected"] == {}  # not a single 429 from over-admission
    # the work really was spread: every worker made transitions, none did it all
    by_worker = Counter(
        w.split("@")[0] for (w,) in st.sql("SELECT worker FROM job_events WHERE worker IS NOT NULL")
    )
    assert set(by_worker) == {"w1", "w2", "w3"}, by_worker
    assert max(by_worker.values()) < sum(by_worker.values())
    submitted_by = Counter(
        w.split("@")[0]
        for (w,) in st.sql("SELECT worker FROM job_events WHERE to_status = 'pending'")
    )
    assert len(submitted_by) > 1, submitted_by
