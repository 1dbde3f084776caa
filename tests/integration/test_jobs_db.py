"""The state machine against real PostgreSQL: races, admission order, dedupe of messages."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from api_schema import ErrorCode, JobStatus
from tests.harness import Stack, request
from worker import jobs
from worker.db import autocommit, session_scope

T = TypeVar("T")


@pytest.fixture
def db(stack: Stack) -> Iterator[Stack]:
    """The stack's database, emptied."""
    stack.sql("TRUNCATE jobs, job_events, job_images, job_aliases, job_deliveries")
    yield stack
    stack.sql("TRUNCATE jobs, job_events, job_images, job_aliases, job_deliveries")


def _accept(body: object, job_id: str | None = None) -> jobs.Accepted:
    with session_scope() as session:
        return jobs.accept(session, job_id or str(uuid.uuid4()), body, default_deadline_seconds=600)


def _claim(limit: int) -> list[str]:
    with autocommit() as connection:
        return jobs.admit(connection, limit).admitted


def _race(n: int, fn: Callable[[], T]) -> list[T]:
    """Run ``fn`` in ``n`` threads released at the same moment."""
    barrier = threading.Barrier(n)
    results: list[T] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        value = fn()
        with lock:
            results.append(value)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _status(job_id: str) -> str:
    with session_scope() as session:
        view = jobs.view(session, job_id)
    assert view is not None
    return view.status.value


def test_racing_transitions_have_exactly_one_winner(db: Stack) -> None:
    job_id = _accept(request()).job_id

    def move() -> JobStatus | None:
        with session_scope() as session:
            return jobs.transition(
                session, job_id, JobStatus.CANCELLED, expected=[JobStatus.QUEUED]
            )

    results = _race(8, move)
    assert results.count(JobStatus.QUEUED) == 1
    assert results.count(None) == 7
    events = db.sql("SELECT to_status FROM job_events WHERE job_id = :j", j=job_id)
    assert sorted(r[0] for r in events) == ["cancelled", "queued"]


def test_admission_never_exceeds_the_limit_under_concurrent_claims(db: Stack) -> None:
    for _ in range(30):
        _accept(request())

    def claim() -> list[str]:
        return _claim(3)

    claimed = [i for batch in _race(6, claim) for i in batch]
    assert len(claimed) == 3
    assert len(set(claimed)) == 3
    assert db.sql("SELECT count(*) FROM jobs WHERE status = 'submitting'")[0][0] == 3
    # a full upstream admits nothing more
    assert claim() == []
    # one slot frees: exactly one more is admitted
    with session_scope() as session:
        assert jobs.fail(session, claimed[0], ErrorCode.UPSTREAM_REJECTED, "no")
    assert len(claim()) == 1


def test_admission_order_is_priority_then_age(db: Stack) -> None:
    ids = {}
    for label, priority in [("a5", 5), ("b9", 9), ("c5", 5), ("d0", 0), ("e9", 9)]:
        ids[label] = _accept(request(priority=priority)).job_id
    order = []
    for _ in range(5):
        (admitted,) = _claim(1)
        order.append(next(k for k, v in ids.items() if v == admitted))
        with session_scope() as session:
            jobs.fail(session, admitted, ErrorCode.UPSTREAM_REJECTED, "done")
    assert order == ["b9", "e9", "a5", "c5", "d0"]


def test_a_post_is_started_once_however_many_messages_ask(db: Stack) -> None:
    job_id = _accept(request()).job_id
    assert _claim(5) == [job_id]

    def begin() -> object:
        with session_scope() as session:
            return jobs.begin_submit(session, job_id, answer_within=30)

    payloads = [p for p in _race(6, begin) if p is not None]
    assert len(payloads) == 1
    assert db.sql("SELECT submit_attempts FROM jobs WHERE id = :j", j=job_id)[0][0] == 1


def test_duplicate_poll_messages_are_dropped_by_sequence(db: Stack) -> None:
    job_id = _accept(request()).job_id
    assert _claim(1) == [job_id]
    with session_scope() as session:
        jobs.begin_submit(session, job_id, answer_within=30)
        assert jobs.record_submitted(session, job_id, "task-1", first_poll_in=1)

    def claim(seq: int) -> Callable[[], jobs.PollTicket | None]:
        def go() -> jobs.PollTicket | None:
            with session_scope() as session:
                return jobs.claim_poll(session, job_id, seq, hold_for=10)

        return go

    tickets = [t for t in _race(5, claim(0)) if t is not None]
    assert len(tickets) == 1
    assert tickets[0].seq == 1
    assert tickets[0].upstream_task_id == "task-1"
    assert claim(0)() is None  # a late duplicate of poll 0
    assert claim(1)() is not None  # the chain goes on


def test_same_idempotency_key_under_a_race_makes_one_job(db: Stack) -> None:
    body = request(idempotency_key=f"key-{uuid.uuid4().hex}")
    results = _race(6, lambda: _accept(body))
    assert len({r.job_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert db.sql("SELECT count(*) FROM jobs")[0][0] == 1
    assert db.sql("SELECT count(*) FROM job_aliases")[0][0] == 5


def test_invalid_request_is_recorded_failed_with_the_field(db: Stack) -> None:
    accepted = _accept({"prompt": "x", "subject_reference_images": ["ftp://nope"]})
    assert accepted.status is JobStatus.FAILED
    with session_scope() as session:
        view = jobs.view(session, accepted.job_id)
    assert view is not None
    assert view.error_code is ErrorCode.INVALID_REQUEST
    assert "subject_reference_images.0" in (view.error_message or "")


def test_sweeper_takes_each_overdue_job_once(db: Stack) -> None:
    job_id = _accept(request()).job_id
    assert _claim(1) == [job_id]
    with session_scope() as session:
        jobs.begin_submit(session, job_id, answer_within=30)
        jobs.record_submitted(session, job_id, "task-9", first_poll_in=1)
    db.sql("UPDATE jobs SET next_check_at = now() - interval '10 minutes' WHERE id = :j", j=job_id)

    def take() -> list[jobs.Overdue]:
        with session_scope() as session:
            return jobs.take_overdue(session, stale_after=60, recheck_in=60)

    found = [o for batch in _race(4, take) for o in batch]
    assert [(o.job_id, o.status) for o in found] == [(job_id, JobStatus.PENDING)]
    assert take() == []


def test_queued_job_past_its_deadline_is_expired(db: Stack) -> None:
    job_id = _accept(request()).job_id
    db.sql("UPDATE jobs SET deadline_at = now() - interval '1 second' WHERE id = :j", j=job_id)
    assert _claim(5) == []  # never admitted once past its deadline
    with session_scope() as session:
        assert jobs.expire_overdue(session) == [job_id]
    with session_scope() as session:
        view = jobs.view(session, job_id)
    assert view is not None
    assert view.error_code is ErrorCode.DEADLINE_EXCEEDED


def test_cancel_refuses_a_job_whose_post_is_under_way(db: Stack) -> None:
    queued = _accept(request()).job_id
    sending = _accept(request()).job_id
    with session_scope() as session:
        done, status = jobs.cancel(session, queued)
    assert (done, status) == (True, JobStatus.CANCELLED)
    assert _claim(5) == [sending]
    with session_scope() as session:
        jobs.begin_submit(session, sending, answer_within=30)
    with session_scope() as session:
        done, status = jobs.cancel(session, sending)
    assert (done, status) == (False, JobStatus.SUBMITTING)
    assert _status(sending) == "submitting"


def test_admission_waits_for_the_lock_holder_and_sees_its_changes(db: Stack) -> None:
    # A holds the admission lock; a job is queued meanwhile and B asks for admission.
    # B must wait (not skip, or the job could be left queued) and then admit it.
    with session_scope() as a:
        a.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": jobs.ADMISSION_LOCK_KEY})
        late = _accept(request()).job_id
        result: list[list[str]] = []
        b = threading.Thread(target=lambda: result.append(_claim(10)))
        b.start()
        db.wait_for(
            lambda: (
                db.sql(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                    " WHERE l.locktype = 'advisory' AND NOT l.granted"
                    " AND d.datname = current_database()"
                )[0][0]
                == 1
            ),
            timeout=10,
            what="the second admission to wait for the lock",
        )
        assert not result  # still waiting while A holds the lock
    b.join(10)
    assert result == [[late]]
    assert _status(late) == "submitting"


@contextmanager
def _timeout(limit: str) -> Iterator[Connection]:
    """An autocommit connection whose statements give up after ``limit`` (reset before it
    goes back to the pool)."""
    with autocommit() as connection:
        connection.execute(text(f"SET statement_timeout = '{limit}'"))
        try:
            yield connection
        finally:
            connection.execute(text("RESET statement_timeout"))


def test_an_admission_with_nothing_waiting_does_not_wait_for_the_lock(db: Stack) -> None:
    # A freed slot with nothing queued and no probe waiting (most finishes when thousands
    # run under a high limit) has nothing to admit: it must not queue up behind the lock.
    _running(1)
    with session_scope() as a:
        a.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": jobs.ADMISSION_LOCK_KEY})
        with _timeout("5s") as connection:
            assert jobs.admit(connection, 3) == jobs.Admission([])
        # a job queued meanwhile: the next admission waits for the lock (it times out here)
        _accept(request())
        with _timeout("300ms") as connection, pytest.raises(OperationalError, match="timeout"):
            jobs.admit(connection, 3)
    assert len(_claim(3)) == 1  # and once the lock is free, it is admitted


def test_cancel_check_and_change_are_one_statement(db: Stack) -> None:
    # ``unsent`` is checked by the UPDATE itself: a POST that started after cancel read the
    # job still wins, whatever cancel saw before.
    job_id = _accept(request()).job_id
    assert _claim(5) == [job_id]
    with session_scope() as session:
        assert jobs.begin_submit(session, job_id, answer_within=30) is not None
    with session_scope() as session:
        cancelled = jobs.fail(
            session, job_id, ErrorCode.CANCELLED, "late", expected=[JobStatus.SUBMITTING],
            unsent=True,
        )  # fmt: skip
    assert cancelled is False
    assert _status(job_id) == "submitting"
    other = _accept(request()).job_id
    assert _claim(5) == [other]
    with session_scope() as session:
        assert jobs.fail(
            session, other, ErrorCode.CANCELLED, "early", expected=[JobStatus.SUBMITTING],
            unsent=True,
        )  # fmt: skip
    assert _status(other) == "cancelled"


def test_reclaim_leaves_a_post_under_way_until_its_answer_cannot_come(db: Stack) -> None:
    # A node taken for dead may be paused or draining, its POST still under way: that job
    # is taken only once the POST's answer window has passed; unsent submits at once.
    sending = _accept(request()).job_id
    unsent = _accept(request()).job_id
    assert sorted(_claim(5)) == sorted([sending, unsent])
    with session_scope() as session:
        assert jobs.begin_submit(session, sending, answer_within=30) is not None
    with session_scope() as session:
        taken = jobs.take_held(session, [sending, unsent], recheck_in=60)
    assert [(t.job_id, t.submit_started) for t in taken] == [(unsent, False)]
    db.sql("UPDATE jobs SET next_check_at = now() - interval '1 second' WHERE id = :id", id=sending)
    with session_scope() as session:
        taken = jobs.take_held(session, [sending, unsent], recheck_in=60)
    # the unsent one was pushed forward by the first take, still taken: a dead node's held
    # list is taken once; the POST whose answer can no longer come is taken now
    assert sorted((t.job_id, t.submit_started) for t in taken) == sorted(
        [(sending, True), (unsent, False)]
    )


# --- slot probes (migration 0009) -------------------------------------------------------------


def _running(limit: int) -> list[str]:
    """``limit`` jobs at the upstream, holding every slot."""
    running = []
    for i in range(limit):
        job_id = _accept(request()).job_id
        assert _claim(limit) == [job_id]
        with session_scope() as session:
            assert jobs.record_submitted(session, job_id, f"task-probe{i}", first_poll_in=1)
        running.append(job_id)
    return running


def _admit_probing(limit: int) -> jobs.Admission:
    with autocommit() as connection:
        return jobs.admit(connection, limit, probe_cap=2 * limit)


def test_a_full_upstream_with_a_backlog_admits_one_probe(db: Stack) -> None:
    running = _running(3)
    backlog = [_accept(request()).job_id for _ in range(3)]

    first = _admit_probing(3)
    assert first.admitted == []
    assert first.probe is not None and first.probe.job_id == backlog[0]
    assert len(first.probe.ages) == len(running)
    assert all(0 <= age < 60 for age in first.probe.ages)
    # one probe at a time: the next admission lets nobody in
    assert _admit_probing(3) == jobs.Admission([])
    # without probes, a full upstream admits nothing at all
    with autocommit() as connection:
        assert jobs.admit(connection, 3) == jobs.Admission([])
    events = db.sql(
        "SELECT detail FROM job_events WHERE job_id = :j AND to_status = 'submitting'",
        j=backlog[0],
    )
    assert events == [("slot probe",)]


def test_a_waiting_probe_goes_first_when_a_slot_frees(db: Stack) -> None:
    running = _running(3)
    backlog = [_accept(request()).job_id for _ in range(3)]
    probe = _admit_probing(3).probe
    assert probe is not None
    with autocommit() as connection:
        assert jobs.defer_submit(connection, probe.job_id, 60)

    with session_scope() as session:  # a poll sees one running job succeed
        assert jobs.fail(session, running[0], ErrorCode.UPSTREAM_FAILED, "ended")
    freed = _admit_probing(3)
    # the probe is sent now instead of a fourth job being admitted beside it
    assert freed == jobs.Admission([probe.job_id])
    assert db.sql("SELECT status FROM jobs WHERE id = :j", j=backlog[1]) == [("queued",)]


def test_a_waiting_probe_is_sent_when_a_slot_frees_with_nothing_else_queued(db: Stack) -> None:
    running = _running(3)
    last = _accept(request()).job_id  # the backlog's last job waits as the probe
    probe = _admit_probing(3).probe
    assert probe is not None and probe.job_id == last
    with autocommit() as connection:
        assert jobs.defer_submit(connection, last, 60)
    assert db.sql("SELECT count(*) FROM jobs WHERE status = 'queued'") == [(0,)]
    with session_scope() as session:
        assert jobs.fail(session, running[0], ErrorCode.UPSTREAM_FAILED, "ended")
    # nothing is queued, but a probe waits: the freed slot's admission still sends it
    assert _admit_probing(3) == jobs.Admission([last])


def test_a_probe_is_held_for_its_wait(db: Stack) -> None:
    _running(3)
    backlog = [_accept(request()).job_id for _ in range(2)]
    with autocommit() as connection:
        admission = jobs.admit_holding_probe(
            connection, 3, probe_cap=6, probe_wait=lambda ages: 40.0 + len(ages)
        )
    assert admission.admitted == []
    assert admission.probe is not None and admission.probe.job_id == backlog[0]
    assert admission.probe.send_in == 43.0  # the wait the caller chose from the three ages
    ((held,),) = db.sql(
        "SELECT extract(epoch FROM next_check_at - now()) FROM jobs WHERE id = :j", j=backlog[0]
    )
    assert 40 < float(held) <= 43


def test_a_slot_freed_while_a_probe_is_being_held_sends_it_at_once(db: Stack) -> None:
    running = _running(3)
    backlog = [_accept(request()).job_id for _ in range(2)]
    raced: list[jobs.Admission] = []

    def a_slot_frees_meanwhile(ages: list[float]) -> float:
        # between the admission and the hold, a poll sees a running job end, and the
        # admission that follows it runs: the probe is admitted but not held yet
        with session_scope() as session:
            assert jobs.fail(session, running[0], ErrorCode.UPSTREAM_FAILED, "ended")
        raced.append(_admit_probing(3))
        return 60.0

    with autocommit() as connection:
        admission = jobs.admit_holding_probe(
            connection, 3, probe_cap=6, probe_wait=a_slot_frees_meanwhile
        )
    # that admission could neither send the probe nor let another job in beside it...
    assert raced == [jobs.Admission([])]
    # ...so the probe goes now, not when its 60 s are up
    assert admission == jobs.Admission([backlog[0]])
    assert db.sql("SELECT status FROM jobs WHERE id = :j", j=backlog[1]) == [("queued",)]


def test_a_probe_sent_by_another_worker_before_the_second_look_has_the_next_held(
    db: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.jobs import repository

    running = _running(3)
    backlog = [_accept(request()).job_id for _ in range(2)]
    hold = repository.defer_submit
    others: list[jobs.Admission] = []

    def another_worker_sends_it(connection: Connection, job_id: str, seconds: float) -> bool:
        held = hold(connection, job_id, seconds)
        if not others:  # right after the first hold: a slot frees, another worker sends it
            with session_scope() as session:
                assert jobs.fail(session, running[0], ErrorCode.UPSTREAM_FAILED, "ended")
            others.append(_admit_probing(3))
            with session_scope() as session:
                assert jobs.begin_submit(session, job_id, answer_within=60) is not None
                assert jobs.record_submitted(session, job_id, "task-sent", first_poll_in=1)
        return held

    monkeypatch.setattr(repository, "defer_submit", another_worker_sends_it)
    with autocommit() as connection:
        admission = jobs.admit_holding_probe(
            connection, 3, probe_cap=6, probe_wait=lambda ages: 30.0
        )
    assert others == [jobs.Admission([backlog[0]])]  # the held probe went with that slot
    # every slot is taken again, and the second look planned the next probe: held too, not
    # sent at once into a full upstream
    assert admission.admitted == []
    assert admission.probe is not None and admission.probe.job_id == backlog[1]
    assert admission.probe.send_in == 30.0
    ((held,),) = db.sql(
        "SELECT extract(epoch FROM next_check_at - now()) FROM jobs WHERE id = :j", j=backlog[1]
    )
    assert 25 < float(held) <= 30


def test_an_accepted_probe_leaves_the_books_one_ahead_up_to_the_cap(db: Stack) -> None:
    limit = 2
    _running(limit)
    for _ in range(4):
        _accept(request())
    for n in range(limit):  # each probe accepted: the upstream had freed a slot unseen
        probe = _admit_probing(limit).probe
        assert probe is not None, f"probe {n}"
        with session_scope() as session:
            assert jobs.record_submitted(session, probe.job_id, f"task-extra{n}", first_poll_in=1)
    holding = db.sql("SELECT count(*) FROM jobs WHERE status IN ('pending', 'submitting')")
    assert holding == [(2 * limit,)]
    # the books may run at most one limit ahead of what the polls have seen
    assert _admit_probing(limit) == jobs.Admission([])


def test_pressure_counts_the_queue_the_slots_and_the_oldest_task(db: Stack) -> None:
    with autocommit() as connection:
        assert jobs.pressure(connection) == (0, 0, None)
    _running(2)
    for _ in range(3):
        _accept(request())
    db.sql("UPDATE jobs SET submitted_at = now() - interval '40 seconds' WHERE status = 'pending'")
    with autocommit() as connection:
        queued, holding, oldest = jobs.pressure(connection)
    assert (queued, holding) == (3, 2)
    assert oldest is not None and 40 <= oldest < 60


def test_poll_timing_reads_a_running_poll_without_claiming_it(db: Stack) -> None:
    (job_id,) = _running(1)
    db.sql("UPDATE jobs SET submitted_at = now() - interval '40 seconds' WHERE id = :j", j=job_id)
    with autocommit() as connection:
        timing = jobs.poll_timing(connection, job_id, 0)
        assert jobs.poll_timing(connection, job_id, 1) is None  # not that poll's turn
    assert timing is not None
    assert 40 <= timing.age < 60
    assert timing.check_in <= 1  # recorded with its first poll due in 1 s
    assert timing.left > 60  # the default deadline is far
    # only read: the poll is still there to claim, once
    with session_scope() as session:
        ticket = jobs.claim_poll(session, job_id, 0, hold_for=10)
    assert ticket is not None and ticket.seq == 1
    with autocommit() as connection:
        assert jobs.poll_timing(connection, job_id, 0) is None
        later = jobs.poll_timing(connection, job_id, 1)
    assert later is not None and 5 < later.check_in <= 10  # the claim's hold
    db.sql("UPDATE jobs SET status = 'cancelled' WHERE id = :j", j=job_id)
    with autocommit() as connection:
        assert jobs.poll_timing(connection, job_id, 1) is None  # cancelled: the claim decides
