"""A job's end, announced in one place.

Every change that ends a job (``repository.transition`` to a terminal status, and
``repository.record_invalid``) reports an :class:`Ended` here, once, when its statement has
run. What must follow every end hangs off :func:`announce`: the task that ended a job learns
of it (``taken``) to finish as Celery's FAILURE when the job failed, and the end is logged.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from api_schema import ErrorCode, JobStatus
from worker.metrics import observe


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
    """A job just ended (its statement has run)."""
    observe.job_ended(end)
    collected = _ended.get()
    if collected is not None:
        collected.append(end)


def taken() -> list[Ended]:
    """The ends announced since ``start``, forgotten here."""
    collected = _ended.get() or []
    _ended.set([])
    return collected
