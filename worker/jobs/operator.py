"""What operators do to jobs (``imagegen jobs ...``), as plain functions: list them, read a
job's history, retry one. The CLI only parses arguments and prints what these return.

A retry is a new job made from the old one's stored request (``jobs.request``), linked to it
by ``jobs.retry_of``, with an event on each job naming the other. It enters the pipeline as
any job does: it is recorded ``queued`` and the workers admit it (``retry`` asks for a
sweep, whose admission takes it in the same order as any queued job; should that message be
lost, the next scheduled sweep admits it from the database).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from pydantic import ValidationError
from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from api_schema import GenerationRequest, JobStatus, JobView, request_fingerprint
from worker.states import LIVE

from . import repository

#: ``15m``, ``2h``, ``3d``, ``1w`` (and ``30s``).
_AGO: Final = re.compile(r"\s*(\d{1,6})\s*([smhdw])\s*")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_LIST: Final = 10_000


class BadInputError(ValueError):
    """An operator's argument that cannot be used (the message says what is expected)."""


def parse_since(value: str, now: datetime) -> datetime:
    """The time ``value`` names: ``15m``, ``2h``, ``3d``, ``1w`` before ``now``, or an ISO
    8601 time (UTC when it names no zone)."""
    ago = _AGO.fullmatch(value)
    if ago is not None:
        return now - timedelta(seconds=int(ago.group(1)) * _UNITS[ago.group(2)])
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadInputError(
            f"--since: expected a duration such as 15m, 2h, 3d or an ISO 8601 time, got {value!r}"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def list_jobs(
    connection: Connection,
    *,
    status: JobStatus | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[JobView]:
    """Jobs of every tenant, newest first (the HTTP API's listing, without its tenant)."""
    if not 1 <= limit <= MAX_LIST:
        raise BadInputError(f"--limit: expected 1 to {MAX_LIST}, got {limit}")
    page = repository.listing(
        connection, tenant=None, status=status, created_after=since, limit=limit
    )
    return page.items


@dataclass(frozen=True)
class Event:
    """One line of a job's history."""

    at: datetime
    from_status: str | None
    to_status: str
    detail: str | None
    worker: str | None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "at": self.at.isoformat(),
            "from": self.from_status,
            "to": self.to_status,
            "detail": self.detail,
            "worker": self.worker,
        }


@dataclass(frozen=True)
class History:
    """A job's events, oldest first (``job_id``: the job an idempotency alias stands for)."""

    job_id: str
    events: list[Event]


_RESOLVE: Final = text(
    "SELECT id FROM jobs WHERE id = coalesce("
    "(SELECT job_id FROM job_aliases WHERE alias_id = :id), :id)"
)
# In the order they were written: ids grow with each insert, and one job's changes are
# serialised by its row lock (several events of one statement share one ``at``).
_EVENTS: Final = text(
    "SELECT at, from_status, to_status, detail, worker FROM job_events "
    "WHERE job_id = :id ORDER BY id"
)


def history(connection: Connection, job_id: str) -> History | None:
    """The job's events (following an idempotency alias); None when there is no such job."""
    found = connection.execute(_RESOLVE, {"id": job_id}).scalar()
    if found is None:
        return None
    rows = connection.execute(_EVENTS, {"id": found}).all()
    return History(str(found), [Event(*row) for row in rows])


# --- retry ---------------------------------------------------------------------------------


class Refusal(StrEnum):
    """Why a job is not retried."""

    NOT_FOUND = "not_found"
    LIVE = "live"  # still running: it may yet succeed (cancel it first)
    SUCCEEDED = "succeeded"  # retrying it pays again for what was delivered (--force)
    NO_REQUEST = "no_request"  # an invalid request, or a refused message: nothing to run
    ALREADY_RETRIED = "already_retried"  # once is what an operator means, twice costs twice


@dataclass(frozen=True)
class Refused:
    """The job is not retried; ``message`` says why and what to do."""

    reason: Refusal
    message: str


@dataclass(frozen=True)
class Retried:
    """A new job made from the old one's request, queued."""

    job_id: str
    retry_of: str
    old_status: JobStatus


def refusal(
    status: JobStatus, *, has_request: bool, retried_as: str | None, force: bool
) -> Refusal | None:
    """Whether a job in ``status`` may be retried (pure: the rule in one place)."""
    if status in LIVE:
        return Refusal.LIVE
    if not has_request:
        return Refusal.NO_REQUEST
    if force:
        return None
    if status is JobStatus.SUCCEEDED:
        return Refusal.SUCCEEDED
    if retried_as is not None:
        return Refusal.ALREADY_RETRIED
    return None


_OLD: Final = text(
    "SELECT id, status, request, deliver_to, tenant FROM jobs WHERE id = coalesce("
    "(SELECT job_id FROM job_aliases WHERE alias_id = :id), :id) FOR UPDATE"
)
# A statement of its own, after the lock: under READ COMMITTED it sees a retry that a
# concurrent ``record_retry`` committed while this one waited for the lock.
_RETRIED_AS: Final = text(
    "SELECT id FROM jobs WHERE retry_of = :id ORDER BY created_at DESC, id DESC LIMIT 1"
)
# The new job, its first event and the note on the old job, in one statement.
_INSERT_RETRY: Final = text(
    "WITH job AS (INSERT INTO jobs (id, status, priority, request, idempotency_key, metadata, "
    "request_hash, deliver_to, tenant, deadline_at, next_check_at, retry_of) VALUES ("
    "CAST(:p_id AS varchar), 'queued', :p_priority, :p_request, NULL, :p_metadata, :p_hash, "
    ":p_deliver, :p_tenant, now() + :p_deadline, now(), :p_old) RETURNING id), "
    "first AS (INSERT INTO job_events (job_id, from_status, to_status, detail, worker) "
    "SELECT id, NULL, 'queued', :p_new_detail, :p_worker FROM job) "
    # A note, not a transition: the old job stays where it ended (from = to).
    "INSERT INTO job_events (job_id, from_status, to_status, detail, worker) "
    "SELECT :p_old, :p_old_status, :p_old_status, :p_old_detail, :p_worker FROM job"
).bindparams(
    bindparam("p_request", type_=JSONB),
    bindparam("p_metadata", type_=JSONB),
    bindparam("p_deliver", type_=JSONB),
)


def record_retry(
    connection: Connection, job_id: str, *, force: bool, default_deadline_seconds: int
) -> Retried | Refused:
    """Make a new queued job from ``job_id``'s stored request, linked to it (run it in a
    transaction: the old job's row stays locked until the new one is committed, so two
    operators retrying at once make one retry)."""
    row = connection.execute(_OLD, {"id": job_id}).first()
    if row is None:
        return Refused(Refusal.NOT_FOUND, f"no job {job_id}")
    old_id, status = str(row[0]), JobStatus(row[1])
    stored, deliver_to, tenant = row[2], row[3], str(row[4])
    retried_as = connection.execute(_RETRIED_AS, {"id": old_id}).scalar()
    has_request = isinstance(stored, dict)
    refused = refusal(status, has_request=has_request, retried_as=retried_as, force=force)
    if refused is not None:
        return Refused(refused, _explain(refused, old_id, status, retried_as))
    try:
        # The idempotency key stays with the old job (unique per tenant): the retry has none.
        request = GenerationRequest.model_validate({**stored, "idempotency_key": None})
    except ValidationError as exc:
        reason = f"its stored request is no longer valid ({exc.error_count()} problem(s))"
        return Refused(Refusal.NO_REQUEST, f"job {old_id} cannot be retried: {reason}")
    new_id = str(uuid.uuid4())
    params = repository.insert_job_params(
        new_id,
        request,
        deliver_to=deliver_to or [],
        tenant=tenant,
        default_deadline_seconds=default_deadline_seconds,
        fingerprint=request_fingerprint(request),
    )
    params |= {
        "p_old": old_id,
        "p_old_status": status.value,
        "p_new_detail": f"retry of {old_id}",
        "p_old_detail": f"retried as {new_id}",
    }
    connection.execute(_INSERT_RETRY, params)
    return Retried(new_id, old_id, status)


def _explain(refused: Refusal, job_id: str, status: JobStatus, retried_as: str | None) -> str:
    return {
        Refusal.NOT_FOUND: f"no job {job_id}",
        Refusal.LIVE: f"job {job_id} is {status.value}: it may still succeed "
        "(cancel it first to retry it)",
        Refusal.SUCCEEDED: f"job {job_id} succeeded: a retry pays again "
        "(use --force to retry it anyway)",
        Refusal.NO_REQUEST: f"job {job_id} has no stored request to run again "
        "(it was refused before it could run)",
        Refusal.ALREADY_RETRIED: f"job {job_id} was already retried as {retried_as} "
        "(use --force to retry it again)",
    }[refused]


def request_admission() -> bool:
    """Ask the workers to admit queued jobs now (a sweep, as ``imagegen cancel`` does);
    False when the broker could not be reached (the scheduled sweep admits them then)."""
    from kombu.exceptions import OperationalError

    from .tasks import sweep

    try:
        sweep.apply_async()
    except OperationalError:
        return False
    return True
