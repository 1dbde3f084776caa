"""The transition table, poll scheduling and settings checks; no services needed."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from api_schema import TERMINAL_STATUSES, JobStatus
from worker import jobs
from worker.config import Settings
from worker.jobs.schedule import poll_delay, retry_delay


def test_terminal_statuses_have_no_way_out() -> None:
    for status in TERMINAL_STATUSES:
        assert jobs.TRANSITIONS[status] == frozenset()
        assert status.is_terminal


def test_every_status_is_reachable_from_queued() -> None:
    seen = {JobStatus.QUEUED}
    frontier = [JobStatus.QUEUED]
    while frontier:
        for nxt in jobs.TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(JobStatus)


def test_only_an_unaccepted_submit_goes_back_to_the_queue() -> None:
    back = [s for s, targets in jobs.TRANSITIONS.items() if JobStatus.QUEUED in targets]
    assert back == [JobStatus.SUBMITTING]
    # once the upstream has a task, the job can never be submitted again
    for status in (JobStatus.PENDING, JobStatus.PROCESSING):
        assert JobStatus.SUBMITTING not in jobs.TRANSITIONS[status]
        assert JobStatus.QUEUED not in jobs.TRANSITIONS[status]


def test_slot_holders_are_the_submitted_and_submitting_statuses() -> None:
    assert set(jobs.HOLDING_SLOT) == {
        JobStatus.SUBMITTING,
        JobStatus.PENDING,
        JobStatus.PROCESSING,
    }
    assert set(jobs.LIVE) == set(JobStatus) - TERMINAL_STATUSES


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (JobStatus.SUCCEEDED, JobStatus.FAILED),
        (JobStatus.PENDING, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.PENDING),
        (JobStatus.CANCELLED, JobStatus.QUEUED),
    ],
)
def test_illegal_transitions_are_refused_before_touching_the_database(
    source: JobStatus, target: JobStatus
) -> None:
    with pytest.raises(jobs.IllegalTransitionError):
        jobs.transition(None, "job", target, expected=[source])  # type: ignore[arg-type]


def _settings(**overrides: float) -> Settings:
    base = {
        "poll_initial_seconds": 3.0,
        "poll_interval_seconds": 1.0,
        "poll_backoff": 1.5,
        "poll_max_interval_seconds": 10.0,
        "poll_jitter": 0.0,
    }
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


def test_first_poll_waits_the_usual_duration_then_grows_to_the_cap() -> None:
    settings = _settings()
    delays = [poll_delay(i, settings) for i in range(10)]
    assert delays[0] == pytest.approx(3.0)
    assert delays[1:5] == pytest.approx([1.0, 1.5, 2.25, 3.375])
    assert max(delays) == pytest.approx(10.0)
    assert delays[-1] == pytest.approx(10.0)


def test_poll_jitter_stays_within_its_fraction() -> None:
    settings = _settings(poll_jitter=0.2)
    rng = random.Random(1)
    samples = [poll_delay(3, settings, rng) for _ in range(500)]
    assert min(samples) >= 2.25 * 0.8 - 1e-9
    assert max(samples) <= 2.25 * 1.2 + 1e-9
    assert len({round(s, 6) for s in samples}) > 100  # really spread out


def test_retry_delay_is_capped_and_respects_the_upstream_floor() -> None:
    settings = _settings()
    assert all(retry_delay(n, settings) <= settings.retry_max_interval_seconds for n in range(40))
    assert retry_delay(0, settings, floor=7.0) == 7.0


def test_countdowns_must_stay_far_below_the_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="visibility_timeout"):
        Settings(poll_max_interval_seconds=1000, visibility_timeout_seconds=3600)
    Settings(poll_max_interval_seconds=100, visibility_timeout_seconds=3600)
