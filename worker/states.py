"""The job statuses' sets and legal transitions, defined once for Python and SQL alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from api_schema import TERMINAL_STATUSES, JobStatus

S = JobStatus
#: Legal transitions, as data. Anything else is refused.
TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = {
    S.QUEUED: frozenset({S.SUBMITTING, S.FAILED, S.CANCELLED}),
    # back to QUEUED only when the upstream definitely did not accept the POST (e.g. a 429)
    S.SUBMITTING: frozenset({S.PENDING, S.QUEUED, S.FAILED, S.CANCELLED}),
    S.PENDING: frozenset({S.PROCESSING, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.PROCESSING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
#: Statuses a job never leaves (the producer contract's own set).
TERMINAL: Final = tuple(s for s in JobStatus if s in TERMINAL_STATUSES)
#: Statuses of a job that is not finished.
LIVE: Final = (S.QUEUED, S.SUBMITTING, S.PENDING, S.PROCESSING)
#: Jobs that hold one of the team's upstream concurrency slots.
HOLDING_SLOT: Final = (S.SUBMITTING, S.PENDING, S.PROCESSING)
#: Jobs with an upstream task to poll.
POLLED: Final = (S.PENDING, S.PROCESSING)


def sql_list(statuses: Iterable[JobStatus]) -> str:
    """``'a','b'`` for an SQL ``IN (...)``: only enum values, never input, are spliced."""
    return ",".join(f"'{JobStatus(s).value}'" for s in statuses)
