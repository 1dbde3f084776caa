"""A task that ended a job as ``failed`` finishes as Celery's FAILURE.

A failed job is a normal outcome for the pipeline (its state, event and outbox rows are
committed by the statement that ended it), but Flower and Celery's events only know a
task's own outcome: a task returning ``"failed"`` counts as a success. So the task raises
:class:`JobFailed` once its step is done; the exception names each job and its error code,
never the error message (it may quote the upstream, which may quote anything).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from api_schema import JobStatus, names
from worker.jobs.ends import Ended

#: The tasks whose FAILURE reports the jobs they failed: each of them is about one job (the
#: request it accepts, the job it POSTs or polls). The sweeper may end many jobs in one
#: pass (queued past their deadline, POSTs whose answer was lost): it stays SUCCESS, its
#: result counts them, and each end is in the jobs' own history.
REPORTING_TASKS: Final = frozenset({names.GENERATE_TASK, names.SUBMIT_TASK, names.POLL_TASK})


class JobFailed(Exception):  # noqa: N818 - the name operators read in Flower: a job failed
    """The task ended one or more jobs as ``failed``: ``job <id> failed: <code>``.

    Raised after every state change is committed and every message is published; listed
    in the tasks' ``throws``, so the worker logs one line without a traceback.
    """

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary

    def __reduce__(self) -> tuple[type[JobFailed], tuple[str]]:
        # Exceptions cross process boundaries pickled (a prefork pool): rebuilt from the text.
        return (JobFailed, (self.summary,))

    @classmethod
    def of(cls, ends: Iterable[Ended]) -> JobFailed | None:
        """The exception for the failed ones among ``ends``; None when no job failed."""
        failed = [e for e in ends if e.status is JobStatus.FAILED]
        if not failed:
            return None
        parts = [
            f"job {e.job_id} failed: {e.error_code.value if e.error_code else 'unknown'}"
            for e in failed
        ]
        return cls("; ".join(parts))


def check(task_name: str, ends: Iterable[Ended]) -> None:
    """Raise :class:`JobFailed` when ``task_name`` reports failures and a job in ``ends``
    failed (``ends``: what ``worker.jobs.ends.taken()`` returned after the task's step)."""
    if task_name not in REPORTING_TASKS:
        return
    failed = JobFailed.of(ends)
    if failed is not None:
        raise failed
