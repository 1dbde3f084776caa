"""What the service is doing now, read from the shared state (PostgreSQL and Redis).

Correct however many workers run: nothing here is a process's memory. Each query is
served by one of the partial indexes of ``worker/models.py`` (``ix_jobs_live``,
``ix_jobs_queued``, ``ix_job_deliveries_due``) except the count of dead deliveries, which
reads ``job_deliveries``. Used by the exporter at scrape time and by ``imagegen top``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from redis import Redis
from sqlalchemy import Connection, text

from api_schema import DeliveryState, JobStatus
from worker.states import HOLDING_SLOT, LIVE, POLLED, sql_list
from worker.upstream.gate import UpstreamGate

from . import store

#: ``imagegen top``'s "last hour", in whole minutes (the ended-jobs hashes' resolution).
LAST_HOUR_MINUTES: Final = 60

_LIVE_JOBS: Final = text(
    "SELECT status, count(*), extract(epoch FROM now() - min(created_at)) "  # noqa: S608
    f"FROM jobs WHERE status IN ({sql_list(LIVE)}) GROUP BY status"
)
#: How late a next step may be before it counts as overdue (a poll claimed this instant).
OVERDUE_GRACE_SECONDS: Final = 5
# Jobs someone must move on (holding a slot, or cancelled and still followed) whose next step
# is late; queued jobs wait for a slot, not for a step (the backlog shows them).
# count(*) OVER () is computed before the LIMIT: the number of overdue jobs and the oldest.
_OVERDUE: Final = text(
    "SELECT count(*) OVER (), id, extract(epoch FROM now() - next_check_at) "  # noqa: S608
    f"FROM jobs WHERE (status IN ({sql_list(HOLDING_SLOT)}) OR (status = 'cancelled' "
    "AND next_check_at IS NOT NULL)) "
    f"AND next_check_at < now() - interval '{OVERDUE_GRACE_SECONDS} seconds' "
    "ORDER BY next_check_at LIMIT 1"
)
_DELIVERIES: Final = text(
    "SELECT state, count(*) FROM job_deliveries WHERE state IN (:pending, :dead) GROUP BY state"
)


@dataclass(frozen=True)
class OverdueJob:
    """The live job whose next step is the most overdue."""

    job_id: str
    late_seconds: float


@dataclass(frozen=True)
class JobCounts:
    """Live jobs by status, and the queue."""

    by_status: dict[JobStatus, int]  # every live status, zeros included
    oldest_queued_age_seconds: float | None  # None: nothing queued

    @property
    def backlog(self) -> int:
        """Queued jobs."""
        return self.by_status[JobStatus.QUEUED]

    @property
    def slots_used(self) -> int:
        """Jobs holding an upstream concurrency slot (``states.HOLDING_SLOT``)."""
        return sum(self.by_status[s] for s in HOLDING_SLOT)

    @property
    def in_flight(self) -> int:
        """Jobs with an upstream task running (pending or processing)."""
        return sum(self.by_status[s] for s in POLLED)


@dataclass(frozen=True)
class Overdue:
    """Live jobs whose next step (``next_check_at``) is in the past."""

    count: int
    oldest: OverdueJob | None


@dataclass(frozen=True)
class Deliveries:
    """Job ends still to deliver, and those given up."""

    pending: int
    dead: int


@dataclass(frozen=True)
class Requests:
    """The shared upstream request budget now."""

    used: int  # requests in the limiter's current window (about 60 s)
    budget: int  # settings.upstream_rpm; 0: unlimited
    paused_seconds: float  # left of an upstream-ordered pause


@dataclass(frozen=True)
class Snapshot:
    """The service now."""

    taken_at: datetime
    jobs: JobCounts
    slots_limit: int
    overdue: Overdue
    deliveries: Deliveries
    requests: Requests | None  # None: Redis did not answer
    # jobs ended in the last hour by (status, error code or "none"); None: Redis did not answer
    ended_last_hour: dict[tuple[str, str], int] | None = field(default=None)

    @property
    def errors_last_hour(self) -> dict[str, int] | None:
        """Jobs that ended with an error code in the last hour, by code."""
        if self.ended_last_hour is None:
            return None
        errors: dict[str, int] = {}
        for (_, code), n in self.ended_last_hour.items():
            if code != "none":
                errors[code] = errors.get(code, 0) + n
        return dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])))

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``imagegen top --json``)."""
        oldest = self.overdue.oldest
        return {
            "taken_at": self.taken_at.isoformat(),
            "jobs": {s.value: n for s, n in self.jobs.by_status.items()},
            "backlog": self.jobs.backlog,
            "oldest_queued_age_seconds": self.jobs.oldest_queued_age_seconds,
            "in_flight": self.jobs.in_flight,
            "slots": {"used": self.jobs.slots_used, "limit": self.slots_limit},
            "overdue": {
                "count": self.overdue.count,
                "oldest": (
                    {"job_id": oldest.job_id, "late_seconds": oldest.late_seconds}
                    if oldest
                    else None
                ),
            },
            "deliveries": {"pending": self.deliveries.pending, "dead": self.deliveries.dead},
            "requests": (
                {
                    "used": self.requests.used,
                    "budget": self.requests.budget,
                    "paused_seconds": self.requests.paused_seconds,
                }
                if self.requests
                else None
            ),
            "errors_last_hour": self.errors_last_hour,
        }


def job_counts(connection: Connection) -> JobCounts:
    """Live jobs by status and the age of the oldest queued one (one statement)."""
    by_status = dict.fromkeys(LIVE, 0)
    oldest: float | None = None
    for status, count, age in connection.execute(_LIVE_JOBS):
        by_status[JobStatus(status)] = int(count)
        if status == JobStatus.QUEUED.value:
            oldest = float(age)
    return JobCounts(by_status, oldest)


def overdue(connection: Connection) -> Overdue:
    """Live jobs whose next step is overdue, and the most overdue one (one statement)."""
    row = connection.execute(_OVERDUE).first()
    if row is None:
        return Overdue(0, None)
    return Overdue(int(row[0]), OverdueJob(str(row[1]), float(row[2])))


def deliveries(connection: Connection) -> Deliveries:
    """Pending and dead deliveries (one statement)."""
    states = {DeliveryState.PENDING.value: 0, DeliveryState.DEAD.value: 0}
    params = {"pending": DeliveryState.PENDING.value, "dead": DeliveryState.DEAD.value}
    for state, count in connection.execute(_DELIVERIES, params):
        states[state] = int(count)
    return Deliveries(states[DeliveryState.PENDING.value], states[DeliveryState.DEAD.value])


def requests(gate: UpstreamGate) -> Requests:
    """The request budget's use in the current window (no token taken)."""
    return Requests(gate.used(), gate.budget, gate.paused_for())


def ended_last_hour(redis: Redis) -> dict[tuple[str, str], int]:
    """Jobs that ended in the last hour, by status and error code (workers' records)."""
    return store.ended_since(redis, LAST_HOUR_MINUTES, time.time())


def take(connection: Connection, redis: Redis, gate: UpstreamGate, slots_limit: int) -> Snapshot:
    """The whole snapshot; the Redis parts are None when Redis does not answer."""
    from redis.exceptions import RedisError

    counts = job_counts(connection)
    late = overdue(connection)
    pending = deliveries(connection)
    used: Requests | None
    last_hour: dict[tuple[str, str], int] | None
    try:
        used = requests(gate)
        last_hour = ended_last_hour(redis)
    except RedisError:
        used, last_hour = None, None
    return Snapshot(
        taken_at=datetime.now(UTC),
        jobs=counts,
        slots_limit=slots_limit,
        overdue=late,
        deliveries=pending,
        requests=used,
        ended_last_hour=last_hour,
    )


class Reader:
    """Takes snapshots for one process (the exporter, ``imagegen top``)."""

    def __init__(self, redis_url: str, *, rpm: int, slots_limit: int) -> None:
        # A short timeout: a scrape or a frame must not hang on a Redis that does not answer.
        self.redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.gate = UpstreamGate(self.redis, rpm=rpm)
        self.slots_limit = slots_limit

    def take(self) -> Snapshot:
        """A snapshot; the database's figures all from one instant (one REPEATABLE READ
        transaction), so a job moving between statements is not counted twice."""
        from worker.db import get_engine

        with get_engine().connect() as connection:
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                return take(connection, self.redis, self.gate, self.slots_limit)

    def close(self) -> None:
        """Close the Redis connections."""
        self.redis.close()
