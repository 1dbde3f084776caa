"""The learned durations: shared by every process through Redis, kept in PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness import Stack, request
from worker import jobs
from worker.db import session_scope
from worker.jobs.durations import (
    KEEP,
    KEY,
    MIN_SAMPLES,
    REFRESH_SECONDS,
    UNLEARNED_REFRESH_SECONDS,
    Learned,
)


class Clock:
    """A clock the test moves: a process's copy refreshes only when it says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(stack: Stack) -> Iterator[Stack]:
    stack.sql("TRUNCATE jobs, job_events, job_images, job_aliases, job_deliveries")
    stack.redis().delete(KEY)
    yield stack
    stack.redis().delete(KEY)


def test_every_process_learns_what_any_of_them_finished(db: Stack) -> None:
    clock_a, clock_b = Clock(), Clock()
    a = Learned(db.redis(), clock=clock_a)
    b = Learned(db.redis(), clock=clock_b)  # another process, another host
    assert a.current() is None  # nothing finished, nothing in PostgreSQL
    for ms in (4000, 8000, 6000)[: MIN_SAMPLES - 1]:
        a.record(ms)
    clock_b.now += 10
    assert b.current() is None  # too little to go on
    for ms in (4000, 8000, 6000, 5000, 7000):
        a.record(ms)
    assert b.known_for() == 0.0
    clock_b.now += UNLEARNED_REFRESH_SECONDS  # knowing too little, it looks again soon
    learned = b.current()
    assert learned is not None
    learned_at = clock_b.now
    assert learned.samples[0] == 4.0 and learned.samples[-1] == 8.0
    a.record(None)  # an answer without a duration teaches nothing
    a.record(0)
    assert db.redis().llen(KEY) == MIN_SAMPLES - 1 + 5
    # once it knows enough, its copy is read again every REFRESH_SECONDS only
    a.record(20_000)
    clock_b.now += UNLEARNED_REFRESH_SECONDS
    assert b.current() == learned
    clock_b.now += REFRESH_SECONDS
    again = b.current()
    assert again is not None and again.samples[-1] == 20.0
    assert b.known_for() == clock_b.now - learned_at > 0  # had a model since, unbroken


def test_the_model_keeps_the_latest_tasks_only(db: Stack) -> None:
    learned = Learned(db.redis())
    for i in range(KEEP + 20):
        learned.record(1000 + i)
    assert db.redis().llen(KEY) == KEEP
    newest = db.redis().lindex(KEY, 0)
    assert newest is not None and int(newest) == 1000 + KEEP + 19


def test_after_redis_lost_it_the_model_comes_back_from_postgresql(db: Stack) -> None:
    durations_ms = [3000, 9000, 5000, 7000]
    for ms in durations_ms:
        job_id = str(uuid.uuid4())
        with session_scope() as session:
            jobs.accept(session, job_id, request(), default_deadline_seconds=600)
        db.sql(
            "UPDATE jobs SET status = 'succeeded', duration_ms = :ms, finished_at = now() "
            "WHERE id = :id",
            ms=ms,
            id=job_id,
        )
    assert db.redis().llen(KEY) == 0  # Redis restarted: it keeps nothing on disk

    learned = Learned(db.redis()).current()

    assert learned is not None
    assert learned.samples == tuple(sorted(ms / 1000 for ms in durations_ms))
    # ...and every other process finds it in Redis again
    assert sorted(int(v) for v in db.redis().lrange(KEY, 0, -1)) == sorted(durations_ms)
