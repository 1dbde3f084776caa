"""The operator CLI's rules: what --since means, which jobs may be retried."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from api_schema import JobStatus
from worker.jobs.operator import BadInputError, Refusal, parse_since, refusal

NOW = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        (" 30s ", timedelta(seconds=30)),
    ],
)
def test_since_as_a_duration(text: str, ago: timedelta) -> None:
    assert parse_since(text, NOW) == NOW - ago


def test_since_as_an_iso_time() -> None:
    assert parse_since("2026-11-30T08:00:00+02:00", NOW) == datetime(
        2026, 11, 30, 8, tzinfo=timezone(timedelta(hours=2))
    )
    assert parse_since("2026-11-30T08:00:00", NOW) == datetime(2026, 11, 30, 8, tzinfo=UTC)
    assert parse_since("2026-11-30", NOW) == datetime(2026, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "15", "m", "15x", "-2h", "yesterday", "2h ago"])
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(BadInputError, match="15m, 2h, 3d"):
        parse_since(text, NOW)


@pytest.mark.parametrize(
    ("status", "has_request", "retried_as", "force", "expected"),
    [
        (JobStatus.FAILED, True, None, False, None),
        (JobStatus.CANCELLED, True, None, False, None),
        (JobStatus.SUCCEEDED, True, None, False, Refusal.SUCCEEDED),
        (JobStatus.SUCCEEDED, True, None, True, None),
        (JobStatus.FAILED, True, "job-2", False, Refusal.ALREADY_RETRIED),
        (JobStatus.FAILED, True, "job-2", True, None),
        (JobStatus.FAILED, False, None, True, Refusal.NO_REQUEST),
        (JobStatus.QUEUED, True, None, True, Refusal.LIVE),
        (JobStatus.PROCESSING, True, None, False, Refusal.LIVE),
        (JobStatus.SUBMITTING, True, None, True, Refusal.LIVE),
    ],
)
def test_which_jobs_may_be_retried(
    status: JobStatus,
    has_request: bool,
    retried_as: str | None,
    force: bool,
    expected: Refusal | None,
) -> None:
    assert refusal(status, has_request=has_request, retried_as=retried_as, force=force) is expected
