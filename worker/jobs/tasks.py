"""Celery tasks: thin wrappers that open a database connection, call ``jobs`` and the
upstream, and publish the next step only after the state that justifies it is committed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Reject
from celery.signals import task_prerun, worker_process_init
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from api_schema import ErrorCode, ImageView, JobStatus, names, unstorable_at
from worker import jobs
from worker.broker import usable_job_id
from worker.celery_app import app
from worker.config import get_settings
from worker.db import autocommit, reset_engine, transaction
from worker.delivery import outbox, targets
from worker.runtime import Runtime, get_runtime, reset_runtime
from worker.storage import StorageError, store_image
from worker.upstream.client import TASK_ID, OutcomeUnknownError, TaskState, UpstreamError

from . import service
from .schedule import poll_delay, retry_delay
from .service import INLINE_SUBMITS, PollAnswer, SubmitAnswer, SweepAction

log = logging.getLogger("imagegen.tasks")
T = TypeVar("T")
#: Failures of the database or of Redis itself: the task is retried with a countdown, never
#: dropped (with late acks a task that raises is still acked, and its message would be lost).
INFRA_ERRORS = (
    OperationalError,
    InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
    BrokerError,  # a publish that failed (kombu's wrapper of Redis connection errors)
)
#: Bounded: a submit or poll that gives up is found again by the sweeper from the database;
#: a request that gives up goes back to its queue (see ``generate``).
RETRY_INFRA: dict[str, Any] = {
    "autoretry_for": INFRA_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": get_settings().infra_max_retries,
}
MAX_JOB_ID = 64
#: A poll chain is bounded by its job's deadline (at most a week, checked at every claim);
#: this is only a backstop on the count (a job past it is found again by the sweeper).
POLL_MAX_RETRIES = 100_000
UNSTORABLE = "text with a NUL character or an unpaired surrogate cannot be stored"


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    # Prefork children inherit the parent's pools; they must open their own.
    reset_engine()
    reset_runtime()


@task_prerun.connect
def _name_actor(task: Task | None = None, **_: Any) -> None:
    # Events written by this task name the worker node that wrote them.
    jobs.ACTOR.set(str(task.request.hostname) if task is not None else None)
    outbox.start_buffer()  # what ends a job in this task, delivery.tasks publishes after it


@app.task(name=names.GENERATE_TASK, bind=True, max_retries=None)
def generate(self: Task, *args: Any, **kwargs: Any) -> dict[str, str]:
    """Accept one request: validate it, record the job, admit what fits upstream.

    A request has no row until it is accepted, so nothing else could recover it: while its
    database or Redis is away it is retried every 30 s at most, like the requests still
    waiting in the queue behind it, never given up (and never acked as failed).
    """
    try:
        return _generate(str(self.request.id), args, kwargs)
    except INFRA_ERRORS as exc:
        if self.request.retries and self.request.retries % 20 == 0:
            log.error("request %s: database or Redis away; still retrying", self.request.id)
        delay = min(30.0, 2.0 ** min(self.request.retries, 5))
        try:
            raise self.retry(countdown=delay, exc=exc) from None
        except Reject:  # the retry could not be published: back to the queue instead
            raise Reject(str(exc), requeue=True) from None
    except Exception as exc:  # a defect, not the request's fault: kept visible, never lost
        log.exception("request %s could not be accepted", self.request.id)
        with autocommit() as connection:
            jobs.record_dropped(
                connection,
                queue=names.REQUESTS_QUEUE,
                task=names.GENERATE_TASK,
                message_id=ascii(str(self.request.id))[1:-1][:MAX_JOB_ID],
                size=0,
                reason=f"could not be accepted ({type(exc).__name__}); see the worker log",
            )
        return {"job_id": str(self.request.id), "status": "dropped"}


def _generate(message_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, str]:
    if usable_job_id(message_id) is None:
        # The guarded transport refuses these before they get here; kept as a last guard.
        log.error("dropped %s message: task id %.80a is unusable", names.GENERATE_TASK, message_id)
        return {"job_id": ascii(message_id)[:MAX_JOB_ID], "status": "dropped"}
    unstorable = unstorable_at(kwargs) or unstorable_at(args, "args")
    problem: str | None = None
    if unstorable is not None:
        problem = f"{unstorable}: {UNSTORABLE}"
    elif args or set(kwargs) != {"request"}:
        got = ", ".join(sorted(kwargs)) or "none"
        detail = f"{len(args)} positional argument(s), kwargs: {got}"
        problem = f"message: expected kwargs {{'request': ...}}, got {detail}"
    if problem is not None:
        with autocommit() as session:  # one statement
            accepted = jobs.record_invalid(
                session,
                message_id,
                problem,
                request_hash=jobs.raw_fingerprint([args, kwargs]),
                deliver_to=targets.for_raw(kwargs.get("request"), get_settings().delivery_policy),
            )
    else:
        accepted = _accept_and_admit(message_id, kwargs["request"])
    if accepted.status is JobStatus.FAILED and accepted.created:
        log.warning("job %s rejected as invalid_request", message_id)
    return {"job_id": accepted.job_id, "status": accepted.status.value}


def _accept_and_admit(message_id: str, raw: object) -> jobs.Accepted:
    """Record a request, then admit what fits upstream and POST the first admitted jobs.

    Admission takes every queued job that fits, not only this one: a worker accepting a
    request at the same moment may have admitted ours already, and ours may admit theirs.
    Whoever admits a job POSTs it from the same task (up to ``INLINE_SUBMITS``), so a new
    job normally reaches the upstream without another message hop.
    """
    settings = get_runtime().settings
    with autocommit() as session:  # one statement for a new job
        accepted = jobs.accept(
            session,
            message_id,
            raw,
            default_deadline_seconds=settings.default_deadline_seconds,
            policy=settings.delivery_policy,
        )
    if accepted.status is JobStatus.QUEUED:  # also a redelivery that stopped before this
        _admit_and_post()
    return accepted


def _admit_and_post() -> None:
    """Admit what fits; POST the first ``INLINE_SUBMITS`` from here, message the rest."""
    admitted = dispatch(inline=INLINE_SUBMITS)
    for job_id in service.split_admitted(admitted, INLINE_SUBMITS)[0]:
        _submit_inline(job_id)


def dispatch(*, inline: int = 0) -> list[str]:
    """Admit queued jobs into free upstream slots; return the ids of all it admitted.

    Call it after the change that may let a job in (a new queued job, a freed slot) is
    committed. Every admitted job but the first ``inline`` gets a submit message; the
    caller POSTs those itself, saving the message hop between a slot freeing and the POST.
    """
    with autocommit() as connection:
        admitted = jobs.admit(connection, get_runtime().settings.upstream_concurrency)
    for job_id in service.split_admitted(admitted, inline)[1]:
        submit.apply_async((job_id,))
    return admitted


@app.task(name=names.SUBMIT_TASK, bind=True, **RETRY_INFRA)
def submit(
    self: Task, job_id: str, upstream_task_id: str | None = None, attempt: int | None = None
) -> str:
    """POST one admitted job to the upstream, once (or only record an earlier POST's answer)."""
    if not isinstance(job_id, str):
        return "refused"
    if upstream_task_id is not None:
        # The answer of this worker's own POST, kept in a message while the database was
        # away: recorded only for the POST attempt that produced it.
        if not (
            isinstance(upstream_task_id, str)
            and TASK_ID.fullmatch(upstream_task_id)
            and type(attempt) is int
        ):
            return "refused"
        return _record_submitted(job_id, upstream_task_id, 0.0, attempt=attempt)
    outcome = submit_now(job_id)
    if isinstance(outcome, float):
        raise self.retry(countdown=outcome)
    return outcome


def _submit_inline(job_id: str) -> str:
    outcome = submit_now(job_id)
    if isinstance(outcome, float):  # the request budget is spent: send it later
        submit.apply_async((job_id,), countdown=outcome)
        return "delayed"
    return outcome


def _refill() -> None:
    """A slot was freed by a poll: admit the next job and submit it from here."""
    _admit_and_post()


def submit_now(job_id: str) -> str | float:
    """POST one admitted job; the seconds to wait first when the request budget is spent."""
    with autocommit() as session:
        # No request token is spent on a job that is not ours to send (a duplicate
        # message, a job that moved on).
        if not jobs.submittable(session, job_id):
            return "skipped"
        wait = get_runtime().gate.acquire()
        if wait > 0:
            return wait
        ticket = jobs.begin_submit(session, job_id, answer_within=_answer_within())
    if ticket is None:
        return "skipped"  # a duplicate message, or the job moved on (cancelled, expired)
    return _post(job_id, ticket)


def _answer_within() -> float:
    settings = get_runtime().settings
    return settings.connect_timeout + settings.read_timeout + 5


def _post(job_id: str, ticket: jobs.SubmitTicket) -> str:
    """Send a POST already marked as started, and act on its answer."""
    runtime = get_runtime()
    settings = runtime.settings
    sent_at = time.monotonic()
    try:
        submitted = runtime.upstream.submit(ticket.payload)
        error: UpstreamError | None = None
    except UpstreamError as exc:
        error = exc
    decision = service.after_submit(
        error, resubmit_unknown=settings.resubmit_unknown, cap=settings.retry_max_interval_seconds
    )
    _throttle(runtime, decision)
    if decision.answer is not SubmitAnswer.ACCEPTED:
        _apply_submit_decision(job_id, decision)
        return str(decision.answer)
    # The upstream's clock started when it got the POST, not when we stored its answer.
    first_poll = max(0.0, poll_delay(0, runtime.settings) - (time.monotonic() - sent_at))
    try:
        return _record_submitted(job_id, submitted.task_id, first_poll)
    except (OperationalError, InterfaceError):
        # The POST was accepted but the database is away: keep the answer in a message and
        # record it when the database is back, instead of leaving an unknown outcome.
        log.warning("job %s: storing upstream task id deferred (database unavailable)", job_id)
        submit.apply_async(
            (job_id,),
            {"upstream_task_id": submitted.task_id, "attempt": ticket.attempt},
            countdown=2,
        )
        return "record-deferred"


def _apply_submit_decision(job_id: str, decision: service.Decision) -> None:
    """A POST that was not accepted, or whose fate is unknown: the job moves on."""
    if decision.answer in (SubmitAnswer.NOT_ACCEPTED, SubmitAnswer.RESUBMIT):
        # back in the queue; a definite answer must not be lost to a connection a database
        # restart broke (the retried task could not record it)
        _again_if_disconnected(_requeue, job_id, decision.message)
        dispatch()
        return
    assert decision.code is not None
    _end(
        job_id,
        decision.code,
        decision.message,
        [JobStatus.SUBMITTING],
        answered=decision.answer is SubmitAnswer.REJECTED,
    )


def _record_submitted(
    job_id: str, upstream_task_id: str, first_poll: float, *, attempt: int | None = None
) -> str:
    with autocommit() as session:  # one statement (two with an attempt to check)
        recorded = jobs.record_submitted(
            session, job_id, upstream_task_id, first_poll_in=first_poll, attempt=attempt
        )
    if recorded:
        poll.apply_async((job_id, 0), countdown=first_poll)
        return "submitted"
    log.warning("job %s: upstream task %s created but the job moved on", job_id, upstream_task_id)
    return "moved-on"


@app.task(name=names.POLL_TASK, bind=True, **RETRY_INFRA)
def poll(self: Task, job_id: str, seq: int = 0) -> str:
    """Ask the upstream about a submitted job; retry with a countdown while it runs.

    Retries are bounded by the job's deadline: every poll claims its turn in the database,
    and a claim past the deadline ends the job.
    """
    if not isinstance(job_id, str) or type(seq) is not int:
        return "refused"
    runtime = get_runtime()
    settings = runtime.settings
    hold_for = (
        settings.read_timeout + settings.connect_timeout + settings.retry_max_interval_seconds
    )
    # The claim comes first: no request token is spent on a job that does not exist, has
    # ended, or whose poll this is not.
    with autocommit() as session:  # one statement
        ticket = jobs.claim_poll(session, job_id, seq, hold_for=hold_for)
    if ticket is None:
        return "stale"
    if ticket.overdue:
        _end(
            job_id,
            ErrorCode.DEADLINE_EXCEEDED,
            "deadline passed while the upstream was working",
            refill=True,
        )
        return "deadline"
    wait = runtime.gate.acquire()
    if wait > 0:
        raise self.retry(args=(job_id, ticket.seq), countdown=wait, max_retries=POLL_MAX_RETRIES)
    state: TaskState | None = None
    error: UpstreamError | None = None
    try:
        state = runtime.upstream.get_task(ticket.upstream_task_id)
    except UpstreamError as exc:
        error = exc
    decision = service.after_poll(state, error, cap=settings.retry_max_interval_seconds)
    _throttle(runtime, decision)
    if decision.answer is PollAnswer.RETRY:
        floor = error.retry_after if error is not None else None
        delay = retry_delay(self.request.retries, settings, floor=floor)
        raise self.retry(args=(job_id, ticket.seq), countdown=delay, max_retries=POLL_MAX_RETRIES)
    if decision.answer in (PollAnswer.ENDED, PollAnswer.FAILED):
        assert decision.code is not None
        _end(job_id, decision.code, decision.message, refill=True)
        return str(decision.answer)
    if decision.answer is PollAnswer.SUCCEEDED:
        assert state is not None
        return _finish(self, runtime, job_id, ticket, state)
    if decision.answer is PollAnswer.STARTED and ticket.status is JobStatus.PENDING:
        with autocommit() as session:  # one statement
            jobs.mark_processing(session, job_id)
    raise self.retry(
        args=(job_id, ticket.seq),
        countdown=poll_delay(ticket.seq, settings),
        max_retries=POLL_MAX_RETRIES,
    )


def _finish(
    self: Task, runtime: Runtime, job_id: str, ticket: jobs.PollTicket, state: TaskState
) -> str:
    settings = runtime.settings
    images: list[ImageView] = []
    failure: tuple[ErrorCode, str] | None = None
    for index, resource in enumerate(state.resources):
        stored: str | None = None
        if settings.storage_dir is not None:
            try:
                path = store_image(
                    runtime.downloads,
                    settings.storage_dir,
                    job_id,
                    index,
                    resource.url,
                    resource.format,
                )
                stored = str(path.resolve())
            except (StorageError, OSError) as exc:
                if not ticket.overdue:  # retried until the job's deadline
                    delay = retry_delay(self.request.retries, settings)
                    log.warning(
                        "job %s: copying image %d failed (%s); retrying", job_id, index, exc
                    )
                    raise self.retry(args=(job_id, ticket.seq), countdown=delay) from None
                failure = (ErrorCode.STORAGE_FAILED, f"copying image {index} failed: {exc}")
        images.append(
            ImageView(
                index=index,
                url=resource.url,
                width=resource.width,
                height=resource.height,
                format=resource.format,
                stored_path=stored,
            )
        )
    outcome = jobs.Outcome(
        images=images,
        duration_ms=state.duration_ms,
        billing_amount=state.billing_amount,
        result_expires_at=state.result_expires_at,
        request_id=state.request_id,
    )
    with autocommit() as session:  # one statement
        done = jobs.succeed(session, job_id, outcome, failure=failure)
    if done:
        _refill()
    return "succeeded" if failure is None else "failed"


def _fail(
    job_id: str, code: ErrorCode, message: str, expected: list[JobStatus] | None = None
) -> bool:
    with autocommit() as session:  # one statement
        return jobs.fail(session, job_id, code, message, expected=expected)


def _end(
    job_id: str,
    code: ErrorCode,
    message: str,
    expected: list[JobStatus] | None = None,
    *,
    refill: bool = False,
    answered: bool = False,
) -> None:
    """End a job as failed; ``answered``: the upstream's definite answer is being recorded."""
    record = _again_if_disconnected if answered else _call
    if record(_fail, job_id, code, message, expected):  # its slot is free
        # Only a poll refills inline: a chain of refused submits must not recurse.
        _refill() if refill else dispatch()


def _requeue(job_id: str, reason: str) -> None:
    with autocommit() as session:  # one statement
        jobs.requeue(session, job_id, reason)


def _call(step: Callable[..., T], *args: Any) -> T:
    return step(*args)


def _again_if_disconnected(step: Callable[..., T], *args: Any) -> T:
    """Run a database step that records an upstream answer; once more on a new connection
    if the first attempt found its connection broken (the database restarted since it was
    pooled: SQLAlchemy then discards the pool). A retried task could not record it: its
    POST is marked started, so the answer would be lost and the job end outcome unknown."""
    try:
        return step(*args)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        return step(*args)


def _outcome_unknown(job_id: str, message: str) -> None:
    """A POST was sent and nobody recorded its answer (the sweeper found it)."""
    settings = get_runtime().settings
    unknown = OutcomeUnknownError(message)
    decision = service.after_submit(
        unknown, resubmit_unknown=settings.resubmit_unknown, cap=settings.retry_max_interval_seconds
    )
    _apply_submit_decision(job_id, decision)


def _throttle(runtime: Runtime, decision: service.Decision) -> None:
    if decision.pause is not None:
        runtime.gate.pause(decision.pause)
        log.warning("upstream asked to back off: pausing for %.1fs", decision.pause)


@app.task(name=names.SWEEP_TASK, **{**RETRY_INFRA, "max_retries": 3})
def sweep() -> dict[str, int]:
    """Move on every job whose next step is overdue (a lost message, a killed worker)."""
    settings = get_runtime().settings
    with transaction() as session:
        expired = jobs.expire_overdue(session)
    with transaction() as session:
        overdue = jobs.take_overdue(
            session,
            stale_after=settings.stale_after_seconds,
            recheck_in=settings.read_timeout + settings.retry_max_interval_seconds,
        )
    republished = unknown = 0
    for job in overdue:
        action = service.sweep_action(job)
        if action is SweepAction.OUTCOME_UNKNOWN:
            # The POST was sent and nobody recorded its answer: never sent blindly again.
            _outcome_unknown(
                job.job_id, "the worker sending it stopped before the answer was stored"
            )
            unknown += 1
        elif action is SweepAction.SUBMIT:
            submit.apply_async((job.job_id,))
            republished += 1
        else:
            poll.apply_async((job.job_id, job.poll_count))
            republished += 1
    admitted = dispatch()  # nothing inline: every admitted job gets its submit message
    with transaction() as connection:
        lost = outbox.take_overdue(
            connection,
            stale_after=settings.stale_after_seconds,
            recheck_in=settings.delivery_hold_seconds,
        )
    from worker.delivery.tasks import deliver

    for delivery_id, attempts in lost:
        deliver.apply_async((delivery_id, attempts))
    result = {
        "expired": len(expired),
        "republished": republished,
        "outcome_unknown": unknown,
        "admitted": len(admitted),
        "deliveries": len(lost),
    }
    if any(result.values()):
        log.info("sweep: %s", result)
    return result
