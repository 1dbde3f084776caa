"""The job state machine: legal transitions, admission claims and queries. No Celery, no HTTP.

Every status change is one conditional ``UPDATE ... WHERE id = :id AND status IN (:expected)``
plus a ``job_events`` row in the same statement, so two workers racing on one job (a
redelivered message, a sweeper re-publish) cannot both win: the loser changes nothing.
The hot-path changes are single statements, which the workers run in autocommit.
All timestamps come from the database clock, so hosts with skewed clocks agree.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, cast
from urllib.parse import quote

from pydantic import ValidationError
from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Executable,
    Interval,
    Row,
    Table,
    TextClause,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, selectinload

from api_schema import (
    DeliveryView,
    ErrorCode,
    FieldError,
    GenerationRequest,
    ImageView,
    JobStatus,
    JobView,
    describe_validation_error,
    field_errors,
    problem_errors,
    request_fingerprint,
)
from worker.delivery import outbox, targets
from worker.delivery.targets import DeliveryPolicy
from worker.models import DroppedMessage, Job, JobAlias, JobImage
from worker.states import HOLDING_SLOT, LIVE, POLLED, TERMINAL, TRANSITIONS, sql_list

from . import ends

S = JobStatus
NO_POLICY: Final = DeliveryPolicy()
MAX_ERROR_MESSAGE: Final = 2000


#: The Celery node running the current task; recorded on each event it writes.
ACTOR: ContextVar[str | None] = ContextVar("imagegen_actor", default=None)


# Hot-path statements are Core statements or SQL text on the tables, run on a connection:
# the ORM-enabled insert/update machinery costs more CPU than the rest of a job's SQL.
J = cast(Table, Job.__table__)
A = cast(Table, JobAlias.__table__)
D = cast(Table, DroppedMessage.__table__)
I = cast(Table, JobImage.__table__)  # noqa: E741


def _later(name: str) -> ColumnElement[datetime]:
    # the database clock plus a bound interval (a timedelta)
    return func.now() + bindparam(name, type_=Interval())


# The statements every job runs, built once: no per-call construction or cache-key work.
# A new job and its first event in one statement (atomic without a transaction). An id that
# is already an idempotency alias never becomes a job of its own (it would shadow the alias).
_INSERT_JOB: Final = text(
    "WITH job AS (INSERT INTO jobs (id, status, priority, request, idempotency_key, metadata, "
    "request_hash, deliver_to, tenant, deadline_at, next_check_at) SELECT "
    "CAST(:p_id AS varchar), 'queued', :p_priority, :p_request, :p_key, :p_metadata, :p_hash, "
    ":p_deliver, :p_tenant, now() + :p_deadline, now() "
    "WHERE NOT EXISTS (SELECT 1 FROM job_aliases WHERE alias_id = CAST(:p_id AS varchar)) "
    "ON CONFLICT DO NOTHING RETURNING id) "
    "INSERT INTO job_events (job_id, from_status, to_status, worker) "
    "SELECT id, NULL, 'queued', :p_worker FROM job RETURNING job_id"
).bindparams(
    bindparam("p_request", type_=JSONB),
    bindparam("p_metadata", type_=JSONB),
    bindparam("p_deliver", type_=JSONB),
    bindparam("p_deadline", type_=Interval()),
)
# A request that cannot run, recorded failed with its event, in one statement.
# It ends at once, so its outbox rows are written by the same statement.
_INSERT_INVALID: Final = text(
    "WITH job AS (INSERT INTO jobs (id, status, deadline_at, finished_at, error_code, "  # noqa: S608
    "error_message, errors, request_hash, deliver_to, tenant) SELECT CAST(:p_id AS varchar), "
    "'failed', now(), now(), :p_code, :p_message, :p_errors, :p_hash, :p_deliver, :p_tenant "
    "WHERE NOT EXISTS (SELECT 1 FROM "
    "job_aliases WHERE alias_id = CAST(:p_id AS varchar)) ON CONFLICT DO NOTHING "
    "RETURNING id AS job_id, deliver_to), "
    "logged AS (INSERT INTO job_events (job_id, from_status, to_status, detail, worker) "
    "SELECT job_id, NULL, 'failed', :p_detail, :p_worker FROM job), "
    + outbox.INSERT_ROWS.format(source="job")
    + " SELECT job_id, ARRAY(SELECT id FROM outbox) FROM job"
).bindparams(bindparam("p_deliver", type_=JSONB), bindparam("p_errors", type_=JSONB))
_BEGIN_SUBMIT: Final = (
    update(J)
    .where(
        J.c.id == bindparam("p_id"),
        J.c.status == S.SUBMITTING.value,
        J.c.submit_started_at.is_(None),
    )
    .values(
        submit_started_at=func.now(),
        submit_attempts=J.c.submit_attempts + 1,
        updated_at=func.now(),
        next_check_at=_later("p_answer"),
    )
    .returning(J.c.request, J.c.submit_attempts)
)
_CLAIM_POLL: Final = (
    update(J)
    .where(
        J.c.id == bindparam("p_id"),
        or_(
            J.c.status.in_([S.PENDING.value, S.PROCESSING.value]),
            # a cancelled job whose upstream task is still followed for its bill
            and_(J.c.status == S.CANCELLED.value, J.c.next_check_at.is_not(None)),
        ),
        J.c.poll_count == bindparam("p_seq"),
        J.c.upstream_task_id.is_not(None),
    )
    .values(poll_count=J.c.poll_count + 1, next_check_at=_later("p_hold"))
    .returning(
        J.c.upstream_task_id,
        J.c.status,
        J.c.deadline_at <= func.now(),
        func.extract("epoch", J.c.deadline_at - func.now()),
        func.extract("epoch", func.now() - J.c.submitted_at),  # metrics: detection lag
    )
)


#: Where the state machine runs: a plain connection, in a transaction or in autocommit for
#: single statements (the workers' hot path, no ORM overhead), or a session (the CLI and
#: anything that reads whole jobs).
Db = Session | Connection


def _run(session: Db, statement: Executable, params: Any = None) -> CursorResult[*tuple[Any, ...]]:
    connection = session if isinstance(session, Connection) else session.connection()
    return connection.execute(statement, params)


def _scalar(session: Db, statement: Executable, params: Any = None) -> Any:
    return _run(session, statement, params).scalar()


class IllegalTransitionError(ValueError):
    """A transition the state machine does not allow."""


class _Now:
    """A transition value: the database clock at the time of the change."""

    def __repr__(self) -> str:
        return "NOW"


NOW: Final = _Now()


@dataclass(frozen=True)
class After:
    """A transition value: the database clock plus ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class _Expr:
    """A transition value computed from the row's columns (a constant of this module)."""

    sql: str


#: ``next_check_at`` of a job cancelled while the upstream may still run its task: kept, so
#: its poll chain goes on quietly (no slot held) until the task ends and its bill is known.
_FOLLOW_UPSTREAM: Final = _Expr(
    "CASE WHEN jobs.upstream_task_id IS NOT NULL THEN coalesce(jobs.next_check_at, now()) END"
)


def _assignment(column: str, value: object, params: dict[str, Any]) -> str:
    if column not in J.c:
        raise ValueError(f"jobs has no column {column!r}")
    if value is NOW:
        return f"{column} = now()"
    if isinstance(value, _Expr):
        return f"{column} = {value.sql}"
    params[column] = float(value.seconds) if isinstance(value, After) else value
    if isinstance(value, After):
        return f"{column} = now() + make_interval(secs => :{column})"
    return f"{column} = :{column}"


_IMAGES_CTE: Final = (
    ", stored AS (INSERT INTO job_images "
    "(job_id, index, url, width, height, format, storage_key, sha256, size_bytes, content_type, "
    "stored_path) SELECT :job_id, r.index, r.url, r.width, r.height, r.format, r.storage_key, "
    "r.sha256, r.size_bytes, r.content_type, r.stored_path FROM moved, "
    "jsonb_to_recordset(:images) AS r(index integer, url text, width integer, height integer, "
    "format text, storage_key text, sha256 text, size_bytes bigint, content_type text, "
    "stored_path text))"
)


@lru_cache(maxsize=256)
def _transition_sql(
    to: str, sources: tuple[str, ...], assignments: tuple[str, ...], images: bool, unsent: bool
) -> TextClause:
    # One statement: lock the row, move it if it is in one of ``sources``, log the event
    # (and store the images); when the job ends, write its outbox rows too: a job never
    # ends without them. Being one statement it is atomic without a transaction, so the
    # workers run it in autocommit: no BEGIN and COMMIT round trips.
    # Only status names and checked column names are spliced in; every value is bound.
    ends = JobStatus(to) in TERMINAL
    allowed = ", ".join(f"'{s}'" for s in sources)
    if unsent:  # a job whose POST has started is left alone
        allowed += ") AND (jobs.status <> 'submitting' OR jobs.submit_started_at IS NULL"
    sets = ", ".join((f"status = '{to}'", "updated_at = now()", *assignments))
    statement = text(
        "WITH old AS (SELECT id, status FROM jobs WHERE id = :job_id FOR UPDATE), "  # noqa: S608
        f"moved AS (UPDATE jobs SET {sets} FROM old "
        f"WHERE jobs.id = old.id AND jobs.status IN ({allowed}) "
        "RETURNING old.status AS old, jobs.id AS job_id, jobs.deliver_to, jobs.upstream_task_id), "
        "logged AS (INSERT INTO job_events (job_id, from_status, to_status, detail, worker) "
        f"SELECT :job_id, moved.old, '{to}', :detail, :worker FROM moved)"
        + (_IMAGES_CTE if images else "")
        + (", " + outbox.INSERT_ROWS.format(source="moved") if ends else "")
        + (" SELECT old, ARRAY(SELECT id FROM outbox), upstream_task_id FROM moved" if ends else "")
        + ("" if ends else " SELECT old, NULL, upstream_task_id FROM moved")
    )
    return statement.bindparams(bindparam("images", type_=JSONB)) if images else statement


def transition(
    session: Db,
    job_id: str,
    to: JobStatus,
    *,
    expected: Iterable[JobStatus] | None = None,
    detail: str | None = None,
    images: list[ImageView] | None = None,
    unsent: bool = False,
    **values: Any,
) -> JobStatus | None:
    """Move ``job_id`` to ``to`` if it is in one of ``expected``; return the status it left.

    ``expected`` defaults to every status from which ``to`` is legal. Returns None (and
    changes nothing) when the job is not in one of them: someone else moved it first.
    ``values`` are other columns to set: plain values, ``NOW`` or ``After(seconds)``;
    ``images`` are stored with the change; ``unsent`` refuses a ``submitting`` job whose
    POST has started. One statement, whatever is asked.
    """
    sources = [s for s in TRANSITIONS if to in TRANSITIONS[s]] if expected is None else [*expected]
    illegal = [s for s in sources if to not in TRANSITIONS[s]]
    if illegal or not sources:
        raise IllegalTransitionError(f"{illegal or sources} -> {to}")
    if to in TERMINAL:
        values.setdefault("finished_at", NOW)
        values.setdefault("next_check_at", None)
    params: dict[str, Any] = {"job_id": job_id, "detail": detail, "worker": ACTOR.get()}
    assignments = tuple(_assignment(column, v, params) for column, v in sorted(values.items()))
    if images:
        params["images"] = [image.model_dump(mode="json") for image in images]
    statement = _transition_sql(
        to.value, tuple(s.value for s in sources), assignments, bool(images), unsent
    )
    row = _run(session, statement, params).first()
    if row is None:
        return None
    if row[1]:
        outbox.buffer(row[1])  # published once this statement has committed
    if to in TERMINAL:
        code = values.get("error_code")
        message = values.get("error_message")
        ends.announce(
            ends.Ended(
                job_id,
                to,
                ErrorCode(code) if code is not None else None,
                str(message) if message is not None else None,
                row[2],
            )
        )
    return JobStatus(row[0])


def fail(
    session: Db,
    job_id: str,
    code: ErrorCode,
    message: str,
    *,
    expected: Iterable[JobStatus] | None = None,
    unsent: bool = False,
) -> bool:
    """End a live job as failed with ``code``; False when it was no longer in ``expected``.

    With ``unsent``, a ``submitting`` job whose POST has started is not ended. A cancelled
    job whose upstream task exists keeps being polled until that task ends (its bill).
    """
    to = S.CANCELLED if code is ErrorCode.CANCELLED else S.FAILED
    message = message[:MAX_ERROR_MESSAGE]
    follow: dict[str, Any] = {"next_check_at": _FOLLOW_UPSTREAM} if to is S.CANCELLED else {}
    left = transition(
        session,
        job_id,
        to,
        expected=expected,
        unsent=unsent,
        detail=f"{code.value}: {message}",
        error_code=code.value,
        error_message=message,
        **follow,
    )
    return left is not None


@dataclass(frozen=True)
class Accepted:
    """What became of an ``imagegen.generate`` message."""

    job_id: str  # the job the message's id now stands for (an earlier one for a reused key)
    status: JobStatus
    created: bool  # False for a redelivery, a reused idempotency key or a refused reuse


@dataclass(frozen=True)
class Conflict:
    """The idempotency key already stands for another request of the same tenant."""

    job_id: str  # the job the key stands for


#: Every request reaching ``accept`` that cannot be validated ends as such a job.
DEFAULT_TENANT: Final = "default"


def accept(
    session: Db,
    message_id: str,
    raw: object,
    *,
    default_deadline_seconds: int,
    policy: DeliveryPolicy = NO_POLICY,
    tenant: str = DEFAULT_TENANT,
) -> Accepted:
    """Validate one request and record it as a queued job, or as a failed one if invalid.

    Total: whatever ``raw`` is, the message ends as a job (queued or ``invalid_request``) or,
    when its id already names another request, as a ``dropped_messages`` row. A redelivery
    (same id, same request) and a reused idempotency key with the same request return the
    existing job and create nothing; the same key with another request is refused. The
    insert comes first: a new job costs one statement.
    """
    errors: list[FieldError] | None = None
    problem: str | None
    try:
        if not isinstance(raw, dict):
            raise TypeError(type(raw).__name__)
        request = GenerationRequest.model_validate(raw)
    except ValidationError as exc:
        errors = field_errors(exc)
        problem = describe_validation_error(exc)
    except TypeError as exc:
        problem = f"request: must be a JSON object, got {exc}"
    except (ValueError, RecursionError) as exc:
        problem = f"request: could not be validated ({type(exc).__name__})"
    else:
        problem = None
    if problem is not None:
        return record_invalid(
            session,
            message_id,
            problem,
            errors=errors,
            request_hash=raw_fingerprint(raw),
            deliver_to=targets.for_raw(raw, policy),
            tenant=tenant,
        )
    fingerprint = request_fingerprint(request)
    deliver_to, problem = targets.for_request(request, policy)
    if problem is not None:
        return record_invalid(
            session,
            message_id,
            problem,
            errors=problem_errors(problem, "invalid_target"),
            request_hash=fingerprint,
            deliver_to=targets.for_raw(raw, policy),
            tenant=tenant,
        )
    try:
        created = create(
            session,
            message_id,
            request,
            deliver_to=deliver_to,
            tenant=tenant,
            default_deadline_seconds=default_deadline_seconds,
            fingerprint=fingerprint,
        )
    except (DataError, ValueError, RecursionError) as exc:
        return record_invalid(
            session,
            message_id,
            f"request: could not be stored ({_why(exc)})",
            request_hash=fingerprint,
            deliver_to=deliver_to,
            tenant=tenant,
        )
    if isinstance(created, Conflict):
        problem = (
            "idempotency_key: already used for a different request "
            "(a key stands for one request; use a new key)"
        )
        return record_invalid(
            session,
            message_id,
            problem,
            errors=problem_errors(problem, "idempotency_conflict"),
            request_hash=fingerprint,
            deliver_to=deliver_to,
            tenant=tenant,
        )
    return created


def create(
    session: Db,
    job_id: str,
    request: GenerationRequest,
    *,
    deliver_to: list[dict[str, Any]],
    tenant: str,
    default_deadline_seconds: int,
    fingerprint: str | None = None,
) -> Accepted | Conflict:
    """Record a validated request as a queued job (the HTTP API's path, and ``accept``'s).

    The same id with the same request, or the tenant's idempotency key with the same request,
    answers with the existing job (``created=False``); the key with another request is a
    :class:`Conflict`. The id with another request is kept as a ``dropped_messages`` row.
    """
    fingerprint = fingerprint or request_fingerprint(request)
    params = insert_job_params(
        job_id,
        request,
        deliver_to=deliver_to,
        tenant=tenant,
        default_deadline_seconds=default_deadline_seconds,
        fingerprint=fingerprint,
    )
    inserted = _run(session, _INSERT_JOB, params).first()
    if inserted is not None:
        return Accepted(job_id, S.QUEUED, created=True)
    # A redelivery, the same message running twice at once, or the key is taken.
    existing = _find(session, job_id)
    if existing is not None:
        if existing.request_hash not in (None, fingerprint):
            record_dropped(
                session,
                queue="imagegen.requests",
                task="imagegen.generate",
                message_id=job_id,
                size=0,
                reason="the job id already names a different request: refused, nothing sent",
            )
        return Accepted(existing.id, JobStatus(existing.status), created=False)
    if request.idempotency_key is not None:
        by_key = find_by_key(session, tenant, request.idempotency_key)
        if by_key is not None:
            if by_key.request_hash not in (None, fingerprint):
                return Conflict(by_key.id)
            _run(
                session,
                insert(A)
                .values(alias_id=job_id, job_id=by_key.id, request_hash=fingerprint)
                .on_conflict_do_nothing(),
            )
            return Accepted(by_key.id, JobStatus(by_key.status), created=False)
    raise RuntimeError(f"job {job_id} conflicted but cannot be found")


def insert_job_params(
    job_id: str,
    request: GenerationRequest,
    *,
    deliver_to: list[dict[str, Any]],
    tenant: str,
    default_deadline_seconds: int,
    fingerprint: str,
) -> dict[str, Any]:
    """The parameters of a new job's insert (:data:`INSERT_JOB_SQL` too)."""
    deadline = request.deadline_seconds or default_deadline_seconds
    return {
        "p_id": job_id,
        "p_priority": request.priority,
        "p_request": request.model_dump(mode="json", exclude_none=True),
        "p_key": request.idempotency_key,
        "p_metadata": request.metadata,
        "p_deliver": deliver_to or None,
        "p_hash": fingerprint,
        "p_tenant": tenant,
        "p_deadline": timedelta(seconds=deadline),
        "p_worker": ACTOR.get(),
    }


#: A new job's insert as psycopg itself runs it (the HTTP API's async connections; pass
#: JSON values as ``psycopg.types.json.Jsonb``): the very statement ``create`` runs.
INSERT_JOB_SQL: Final = str(_INSERT_JOB.compile(dialect=psycopg_dialect()))  # type: ignore[no-untyped-call]
#: The parameters of INSERT_JOB_SQL that are JSON.
INSERT_JOB_JSON: Final = ("p_request", "p_metadata", "p_deliver")


def find_by_key(session: Db, tenant: str, key: str) -> Row[tuple[str, str, str | None]] | None:
    """(id, status, request_hash) of the tenant's job with idempotency key ``key``."""
    return _run(
        session,
        select(J.c.id, J.c.status, J.c.request_hash).where(
            J.c.tenant == tenant, J.c.idempotency_key == key
        ),
    ).first()


def _why(exc: BaseException) -> str:
    """A short, parameter-free description of a failure to store (the database's own words
    where it has them: the engine hides bound parameters)."""
    orig = getattr(exc, "orig", None)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return f"{type(exc).__name__}: {primary}" if primary else type(exc).__name__


def raw_fingerprint(value: object) -> str | None:
    """sha256 of any JSON-like value (what an invalid request was), or None if unreadable."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def record_invalid(
    session: Db,
    job_id: str,
    message: str,
    *,
    errors: list[FieldError] | None = None,
    request_hash: str | None = None,
    deliver_to: list[dict[str, Any]] | None = None,
    tenant: str = DEFAULT_TENANT,
) -> Accepted:
    """Record a request that cannot be run as a failed ``invalid_request`` job, with its
    problems as ``errors`` (one built from ``message`` when not given).

    When ``job_id`` already names a job, a redelivery (the same ``request_hash``) is answered
    with it; anything else is kept as a ``dropped_messages`` row (the id is taken).
    """
    message = message[:MAX_ERROR_MESSAGE]
    detail = f"{ErrorCode.INVALID_REQUEST.value}: {message}"
    found = errors if errors is not None else problem_errors(message)
    params = {
        "p_id": job_id,
        "p_code": ErrorCode.INVALID_REQUEST.value,
        "p_message": message,
        "p_errors": [e.model_dump() for e in found],
        "p_detail": detail,
        "p_worker": ACTOR.get(),
        "p_hash": request_hash,
        "p_deliver": deliver_to or None,
        "p_tenant": tenant,
    }
    row = _run(session, _INSERT_INVALID, params).first()
    if row is not None:
        if row[1]:
            outbox.buffer(row[1])
        ends.announce(ends.Ended(job_id, S.FAILED, ErrorCode.INVALID_REQUEST, message))
        return Accepted(job_id, S.FAILED, created=True)
    existing = _find(session, job_id)
    if existing is None:
        return Accepted(job_id, S.FAILED, created=False)
    if existing.id != job_id or existing.request_hash not in (None, request_hash):
        record_dropped(
            session,
            queue="imagegen.requests",
            task="imagegen.generate",
            message_id=job_id,
            size=0,
            reason=f"refused ({message}); the job id already names another job",
        )
    return Accepted(existing.id, JobStatus(existing.status), created=False)


def record_dropped(
    session: Db,
    *,
    queue: str,
    task: str | None,
    message_id: str | None,
    size: int,
    reason: str,
) -> None:
    """Keep a refused message with no job of its own, and why (``imagegen dropped``)."""
    _run(
        session,
        insert(D).values(
            queue=queue,
            task=task,
            message_id=message_id,
            size=size,
            reason=reason[:MAX_ERROR_MESSAGE],
            worker=ACTOR.get(),
        ),
    )


def _find(session: Db, job_id: str) -> Row[tuple[str, str, str | None]] | None:
    """(id, status, request_hash) of the job ``job_id`` names, following an idempotency
    alias (whose own request hash is the one reported)."""
    direct = _run(
        session, select(J.c.id, J.c.status, J.c.request_hash).where(J.c.id == job_id)
    ).first()
    if direct is not None:
        return direct
    return _run(
        session,
        select(J.c.id, J.c.status, A.c.request_hash)
        .join(A, A.c.job_id == J.c.id)
        .where(A.c.alias_id == job_id),
    ).first()


def resolve(session: Session, job_id: str, *, with_images: bool = False) -> Job | None:
    """The job ``job_id`` names, following an idempotency alias."""
    options = [selectinload(Job.images)] if with_images else []
    job = session.get(Job, job_id, options=options)
    if job is not None:
        return job
    alias = session.get(JobAlias, job_id)
    return session.get(Job, alias.job_id, options=options) if alias is not None else None


#: The advisory lock ``imagegen_admit`` takes (0x1A6E6E01).
ADMISSION_LOCK_KEY: Final = 443444737
#: Admission, done inside PostgreSQL (migrations 0004 and 0009): under one advisory lock it
#: counts the jobs holding slots and moves the most urgent, oldest queued jobs into the free
#: ones (or one of them in as a slot probe).
_ADMIT: Final = text(
    "SELECT job_id, probe, ages FROM imagegen_admit_probing(:slot_limit, :probe_cap, :actor)"
)


@dataclass(frozen=True)
class Probe:
    """A job admitted beyond the limit, to be POSTed when a slot is likely free."""

    job_id: str
    ages: list[float]  # seconds since each running job was accepted upstream
    send_in: float = 0.0  # seconds its POST is held (``admit_holding_probe``)


@dataclass(frozen=True)
class Admission:
    """What one admission let in."""

    admitted: list[str]  # to POST now: free slots (and a waiting probe whose slot freed)
    probe: Probe | None = None


_WAITING: Final = text(  # (constants only; both use a partial index of live jobs)
    f"SELECT EXISTS (SELECT 1 FROM jobs WHERE status = '{S.QUEUED.value}') "  # noqa: S608
    f"OR EXISTS (SELECT 1 FROM jobs WHERE status = '{S.SUBMITTING.value}' "
    "AND submit_started_at IS NULL)"
)


def admit(connection: Connection, limit: int, *, probe_cap: int = 0) -> Admission:
    """Admit queued jobs into free upstream slots (they are now ``submitting``).

    Run it on an autocommit connection, after the change that may let a job in (a new
    queued job, a freed slot) is committed. The admission lock serialises every worker's
    call across processes and hosts, and is held only while the function runs inside
    PostgreSQL: a caller waits for it (microseconds) instead of skipping, so no change is
    ever missed and no announce-and-retry protocol is needed. Most urgent first, then
    oldest; nothing when the upstream is full, except, with ``probe_cap`` above the jobs
    holding slots, one slot probe (migration 0009 says how it works).
    """
    # Nothing queued and no probe waiting (most calls when thousands run under a high
    # limit: every finished job asks): nothing to admit, and the lock is not taken. Safe
    # without it: a job left queued by an admission that found every slot taken was
    # committed before that admission ran, so any admission after the slot frees (it follows
    # the freeing commit) sees it here.
    if not _run(connection, _WAITING).scalar():
        return Admission([])
    params = {"slot_limit": limit, "probe_cap": probe_cap, "actor": ACTOR.get()}
    admitted: list[str] = []
    probe: Probe | None = None
    for job_id, is_probe, ages in _run(connection, _ADMIT, params):
        if is_probe:
            probe = Probe(str(job_id), [float(a) for a in ages or []])
        else:
            admitted.append(str(job_id))
    return Admission(admitted, probe)


#: How many probes one admission holds in turn at most (see ``admit_holding_probe``).
HOLD_ROUNDS: Final = 3


def admit_holding_probe(
    connection: Connection,
    limit: int,
    *,
    probe_cap: int,
    probe_wait: Callable[[list[float]], float],
) -> Admission:
    """:func:`admit`, and the slot probe it admitted (if any) held for ``probe_wait(ages)``
    seconds (:func:`defer_submit`).

    A slot that frees between the admission and the hold is not missed. Its own admission
    found the probe admitted but not yet held: counted as holding a slot, so neither sent
    nor joined by another job. One more admission after the hold sees the held probe and the
    free slot, and sends the probe at once.
    """
    admitted: list[str] = []
    admission = admit(connection, limit, probe_cap=probe_cap)
    for _ in range(HOLD_ROUNDS):
        admitted += admission.admitted
        probe = admission.probe
        if probe is None:
            return Admission(admitted)
        wait = probe_wait(probe.ages)
        if not defer_submit(connection, probe.job_id, wait):
            return Admission(admitted)  # it moved on meanwhile (cancelled, expired)
        admission = admit(connection, limit, probe_cap=probe_cap)
        if probe.job_id in admission.admitted or admission.probe is None:
            held = probe.job_id not in admission.admitted
            return Admission(
                admitted + admission.admitted, replace(probe, send_in=wait) if held else None
            )
        # Another worker sent the held probe meanwhile (a slot freed), and this admission
        # planned the next one: it is held in turn.
    # (only under a storm of freed slots: the last probe goes at once, early at worst)
    return Admission(
        admitted + admission.admitted + ([admission.probe.job_id] if admission.probe else [])
    )


_DEFER: Final = text(
    "UPDATE jobs SET next_check_at = now() + make_interval(secs => :p_in) "
    "WHERE id = :p_id AND status = 'submitting' AND submit_started_at IS NULL"
)


def defer_submit(connection: Connection, job_id: str, seconds: float) -> bool:
    """Hold an admitted job's POST for ``seconds`` (a slot probe waiting for its time); a
    freed slot sends it earlier (the admission releases it)."""
    return bool(_run(connection, _DEFER, {"p_id": job_id, "p_in": float(seconds)}).rowcount)


_PRESSURE: Final = text(  # (sql_list splices status names, never input)
    f"SELECT count(*) FILTER (WHERE status = '{S.QUEUED.value}'), "  # noqa: S608
    f"count(*) FILTER (WHERE status IN ({sql_list(HOLDING_SLOT)})), "
    "extract(epoch FROM now() - min(submitted_at) "
    f"FILTER (WHERE status IN ({sql_list(POLLED)})))::double precision "
    f"FROM jobs WHERE status IN ({sql_list((S.QUEUED, *HOLDING_SLOT))})"
)


def pressure(connection: Connection) -> tuple[int, int, float | None]:
    """(jobs queued for a slot, jobs holding one, seconds since the oldest job still at the
    upstream was accepted there: None when none is)."""
    queued, holding, oldest = _run(connection, _PRESSURE, {}).one()
    return int(queued), int(holding), None if oldest is None else float(oldest)


_SUBMITTABLE: Final = select(J.c.id).where(
    J.c.id == bindparam("p_id"),
    J.c.status == S.SUBMITTING.value,
    J.c.submit_started_at.is_(None),
)


def submittable(session: Db, job_id: str) -> bool:
    """The job is admitted and its POST has not started: worth a request token."""
    return _run(session, _SUBMITTABLE, {"p_id": job_id}).first() is not None


@dataclass(frozen=True)
class SubmitTicket:
    """The right to make the one POST of a job."""

    payload: dict[str, Any]
    attempt: int  # the job's submit_attempts after this one began


def begin_submit(session: Db, job_id: str, *, answer_within: float) -> SubmitTicket | None:
    """Mark the POST as under way and return the upstream payload; None if not ours to send.

    Committed before the POST: a job found later with ``submit_started_at`` set and no
    upstream task id is one whose POST outcome is unknown, and is never sent again blindly.
    """
    params = {"p_id": job_id, "p_answer": timedelta(seconds=answer_within)}
    row = _run(session, _BEGIN_SUBMIT, params).first()
    if row is None or row.request is None:
        return None
    payload = GenerationRequest.model_validate(row.request).upstream_payload()
    return SubmitTicket(payload, int(row.submit_attempts))


def record_submitted(
    session: Db,
    job_id: str,
    upstream_task_id: str,
    *,
    first_poll_in: float,
    attempt: int | None = None,
) -> bool:
    """The upstream accepted the POST: store its task id, the job is now ``pending``.

    With ``attempt`` (an answer recorded later, from a message), only while the job is still
    in that POST attempt: an upstream task id is recorded only for the POST that made it.
    """
    if attempt is not None:
        current = _run(
            session,
            select(J.c.submit_attempts).where(
                J.c.id == job_id,
                J.c.status == S.SUBMITTING.value,
                J.c.submit_started_at.is_not(None),
                J.c.upstream_task_id.is_(None),
            ),
        ).scalar()
        if current != attempt:
            return False
    return (
        transition(
            session,
            job_id,
            S.PENDING,
            expected=[S.SUBMITTING],
            upstream_task_id=upstream_task_id,
            submitted_at=NOW,
            next_check_at=After(first_poll_in),
        )
        is not None
    )


def requeue(session: Db, job_id: str, reason: str) -> bool:
    """The upstream definitely did not accept the POST: give the slot back, wait again."""
    left = transition(
        session,
        job_id,
        S.QUEUED,
        expected=[S.SUBMITTING],
        detail=reason[:MAX_ERROR_MESSAGE],
        submit_started_at=None,
        next_check_at=NOW,
    )
    return left is not None


@dataclass(frozen=True)
class PollTicket:
    """The right to make poll number ``seq`` of a job."""

    upstream_task_id: str
    status: JobStatus
    seq: int
    overdue: bool  # the job's deadline has passed
    left: float = 0.0  # seconds until the job's deadline (negative once past)
    # metrics (detection lag): seconds since submitted_at at the claim, and when claimed
    submitted_ago: float | None = None
    claimed_at: float = field(default_factory=time.monotonic, compare=False)


def claim_poll(session: Db, job_id: str, seq: int, *, hold_for: float) -> PollTicket | None:
    """Claim poll ``seq`` of a submitted job; None for a stale or duplicate poll message.

    Each poll message carries the sequence number it expects; claiming bumps it, so when
    a crash or a sweep leaves two poll chains for one job, only one of them goes on.
    """
    params = {"p_id": job_id, "p_seq": seq, "p_hold": timedelta(seconds=hold_for)}
    row = _run(session, _CLAIM_POLL, params).first()
    if row is None:
        return None
    ago = float(row[4]) if row[4] is not None else None
    return PollTicket(str(row[0]), JobStatus(row[1]), seq + 1, bool(row[2]), float(row[3]), ago)


_POLL_TIMING: Final = select(
    func.extract("epoch", func.now() - J.c.submitted_at),
    func.extract("epoch", J.c.next_check_at - func.now()),
    func.extract("epoch", J.c.deadline_at - func.now()),
).where(
    J.c.id == bindparam("p_id"),
    J.c.status.in_([s.value for s in POLLED]),
    J.c.poll_count == bindparam("p_seq"),
    J.c.submitted_at.is_not(None),
    J.c.next_check_at.is_not(None),
)


@dataclass(frozen=True)
class PollTiming:
    """Where a running job's poll ``seq`` stands, read without claiming it."""

    age: float  # seconds since the upstream accepted the task
    check_in: float  # seconds until the sweeper's due time for its next step (next_check_at)
    left: float  # seconds until the job's deadline


def poll_timing(session: Db, job_id: str, seq: int) -> PollTiming | None:
    """The age and due time of a running job whose next poll is ``seq``; None for anything
    else (ended, cancelled, another poll's turn): the claim sorts those out."""
    row = _run(session, _POLL_TIMING, {"p_id": job_id, "p_seq": seq}).first()
    return None if row is None else PollTiming(float(row[0]), float(row[1]), float(row[2]))


def mark_processing(session: Db, job_id: str) -> bool:
    """The upstream started working on the task."""
    return transition(session, job_id, S.PROCESSING, expected=[S.PENDING]) is not None


@dataclass(frozen=True)
class Outcome:
    """A finished upstream task's results."""

    images: list[ImageView]
    duration_ms: int | None
    billing_amount: Decimal | None
    result_expires_at: datetime | None
    request_id: str | None


def succeed(
    session: Db,
    job_id: str,
    outcome: Outcome,
    *,
    failure: tuple[ErrorCode, str] | None = None,
) -> bool:
    """Store the results of a finished task; the job ends ``succeeded``.

    With ``failure`` (the images could not be copied in time) it ends ``failed`` with that
    error instead, still recording what the upstream produced and charged.
    """
    extra: dict[str, Any] = {}
    if failure is not None:
        extra = {"error_code": failure[0].value, "error_message": failure[1][:MAX_ERROR_MESSAGE]}
    left = transition(
        session,
        job_id,
        S.SUCCEEDED if failure is None else S.FAILED,
        expected=POLLED,
        detail=f"{len(outcome.images)} image(s)"
        + (f"; {failure[0].value}: {failure[1]}" if failure else ""),
        **extra,
        duration_ms=outcome.duration_ms,
        billing_amount=outcome.billing_amount,
        result_expires_at=outcome.result_expires_at,
        upstream_request_id=outcome.request_id,
        images=outcome.images,
    )
    return left is not None


_SETTLE_FOLLOWED: Final = text(
    "WITH moved AS (UPDATE jobs SET next_check_at = NULL, updated_at = now(), "
    "billing_amount = coalesce(:p_bill, billing_amount), "
    "duration_ms = coalesce(:p_duration, duration_ms), "
    "upstream_request_id = coalesce(:p_request_id, upstream_request_id) "
    "WHERE id = :p_id AND status = 'cancelled' AND next_check_at IS NOT NULL RETURNING id) "
    "INSERT INTO job_events (job_id, from_status, to_status, detail, worker) "
    "SELECT id, 'cancelled', 'cancelled', :p_detail, :p_worker FROM moved RETURNING job_id"
)


def followed_poll(session: Db, job_id: str) -> int | None:
    """The next poll's sequence number of a cancelled job still followed, else None."""
    return cast(
        "int | None",
        _scalar(
            session,
            select(J.c.poll_count).where(
                J.c.id == job_id,
                J.c.status == S.CANCELLED.value,
                J.c.next_check_at.is_not(None),
            ),
        ),
    )


def settle_followed(
    session: Db,
    job_id: str,
    detail: str,
    *,
    billing_amount: Decimal | None = None,
    duration_ms: int | None = None,
    request_id: str | None = None,
) -> bool:
    """A cancelled job's upstream task ended (or is no longer followed): record what it
    cost, stop polling it. The job stays ``cancelled``; an event says what happened."""
    params = {
        "p_id": job_id,
        "p_bill": billing_amount,
        "p_duration": duration_ms,
        "p_request_id": request_id,
        "p_detail": detail[:MAX_ERROR_MESSAGE],
        "p_worker": ACTOR.get(),
    }
    return _run(session, _SETTLE_FOLLOWED, params).first() is not None


def cancel(
    session: Db, job_id: str, *, tenant: str | None = None, reason: str = "cancelled by request"
) -> tuple[bool, JobStatus | None]:
    """Cancel a job that is queued, or stop polling one already submitted; (done, status
    now), status None when there is no such job (of ``tenant``, when given).

    A job whose POST is under way cannot be cancelled (its outcome is about to be known):
    that is checked in the same statement as the change, so a POST starting meanwhile wins.
    """
    found = _find(session, job_id)
    if found is None:
        return False, None
    if tenant is not None and _scalar(session, select(J.c.tenant).where(J.c.id == found.id)) != (
        tenant
    ):
        return False, None
    expected = [S.QUEUED, S.SUBMITTING, S.PENDING, S.PROCESSING]
    done = fail(
        session,
        found.id,
        ErrorCode.CANCELLED,
        reason,
        expected=expected,
        unsent=True,
    )
    now = _scalar(session, select(J.c.status).where(J.c.id == found.id))
    return done, JobStatus(now)


#: A JobView's columns (not the request: it may hold megabytes of data URLs).
_VIEW_COLUMNS: Final = ", ".join(
    f"j.{c}"
    for c in (
        "id", "status", "priority", "created_at", "updated_at", "submitted_at", "finished_at",
        "deadline_at", "upstream_task_id", "billing_amount", "duration_ms",
        "result_expires_at", "error_code", "error_message", "errors", "metadata",
        "idempotency_key", "tenant",
    )
)  # fmt: skip
#: A job with its images and (when ``deliveries``) its outbox, in one statement. Written for
#: psycopg itself (``%(name)s``), so the HTTP API's async connections run the very same text
#: as the sync path (``exec_driver_sql``).
_VIEW_SELECT: Final = (
    f"SELECT {_VIEW_COLUMNS}, "  # noqa: S608 - column names only
    "(SELECT coalesce(jsonb_agg(to_jsonb(i) ORDER BY i.index), '[]'::jsonb) "
    "FROM job_images i WHERE i.job_id = j.id) AS images_json, "
    "CASE WHEN %(deliveries)s THEN (SELECT coalesce(jsonb_agg(jsonb_build_object("
    "'id', d.id, 'channel', d.channel, 'state', d.state, 'attempts', d.attempts, "
    "'last_status', d.last_status, 'last_error', d.last_error, "
    "'next_attempt_at', d.next_attempt_at, 'delivered_at', d.delivered_at) "
    "ORDER BY d.created_at, d.id), '[]'::jsonb) FROM job_deliveries d WHERE d.job_id = j.id) "
    "END AS deliveries_json FROM jobs j "
)
#: One job by id or idempotency alias, of one tenant (any tenant with a null one).
VIEW_SQL: Final = (
    _VIEW_SELECT  # noqa: S608 - constants only
    + "WHERE j.id = coalesce((SELECT a.job_id FROM job_aliases a WHERE a.alias_id = %(id)s), "
    "%(id)s) AND (%(tenant)s::text IS NULL OR j.tenant = %(tenant)s)"
)


def view_params(
    job_id: str, *, tenant: str | None = None, with_deliveries: bool = True
) -> dict[str, Any]:
    """The parameters of :data:`VIEW_SQL`."""
    return {"id": job_id, "tenant": tenant, "deliveries": with_deliveries}


def view(
    session: Db, job_id: str, *, with_deliveries: bool = True, tenant: str | None = None
) -> JobView | None:
    """The JobView of ``job_id`` (following an idempotency alias); ``with_deliveries``: with
    the state of its outbox (not part of what is delivered); ``tenant``: only that tenant's
    job (another tenant's is None, as if it did not exist)."""
    connection = session if isinstance(session, Connection) else session.connection()
    params = view_params(job_id, tenant=tenant, with_deliveries=with_deliveries)
    row = connection.exec_driver_sql(VIEW_SQL, params).first()
    return job_view(row) if row is not None else None


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first; ``cursor`` continues it (None: the last page)."""

    items: list[JobView]
    cursor: tuple[datetime, str] | None


def listing_sql(
    *, tenant: str | None, status: JobStatus | None, created_after: datetime | None,
    after: tuple[datetime, str] | None, limit: int,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The statement and parameters of a page of jobs, newest first, by keyset: ``after`` is
    the (created_at, id) of the last job of the previous page (``ix_jobs_tenant_created``
    serves it, however deep the page). Only fixed fragments are joined; values are bound."""
    where = ["TRUE"]
    params: dict[str, Any] = {"deliveries": False, "limit": limit + 1}
    if tenant is not None:
        where.append("j.tenant = %(tenant)s")
        params["tenant"] = tenant
    if status is not None:
        where.append("j.status = %(status)s")
        params["status"] = status.value
    if created_after is not None:
        where.append("j.created_at > %(created_after)s")
        params["created_after"] = created_after
    if after is not None:
        where.append("(j.created_at, j.id) < (%(after_at)s, %(after_id)s)")
        params |= {"after_at": after[0], "after_id": after[1]}
    statement = (
        _VIEW_SELECT
        + "WHERE "
        + " AND ".join(where)
        + " ORDER BY j.created_at DESC, j.id DESC LIMIT %(limit)s"
    )
    return statement, params


def page_of(rows: Sequence[Any], limit: int) -> Page:
    """The page a listing's rows (``limit + 1`` at most) make."""
    more = len(rows) > limit
    kept = rows[:limit]
    cursor = (kept[-1].created_at, kept[-1].id) if more and kept else None
    return Page([job_view(row) for row in kept], cursor)


def listing(
    session: Db,
    *,
    tenant: str | None,
    status: JobStatus | None = None,
    created_after: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> Page:
    """A tenant's jobs (every tenant's with None), newest first (see :func:`listing_sql`)."""
    statement, params = listing_sql(
        tenant=tenant, status=status, created_after=created_after, after=after, limit=limit
    )
    connection = session if isinstance(session, Connection) else session.connection()
    return page_of(connection.exec_driver_sql(statement, params).all(), limit)


def job_href(job_id: str) -> str:
    """The API path of a job (relative to the API's base URL)."""
    return f"/v1/jobs/{quote(job_id, safe='')}"


def image_href(job_id: str, index: int) -> str:
    """The API path of a stored image (relative to the API's base URL)."""
    return f"{job_href(job_id)}/images/{index}"


def job_view(row: Any) -> JobView:
    """The JobView of a row of :data:`VIEW_SQL` or a listing."""
    return JobView(
        id=row.id,
        status=JobStatus(row.status),
        priority=row.priority,
        created_at=row.created_at,
        updated_at=row.updated_at,
        submitted_at=row.submitted_at,
        finished_at=row.finished_at,
        deadline_at=row.deadline_at,
        upstream_task_id=row.upstream_task_id,
        images=[
            ImageView(
                index=i["index"],
                url=i["url"],
                width=i["width"],
                height=i["height"],
                format=i["format"],
                href=image_href(row.id, i["index"]) if i.get("storage_key") else None,
                sha256=i.get("sha256"),
                size_bytes=i.get("size_bytes"),
                content_type=i.get("content_type"),
                storage_key=i.get("storage_key"),
                stored_path=i.get("stored_path"),
            )
            for i in row.images_json
        ],
        billing_amount=row.billing_amount,
        duration_ms=row.duration_ms,
        result_expires_at=row.result_expires_at,
        error_code=ErrorCode(row.error_code) if row.error_code else None,
        error_message=row.error_message,
        errors=[FieldError.model_validate(e) for e in row.errors] if row.errors else None,
        metadata=row.metadata,
        idempotency_key=row.idempotency_key,
        tenant=row.tenant,
        deliveries=[DeliveryView.model_validate(d) for d in row.deliveries_json or ()],
    )


@dataclass(frozen=True)
class StoredCopy:
    """Where one image's copy is, for the API to serve it."""

    storage_key: str
    sha256: str | None
    size_bytes: int | None
    content_type: str | None


def stored_copy(session: Db, job_id: str, index: int) -> StoredCopy | None:
    """The copy of image ``index`` of a job (``job_id`` resolved already), or None."""
    row = _run(
        session,
        select(I.c.storage_key, I.c.sha256, I.c.size_bytes, I.c.content_type).where(
            I.c.job_id == job_id, I.c.index == index, I.c.storage_key.is_not(None)
        ),
    ).first()
    return StoredCopy(*row) if row is not None else None


# --- the sweeper's queries -------------------------------------------------------------


def expire_overdue(session: Db) -> list[str]:
    """Fail every live job past its deadline that nothing else will end.

    Queued jobs and jobs whose POST has not started are failed here; submitted ones are
    ended by their next poll (or by the sweeper re-publishing it).
    """
    ids = list(
        session.scalars(
            select(J.c.id)
            .where(
                J.c.deadline_at <= func.now(),
                J.c.status.in_([S.QUEUED.value, S.SUBMITTING.value]),
                J.c.submit_started_at.is_(None),
            )
            .with_for_update(skip_locked=True)
        )
    )
    return [
        i
        for i in ids
        if fail(
            session,
            i,
            ErrorCode.DEADLINE_EXCEEDED,
            "deadline passed before the job was submitted",
            expected=[S.QUEUED, S.SUBMITTING],
        )
    ]


#: Jobs somebody must move on: those holding a slot, and cancelled jobs still followed.
_MOVES_ON: Final = or_(
    J.c.status.in_([s.value for s in HOLDING_SLOT]),
    and_(J.c.status == S.CANCELLED.value, J.c.next_check_at.is_not(None)),
)


@dataclass(frozen=True)
class Overdue:
    """A live job whose next step is later than it should be."""

    job_id: str
    status: JobStatus
    submit_started: bool
    poll_count: int


def _take(session: Db, *where: ColumnElement[bool], **params: Any) -> list[Overdue]:
    """Claim the jobs to move on that match ``where``: push their next check forward (by
    ``p_recheck``), so a second sweeper or reclaim skips them while their step runs."""
    rows = _run(
        session,
        update(J)
        .where(_MOVES_ON, *where)
        .values(next_check_at=_later("p_recheck"))
        .returning(J.c.id, J.c.status, J.c.submit_started_at, J.c.poll_count),
        params,
    ).all()
    return [
        Overdue(r.id, JobStatus(r.status), r.submit_started_at is not None, r.poll_count)
        for r in rows
    ]


def take_overdue(session: Db, *, stale_after: float, recheck_in: float) -> list[Overdue]:
    """Claim jobs past ``next_check_at + stale_after`` and push their next check forward.

    Queued jobs are not listed: admission finds them.
    """
    return _take(
        session,
        J.c.next_check_at < _later("p_stale"),
        p_stale=timedelta(seconds=-stale_after),
        p_recheck=timedelta(seconds=recheck_in),
    )


def take_held(session: Db, job_ids: Sequence[str], *, recheck_in: float) -> list[Overdue]:
    """Claim the jobs among ``job_ids`` (held by a worker that died) that still wait for a
    next step, and push their next check forward, as :func:`take_overdue` does.

    A job whose POST has started is taken only once the POST's answer can no longer come
    (``next_check_at``, set to the answer's window when it began, has passed): a node taken
    for dead may be paused or draining, its POST still under way; its answer is recorded
    then, and a job it left is found by the sweeper.
    """
    if not job_ids:
        return []
    return _take(
        session,
        J.c.id.in_(bindparam("p_ids", expanding=True)),
        or_(
            J.c.status != S.SUBMITTING.value,
            J.c.submit_started_at.is_(None),
            J.c.next_check_at <= func.now(),
        ),
        p_ids=list(job_ids),
        p_recheck=timedelta(seconds=recheck_in),
    )


def counts(session: Db) -> dict[str, int]:
    """Number of jobs in each status."""
    rows = _run(session, select(J.c.status, func.count()).group_by(J.c.status)).all()
    return {str(status): int(n) for status, n in rows}


def ping(session: Db) -> None:
    """Fail loudly when the database is unreachable or not migrated."""
    _run(session, text("SELECT 1 FROM jobs LIMIT 0"))


__all__ = [
    "ACTOR",
    "ADMISSION_LOCK_KEY",
    "DEFAULT_TENANT",
    "HOLDING_SLOT",
    "INSERT_JOB_JSON",
    "INSERT_JOB_SQL",
    "LIVE",
    "MAX_ERROR_MESSAGE",
    "NOW",
    "NO_POLICY",
    "POLLED",
    "TERMINAL",
    "TRANSITIONS",
    "VIEW_SQL",
    "Accepted",
    "Admission",
    "After",
    "Conflict",
    "Db",
    "IllegalTransitionError",
    "Outcome",
    "Overdue",
    "Page",
    "PollTicket",
    "PollTiming",
    "Probe",
    "StoredCopy",
    "SubmitTicket",
    "accept",
    "admit",
    "admit_holding_probe",
    "begin_submit",
    "cancel",
    "claim_poll",
    "counts",
    "create",
    "defer_submit",
    "expire_overdue",
    "fail",
    "find_by_key",
    "followed_poll",
    "image_href",
    "insert_job_params",
    "job_href",
    "job_view",
    "listing",
    "listing_sql",
    "mark_processing",
    "page_of",
    "ping",
    "poll_timing",
    "pressure",
    "raw_fingerprint",
    "record_dropped",
    "record_invalid",
    "record_submitted",
    "requeue",
    "resolve",
    "settle_followed",
    "stored_copy",
    "submittable",
    "succeed",
    "take_held",
    "take_overdue",
    "transition",
    "view",
    "view_params",
]
