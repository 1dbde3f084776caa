"""The pipeline's steps: accept a request, admit, POST, record the answer, poll, finish, sweep.

Plain functions over the repository, the upstream client and storage. They ask
``decisions`` what an answer means, apply it, and name the next messages with
``enqueue.later`` (published when the task ends); a step that must run again later returns
:class:`Again`. The Celery tasks (``jobs/tasks.py``) only open the step and settle it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from api_schema import ErrorCode, ImageView, JobStatus, names, unstorable_at
from worker import jobs, presence
from worker.broker import usable_job_id
from worker.config import Settings, get_settings
from worker.db import autocommit, transaction
from worker.delivery import outbox, targets
from worker.enqueue import later
from worker.logs import about_job, bind_upstream, get_logger
from worker.metrics import observe
from worker.runtime import Runtime, get_runtime
from worker.storage import StorageError, StoredImage, copy_image
from worker.upstream.client import (
    TASK_ID,
    OutcomeUnknownError,
    RateLimit,
    TaskState,
    UpstreamError,
)

from . import decisions, durations
from .decisions import INLINE_SUBMITS, PollAnswer, SubmitAnswer, SweepAction
from .schedule import (
    PROBE_BOOKS,
    Pressure,
    next_poll,
    poll_delay,
    probe_delay,
    put_off,
    retry_delay,
)

log = get_logger("imagegen.jobs")
T = TypeVar("T")
MAX_JOB_ID: Final = 64
UNSTORABLE: Final = "text with a NUL character or an unpaired surrogate cannot be stored"


@dataclass(frozen=True)
class Again:
    """Run this step again: the task retries itself with these arguments after ``countdown``."""

    args: tuple[Any, ...]
    countdown: float


# --- accepting a request ------------------------------------------------------------------


def accept(message_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, str]:
    """Validate one ``imagegen.generate`` message, record its job, admit what fits."""
    if usable_job_id(message_id) is None:
        # The guarded transport refuses these before they get here; kept as a last guard.
        log.error(
            "request.dropped",
            task=names.GENERATE_TASK,
            task_id=ascii(message_id)[:80],
            reason="unusable task id",
        )
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
                tenant=get_settings().broker_tenant,
            )
    else:
        accepted = _accept_and_admit(message_id, kwargs["request"])
    # (a request rejected as invalid_request has its job.ended line, from ends.announce)
    return {"job_id": accepted.job_id, "status": accepted.status.value}


def record_dropped(message_id: str, reason: str) -> None:
    """Keep a request that could not be accepted for a reason of ours (a defect)."""
    with autocommit() as connection:
        jobs.record_dropped(
            connection,
            queue=names.REQUESTS_QUEUE,
            task=names.GENERATE_TASK,
            message_id=ascii(message_id)[1:-1][:MAX_JOB_ID],
            size=0,
            reason=reason,
        )


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
            tenant=settings.broker_tenant,
        )
    if accepted.status is JobStatus.QUEUED:  # also a redelivery that stopped before this
        admit_and_post()
    return accepted


# --- admission and submits ----------------------------------------------------------------


def admit_and_post() -> None:
    """Admit what fits; POST the first ``INLINE_SUBMITS`` from here, message the rest."""
    admitted = dispatch(inline=INLINE_SUBMITS)
    for job_id in decisions.split_admitted(admitted, INLINE_SUBMITS)[0]:
        with about_job(job_id):  # maybe not the job of the task doing it
            _submit_inline(job_id)


def dispatch(*, inline: int = 0, full: bool = False) -> list[str]:
    """Admit queued jobs into free upstream slots; return the ids of those to POST now.

    Call it after the change that may let a job in (a new queued job, a freed slot) is
    committed. Every admitted job but the first ``inline`` gets a submit message; the
    caller POSTs those itself, saving the message hop between a slot freeing and the POST.
    A slot probe (every slot taken, a backlog waiting) gets a submit message timed for when
    a slot is likely free (``schedule.probe_delay``). ``full``: the upstream just said every
    slot is taken, whatever our books say (a cancelled job's task still runs there, or
    another client of the team's key): only a probe may go, at its time.
    """
    runtime = get_runtime()
    settings = runtime.settings
    limit = settings.upstream_concurrency
    # Jobs the upstream ended unseen (accepted probes) count in our books until polled;
    # this bounds how far the books may run ahead of what we have seen.
    probe_cap = PROBE_BOOKS * limit if settings.slot_probes else 0
    with autocommit() as connection:
        # (without probes the refused job is admitted again at once, and the pause the
        # refusal set holds its POST back)
        admission = jobs.admit_holding_probe(
            connection,
            0 if full and settings.slot_probes else limit,
            probe_cap=probe_cap,
            probe_wait=lambda ages: probe_delay(ages, settings, _durations(runtime)),
        )
    admitted, probe = admission.admitted, admission.probe
    presence.hold(admitted + ([probe.job_id] if probe else []))
    for job_id in decisions.split_admitted(admitted, inline)[1]:
        later(names.SUBMIT_TASK, job_id)
    if probe is not None:
        log.info("job.probe_planned", job_id=probe.job_id, send_in=round(probe.send_in, 3))
        later(names.SUBMIT_TASK, probe.job_id, countdown=probe.send_in)
    return admitted


def _durations(runtime: Runtime) -> durations.Durations | None:
    """What is learned of the upstream's durations (None: too little, or not wanted)."""
    if not runtime.settings.poll_adaptive:
        return None
    return durations.for_process(runtime.redis).current()


_pressure_cache: tuple[float, Pressure] | None = None


def _pressure() -> Pressure:
    """Jobs queued and holding slots, as of at most a second ago (one query a second); the
    oldest task's age as of now."""
    global _pressure_cache
    now = time.monotonic()
    if _pressure_cache is None or now - _pressure_cache[0] > 1.0:
        with autocommit() as connection:
            queued, holding, oldest = jobs.pressure(connection)
        _pressure_cache = (now, Pressure(queued, holding, oldest))
    read_at, pressure = _pressure_cache
    if pressure.oldest is None:
        return pressure
    return replace(pressure, oldest=pressure.oldest + (now - read_at))


def _backlog_at_limit(settings: Settings) -> bool:
    """Jobs wait while every slot is taken (as of a second ago): a probe may be due. Checked
    before asking the admission, whose count of the jobs holding slots is the costly part
    when thousands run (and no probe can be due)."""
    pressure = _pressure()
    return pressure.queued > 0 and pressure.holding >= settings.upstream_concurrency


def _poll_in(runtime: Runtime, attempt: int, age: float | None) -> float:
    """Seconds before poll ``attempt`` of a task accepted ``age`` seconds ago.

    Never raises: it runs between an upstream answer and the record of it, where an
    exception would lose the answer; without the database or Redis, the configured
    schedule serves.
    """
    settings = runtime.settings
    try:
        pressure = _pressure() if settings.poll_adaptive else None
        learned = _durations(runtime)
    except (OperationalError, InterfaceError, RedisError) as exc:
        log.warning("job.poll_schedule_fallback", error=str(exc))
        return poll_delay(attempt, settings)
    return next_poll(attempt, age, settings, learned, pressure)


def submit(job_id: str, upstream_task_id: str | None, attempt: int | None) -> str | Again:
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
    outcome = _submit_now(job_id)
    if isinstance(outcome, float):
        return Again((job_id,), outcome)
    return outcome


def _submit_inline(job_id: str) -> str:
    outcome = _submit_now(job_id)
    if isinstance(outcome, float):  # the request budget is spent: send it later
        later(names.SUBMIT_TASK, job_id, countdown=outcome)
        return "delayed"
    return outcome


def _submit_now(job_id: str) -> str | float:
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
    decision = decisions.after_submit(
        error,
        resubmit_unknown=settings.resubmit_unknown,
        cap=settings.retry_max_interval_seconds,
        probing=settings.slot_probes,
    )
    _throttle(runtime, decision)
    if decision.answer is not SubmitAnswer.ACCEPTED:
        _apply_submit_decision(job_id, decision)
        return str(decision.answer)
    # The upstream's clock started when it took the POST, one network leg after our send;
    # a poll counted from the send also takes a leg to get there, so it arrives on time.
    first_poll = max(0.0, _poll_in(runtime, 0, 0.0) - (time.monotonic() - sent_at))
    try:
        recorded = _record_submitted(job_id, submitted.task_id, first_poll)
        _heed(runtime, submitted.rate_limit)  # (after the answer is safe: it may fail)
        return recorded
    except (OperationalError, InterfaceError):
        # The POST was accepted but the database is away: keep the answer in a message and
        # record it when the database is back, instead of leaving an unknown outcome.
        log.warning(
            "job.record_deferred",
            job_id=job_id,
            upstream_task_id=submitted.task_id,
            reason="database unavailable",
        )
        later(
            names.SUBMIT_TASK,
            job_id,
            upstream_task_id=submitted.task_id,
            attempt=ticket.attempt,
            countdown=2,
        )
        return "record-deferred"


def _apply_submit_decision(job_id: str, decision: decisions.Decision) -> None:
    """A POST that was not accepted, or whose fate is unknown: the job moves on."""
    if decision.answer in (SubmitAnswer.NOT_ACCEPTED, SubmitAnswer.RESUBMIT):
        # back in the queue; a definite answer must not be lost to a connection a database
        # restart broke (the retried task could not record it)
        _again_if_disconnected(_requeue, job_id, decision.message)
        dispatch(full=decision.slots_full)
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
        bind_upstream(job_id, upstream_task_id)
        log.info("job.submitted", job_id=job_id, upstream_task_id=upstream_task_id)
        later(names.POLL_TASK, job_id, 0, countdown=first_poll)
        settings = get_runtime().settings
        if settings.slot_probes and _backlog_at_limit(settings):
            dispatch()  # every admitted job may be at the upstream now: time for a probe
        return "submitted"
    log.warning("job.moved_on", job_id=job_id, upstream_task_id=upstream_task_id)
    return "moved-on"


# --- polls ---------------------------------------------------------------------------------


def poll(job_id: str, seq: int, retries: int) -> str | Again:
    """Ask the upstream about a submitted job (poll number ``seq``, the ``retries``-th run of
    this message); :class:`Again` while it runs.

    Bounded by the job's deadline: every poll claims its turn in the database, and a claim
    past the deadline ends the job.
    """
    if not isinstance(job_id, str) or type(seq) is not int:
        return "refused"
    runtime = get_runtime()
    settings = runtime.settings
    wait = _put_off(runtime, job_id, seq)
    if wait > 0:
        return Again((job_id, seq), wait)
    hold_for = (
        settings.read_timeout + settings.connect_timeout + settings.retry_max_interval_seconds
    )
    # The claim comes first: no request token is spent on a job that does not exist, has
    # ended, or whose poll this is not.
    with autocommit() as session:  # one statement
        ticket = jobs.claim_poll(session, job_id, seq, hold_for=hold_for)
    if ticket is None:
        return "stale"
    bind_upstream(job_id, ticket.upstream_task_id)
    if ticket.status is JobStatus.CANCELLED:
        return _follow(runtime, job_id, ticket, retries)
    if ticket.overdue:
        _end(
            job_id,
            ErrorCode.DEADLINE_EXCEEDED,
            "deadline passed while the upstream was working",
            refill=True,
        )
        return "deadline"
    asked = _ask(runtime, ticket)
    if not isinstance(asked, _Asked):
        return Again((job_id, ticket.seq), asked)
    decision, state, error = asked.decision, asked.state, asked.error
    if decision.answer is PollAnswer.RETRY:
        if error is not None:  # asked again later: a line, since nothing else records it
            log.warning("job.poll_failed", job_id=job_id, error=str(error), poll=ticket.seq)
        return Again((job_id, ticket.seq), asked.retry_in(retries, settings))
    if decision.answer in (PollAnswer.ENDED, PollAnswer.FAILED):
        assert decision.code is not None
        _end(job_id, decision.code, decision.message, refill=True)
        observe.poll_ended(ticket, None)
        return str(decision.answer)
    if decision.answer is PollAnswer.SUCCEEDED:
        assert state is not None
        return _finish(runtime, job_id, ticket, state, retries)
    if decision.answer is PollAnswer.STARTED and ticket.status is JobStatus.PENDING:
        with autocommit() as session:  # one statement
            jobs.mark_processing(session, job_id)
    age = (
        ticket.submitted_ago + (time.monotonic() - ticket.claimed_at)
        if ticket.submitted_ago is not None
        else None
    )
    return Again((job_id, ticket.seq), _poll_in(runtime, ticket.seq, age))


def _put_off(runtime: Runtime, job_id: str, seq: int) -> float:
    """Seconds to put poll ``seq`` off without a request, when it came before its task is
    worth a look on what is known now (``schedule.put_off``); 0: claim it now.

    It only reads: the job's next check stays where the last claim put it, so the put-off
    stays well inside the sweeper's patience (``stale_after_seconds`` past that check), and
    it leaves time for an answer before the job's deadline. Before anything is learned a
    poll may be put off several times (the oldest task ages as fast as this one): each time
    is a read and a message, and each comes back as soon as the model may be known.
    """
    settings = runtime.settings
    if not settings.poll_adaptive:
        return 0.0
    learned = durations.for_process(runtime.redis)
    # A poll placed before the model was known comes within the longest countdown (a quarter
    # of the visibility timeout) of another process learning it, which is at most a refresh
    # or two from this one: after that, nothing places a poll early, and no read is made.
    placed_unlearned_within = (
        settings.visibility_timeout_seconds / 4 + 2 * durations.REFRESH_SECONDS
    )
    if learned.current() is not None and learned.known_for() > placed_unlearned_within:
        return 0.0
    with autocommit() as connection:  # one statement
        timing = jobs.poll_timing(connection, job_id, seq)
    if timing is None:  # ended, cancelled, not this poll's turn: the claim says which
        return 0.0
    wait = put_off(timing.age, settings, _durations(runtime), _pressure())
    # (a poll claimed past the deadline ends the job without asking: it must come with time
    # for an answer left)
    to_deadline = timing.left - settings.read_timeout - settings.poll_interval_seconds
    room = min(timing.check_in + settings.stale_after_seconds / 2, to_deadline)
    return max(0.0, min(wait, room, settings.visibility_timeout_seconds / 4))


@dataclass(frozen=True)
class _Asked:
    """What one query of a job's upstream task answered, and what it means."""

    decision: decisions.Decision
    state: TaskState | None
    error: UpstreamError | None

    def retry_in(self, retries: int, settings: Settings) -> float:
        """Seconds before asking again after a transient error (at least its Retry-After)."""
        floor = self.error.retry_after if self.error is not None else None
        return retry_delay(retries, settings, floor=floor)


def _ask(runtime: Runtime, ticket: jobs.PollTicket) -> _Asked | float:
    """Query a claimed poll's upstream task (a request token first); the seconds to wait
    when the request budget is spent."""
    wait = runtime.gate.acquire()
    if wait > 0:
        return wait
    state: TaskState | None = None
    error: UpstreamError | None = None
    try:
        state = runtime.upstream.get_task(ticket.upstream_task_id)
    except UpstreamError as exc:
        error = exc
    decision = decisions.after_poll(state, error, cap=runtime.settings.retry_max_interval_seconds)
    _throttle(runtime, decision)
    if state is not None:
        _heed(runtime, state.rate_limit)
    return _Asked(decision, state, error)


def _finish(
    runtime: Runtime, job_id: str, ticket: jobs.PollTicket, state: TaskState, retries: int
) -> str | Again:
    """Copy the images of a finished task and store its results: the job ends."""
    settings = runtime.settings
    images: list[ImageView] = []
    failure: tuple[ErrorCode, str] | None = None
    for index, resource in enumerate(state.resources):
        copy: StoredImage | None = None
        if runtime.store is not None:
            try:
                copy = copy_image(
                    runtime.downloads, runtime.store, job_id, index, resource.url, resource.format
                )
            except StorageError as exc:
                # Retried until the job's deadline unless asking again cannot help; the
                # upstream's URLs are kept either way.
                # The retry must land before the deadline: a poll claimed past it ends the
                # job as deadline_exceeded, without its images' URLs and bill.
                delay = retry_delay(retries, settings)
                if not exc.permanent and delay < ticket.left:
                    log.warning(
                        "job.copy_failed",
                        job_id=job_id,
                        image=index,
                        error=str(exc),
                        retry_in=round(delay, 3),
                    )
                    return Again((job_id, ticket.seq), delay)
                # Ends the job, but every other image is still copied while its URL lives.
                failure = failure or (
                    ErrorCode.STORAGE_FAILED,
                    f"copying image {index} failed: {exc}",
                )
        images.append(
            ImageView(
                index=index,
                url=resource.url,
                width=resource.width,
                height=resource.height,
                format=resource.format,
                storage_key=copy.key if copy else None,
                sha256=copy.sha256 if copy else None,
                size_bytes=copy.size_bytes if copy else None,
                content_type=copy.content_type if copy else None,
                stored_path=str(copy.path) if copy and copy.path else None,
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
        observe.poll_ended(ticket, state.duration_ms)
        if settings.poll_adaptive:
            durations.for_process(runtime.redis).record(state.duration_ms)
        admit_and_post()  # its slot is free: refill it from here
    return "succeeded" if failure is None else "failed"


def _follow(runtime: Runtime, job_id: str, ticket: jobs.PollTicket, retries: int) -> str | Again:
    """Poll the upstream task of a cancelled job, quietly, until it ends: the upstream has
    no cancel, so the task runs on and is billed; its bill is recorded, the job stays
    ``cancelled`` and holds no slot."""
    settings = runtime.settings
    if ticket.overdue:
        _settle_followed(job_id, "stopped following the upstream task: the deadline passed")
        return "unfollowed"
    asked = _ask(runtime, ticket)
    if not isinstance(asked, _Asked):
        return Again((job_id, ticket.seq), asked)
    decision, state = asked.decision, asked.state
    if decision.answer is PollAnswer.RETRY:
        return Again((job_id, ticket.seq), asked.retry_in(retries, settings))
    if decision.answer in (PollAnswer.STARTED, PollAnswer.RUNNING):
        return Again((job_id, ticket.seq), poll_delay(ticket.seq, settings))
    if state is None:  # refused for good (404, 401...): nothing more to learn
        _settle_followed(job_id, f"stopped following the upstream task: {decision.message}")
        return "unfollowed"
    _settle_followed(
        job_id,
        decisions.followed_end(state),
        billing_amount=state.billing_amount,
        duration_ms=state.duration_ms,
        request_id=state.request_id,
    )
    return "followed"


def _settle_followed(job_id: str, detail: str, **outcome: Any) -> None:
    with autocommit() as session:  # one statement
        if jobs.settle_followed(session, job_id, detail, **outcome):
            bill = outcome.get("billing_amount")
            log.info("job.followed", job_id=job_id, detail=detail, billing_amount=str(bill))


# --- ends ----------------------------------------------------------------------------------


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
        admit_and_post() if refill else dispatch()


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
    decision = decisions.after_submit(
        OutcomeUnknownError(message),
        resubmit_unknown=settings.resubmit_unknown,
        cap=settings.retry_max_interval_seconds,
    )
    _apply_submit_decision(job_id, decision)


def _throttle(runtime: Runtime, decision: decisions.Decision) -> None:
    if decision.pause is not None:
        runtime.gate.pause(decision.pause)
        log.warning("upstream.paused", seconds=round(decision.pause, 3))


def _heed(runtime: Runtime, rate_limit: RateLimit) -> None:
    """An answer that says the team's window is spent (``X-RateLimit-Remaining: 0``) holds
    every worker until its ``X-RateLimit-Reset``: the upstream counts requests we did not
    make (another key of the team, a clock apart), and its count is the one that refuses."""
    if rate_limit.remaining == 0:
        wait = rate_limit.wait_seconds()
        if wait:
            seconds = min(wait, runtime.settings.retry_max_interval_seconds)
            try:
                runtime.gate.pause(seconds)
            except RedisError as exc:  # the shared limiter still counts every request
                log.warning("upstream.pause_failed", error=str(exc))
                return
            log.warning("upstream.paused", seconds=round(seconds, 3), reason="window spent")


# --- the sweeper ---------------------------------------------------------------------------


def sweep() -> dict[str, int]:
    """Move on every job whose next step is overdue (a lost message, a killed worker), and
    every delivery whose message went missing."""
    settings = get_runtime().settings
    with transaction() as session:
        expired = jobs.expire_overdue(session)
    with transaction() as session:
        overdue = jobs.take_overdue(
            session,
            stale_after=settings.stale_after_seconds,
            recheck_in=_recheck_in(settings),
        )
    republished, unknown = _move_on(overdue)
    admitted = dispatch()  # nothing inline: every admitted job gets its submit message
    with transaction() as connection:
        lost = outbox.take_overdue(
            connection,
            stale_after=settings.stale_after_seconds,
            recheck_in=settings.delivery_hold_seconds,
        )
    for delivery_id, attempts in lost:
        later(names.DELIVER_TASK, delivery_id, attempts)
    result = {
        "expired": len(expired),
        "republished": republished,
        "outcome_unknown": unknown,
        "admitted": len(admitted),
        "deliveries": len(lost),
    }
    observe.swept(result)
    if any(result.values()):
        log.info("sweep.acted", **result)
    return result


def _recheck_in(settings: Settings) -> float:
    """How long a job moved on by the sweeper or a reclaim is left to its new step before
    either looks at it again (a poll's longest wait for an answer)."""
    return settings.read_timeout + settings.retry_max_interval_seconds


def _move_on(overdue: list[jobs.Overdue]) -> tuple[int, int]:
    """Send the next step of each job nobody moves on; (republished, outcome unknown)."""
    republished = unknown = 0
    for job in overdue:
        action = decisions.sweep_action(job)
        if action is SweepAction.OUTCOME_UNKNOWN:
            # The POST was sent and nobody recorded its answer: never sent blindly again.
            _outcome_unknown(
                job.job_id, "the worker sending it stopped before the answer was stored"
            )
            unknown += 1
        elif action is SweepAction.SUBMIT:
            later(names.SUBMIT_TASK, job.job_id)
            republished += 1
        else:
            later(names.POLL_TASK, job.job_id, job.poll_count)
            republished += 1
    return republished, unknown


def reclaim(node: str) -> dict[str, int]:
    """Move on every job a dead worker held (``worker/presence.py``): at once, instead of
    when the sweeper finds them late. Their slots come back as soon as the upstream says
    their tasks ended. A job whose POST the dead worker had started is taken only once that
    POST's answer can no longer come (``jobs.take_held``); it then ends as
    ``submit_outcome_unknown`` (never sent twice), as the sweeper would decide."""
    runtime = get_runtime()
    settings = runtime.settings
    held = presence.holdings(runtime.redis, node)
    with transaction() as session:
        taken = jobs.take_held(session, held, recheck_in=_recheck_in(settings))
    republished, unknown = _move_on(taken)
    presence.forget(runtime.redis, node)
    result = {
        "held": len(held),
        "republished": republished,
        "outcome_unknown": unknown,
        "admitted": len(dispatch()),
    }
    log.warning("worker.reclaimed", node=node, **result)
    return result


def revoked(job_id: str) -> None:
    """A job's submit or poll was revoked by an operator: the job is cancelled (its
    upstream task, if any, still followed for its bill) and its slot refilled."""
    with autocommit() as session:
        done, _ = jobs.cancel(session, job_id, reason="its task was revoked by an operator")
        follow_from = jobs.followed_poll(session, job_id) if done else None
    if not done:
        return
    log.warning("job.revoked", job_id=job_id)
    if follow_from is not None:  # a new chain: the revoked task id stays revoked
        later(names.POLL_TASK, job_id, follow_from)
    dispatch()
