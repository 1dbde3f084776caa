"""What an upstream answer means for a job: the decisions of the pipeline, as plain functions.

No Celery, no database, no HTTP: the service (``jobs/service.py``) makes the calls, asks here
what the answer means, then applies it (a transition through the repository) and names the
next step. Unit tests reach every rule without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from api_schema import ErrorCode, JobStatus
from worker.upstream.client import (
    OutcomeUnknownError,
    PermanentError,
    RetryableError,
    TaskState,
    UpstreamError,
)

from .repository import Overdue

#: How long every worker pauses when the upstream said to back off but not for how long.
DEFAULT_PAUSE: Final = 1.0
#: How many of the jobs its admission lets in a task POSTs itself (the rest get messages):
#: a freed slot is refilled without a message hop, and one task never holds many POSTs.
INLINE_SUBMITS: Final = 4


class SubmitAnswer(StrEnum):
    """What a POST's answer means."""

    ACCEPTED = "accepted"  # a task id: store it, poll it
    NOT_ACCEPTED = "not-accepted"  # definitely not (429): back to the queue, try again later
    REJECTED = "rejected"  # definitely not, for good (4xx): the job fails with the code
    UNKNOWN = "unknown"  # a task may exist: never sent again (unless configured), fails
    RESUBMIT = "resubmit"  # outcome unknown, and the deployment chose to risk paying twice


@dataclass(frozen=True)
class Decision:
    """What to do with a job after an upstream answer."""

    answer: StrEnum
    code: ErrorCode | None = None  # the error code it ends with, when it ends
    message: str = ""
    pause: float | None = None  # every worker waits this long first (the upstream asked)
    slots_full: bool = False  # the upstream said every slot of the team is taken


def pause_for(error: UpstreamError, cap: float) -> float | None:
    """How long every worker should pause after ``error`` (a 429 or 503), or None."""
    if not error.throttle:
        return None
    wanted = error.retry_after if error.retry_after is not None else DEFAULT_PAUSE
    return min(wanted, cap)


def after_submit(
    error: UpstreamError | None, *, resubmit_unknown: bool, cap: float, probing: bool = False
) -> Decision:
    """What a POST's outcome means: ``error`` is None when the upstream accepted it.

    With ``probing`` (slot probes on), "Concurrent limit exceeded" pauses nobody: it is the
    expected answer to a probe sent a little early, says nothing about the request rate, and
    the next probe is planned from the running tasks, not from its ``Retry-After``.
    """
    if error is None:
        return Decision(SubmitAnswer.ACCEPTED)
    pause = None if probing and error.concurrency else pause_for(error, cap)
    if isinstance(error, RetryableError):
        return Decision(SubmitAnswer.NOT_ACCEPTED, message=f"not accepted: {error.message}",
                        pause=pause, slots_full=error.concurrency)  # fmt: skip
    if isinstance(error, PermanentError):
        return Decision(SubmitAnswer.REJECTED, error.error_code, error.message, pause)
    if not isinstance(error, OutcomeUnknownError):
        raise TypeError(f"not an upstream answer: {error!r}")
    if resubmit_unknown:
        return Decision(SubmitAnswer.RESUBMIT, message=f"outcome unknown, resubmitting: "
                        f"{error.message}", pause=pause)  # fmt: skip
    return Decision(
        SubmitAnswer.UNKNOWN,
        ErrorCode.SUBMIT_OUTCOME_UNKNOWN,
        f"the upstream may or may not have created a task; not resubmitted: {error.message}",
        pause,
    )


class PollAnswer(StrEnum):
    """What a task query's answer means."""

    SUCCEEDED = "succeeded"  # copy the images, store the results
    FAILED = "failed"  # the upstream task failed: the job fails with its reason
    ENDED = "ended"  # the query was refused for good (404, 401...): the job fails
    STARTED = "started"  # it began processing: record that, poll again
    RUNNING = "running"  # poll again later
    RETRY = "retry"  # not answered (5xx, 429, timeout): ask again after a backoff


def after_poll(state: TaskState | None, error: UpstreamError | None, *, cap: float) -> Decision:
    """What a task query's outcome means (``state`` when answered, else ``error``)."""
    if error is not None:
        if isinstance(error, PermanentError):
            return Decision(PollAnswer.ENDED, error.error_code, error.message)
        return Decision(PollAnswer.RETRY, message=error.message, pause=pause_for(error, cap))
    if state is None:
        raise ValueError("a poll has either a state or an error")
    if state.status == "failed":
        reason = state.error or "the upstream task failed"
        return Decision(PollAnswer.FAILED, ErrorCode.UPSTREAM_FAILED, reason)
    if state.status == "success":
        return Decision(PollAnswer.SUCCEEDED)
    if state.status == "processing":
        return Decision(PollAnswer.STARTED)
    return Decision(PollAnswer.RUNNING)


def followed_end(state: TaskState) -> str:
    """The event text of a cancelled job's upstream task that ended (what it cost)."""
    bill = f"billed {state.billing_amount}" if state.billing_amount is not None else "no bill"
    if state.status == "failed":
        return f"the upstream task failed after the cancel ({bill})"
    return f"the upstream task succeeded after the cancel: {len(state.resources)} image(s), {bill}"


class SweepAction(StrEnum):
    """What the sweeper does with a job whose next step is overdue."""

    OUTCOME_UNKNOWN = "outcome-unknown"  # its POST was sent, its answer never stored
    SUBMIT = "submit"  # admitted, never sent: publish its submit again
    POLL = "poll"  # submitted: publish its next poll again


def sweep_action(job: Overdue) -> SweepAction:
    """The sweeper's move for one overdue job (never a blind second POST)."""
    if job.status is JobStatus.SUBMITTING:
        return SweepAction.OUTCOME_UNKNOWN if job.submit_started else SweepAction.SUBMIT
    return SweepAction.POLL


def split_admitted(admitted: list[str], inline: int) -> tuple[list[str], list[str]]:
    """Of the jobs one admission let in: (POSTed by the admitting task, sent as messages)."""
    return admitted[:inline], admitted[inline:]
