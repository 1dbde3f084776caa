"""A job's end, announced in one place.

Every change that ends a job (``repository.transition`` to a terminal status, and
``repository.record_invalid``) reports an :class:`Ended` here, once, when its statement has
run. What must follow every end hangs off :func:`announce`: the task that ended a job learns
of it (``taken``) to finish as Celery's FAILURE when the job failed, the end is logged
(one ``job.ended`` line per end, whichever process or thread ended it) and counted
(``imagegen_jobs_ended_total``, and the per-minute hashes behind ``imagegen top``).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

from api_schema import ErrorCode, JobStatus
from worker.logs import get_logger
from worker.metrics import observe

log = get_logger("imagegen.jobs")
#: The end's message in its log line is cut to this (the whole of it is in the job's row).
LOGGED_MESSAGE_CHARS: Final = 300


@dataclass(frozen=True)
class Ended:
    """A job reached a terminal status."""

    job_id: str
    status: JobStatus
    error_code: ErrorCode | None = None
    message: str | None = None
    upstream_task_id: str | None = None


_ended: ContextVar[list[Ended] | None] = ContextVar("imagegen_ended", default=None)


def start() -> None:
    """Collect the ends announced from here on (a task starts)."""
    _ended.set([])


def announce(end: Ended) -> None:
    """A job just ended (its statement has run): its one ``job.ended`` line, and the task
    that ended it learns of it."""
    message = end.message
    if message is not None and len(message) > LOGGED_MESSAGE_CHARS:
        message = message[:LOGGED_MESSAGE_CHARS] + "..."
    # upstream_task_id and error_code are always written (null when none), so a line of
    # another job's task never shows that job's values
    (log.warning if end.status is JobStatus.FAILED else log.info)(
        "job.ended",
        job_id=end.job_id,
        status=end.status.value,
        error_code=end.error_code.value if end.error_code is not None else None,
        upstream_task_id=end.upstream_task_id,
        message=message,
    )
    observe.job_ended(end)
    collected = _ended.get()
    if collected is not None:
        collected.append(end)


def taken() -> list[Ended]:
    """The ends announced since ``start``, forgotten here."""
    collected = _ended.get() or []
    _ended.set([])
    return collected
