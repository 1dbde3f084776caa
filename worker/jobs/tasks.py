"""The jobs' Celery tasks, thin: each opens its step in ``service`` and settles what the step
returned (publish the messages it named, retry itself when it asked to run again)."""

from __future__ import annotations

import threading
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import task_postrun, task_prerun, task_revoked, worker_process_init
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from api_schema import names
from worker import jobs, presence
from worker.celery_app import app
from worker.config import get_settings
from worker.db import reset_engine
from worker.delivery import outbox
from worker.enqueue import collecting
from worker.logs import get_logger
from worker.runtime import reset_runtime

from . import ends, service
from .service import Again

log = get_logger("imagegen.tasks")
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
#: a request is retried until its database is back (see ``generate``).
RETRY_INFRA: dict[str, Any] = {
    "autoretry_for": INFRA_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": get_settings().infra_max_retries,
}
#: A poll chain is bounded by its job's deadline (at most a week, checked at every claim);
#: this is only a backstop on the count (a job past it is found again by the sweeper).
POLL_MAX_RETRIES = 100_000


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
    ends.start()  # the jobs this task ends


@task_postrun.connect
def _release(**_: Any) -> None:
    presence.release()  # what it admitted has its messages in the broker now


@task_revoked.connect
def _revoked(
    sender: Task | None = None, request: Any = None, expired: bool = False, **_: Any
) -> None:
    # An operator revoked a job's submit or poll (Flower's "Revoke"): its chain stops here,
    # so the job is cancelled now rather than left holding a slot until the sweeper. Its
    # upstream task is still followed for its bill (a new poll message: the revoked id stays
    # revoked). This runs in the worker's consumer, whose loop must not wait on the
    # database: the work is done on a thread of its own.
    if expired or sender is None or sender.name not in (names.POLL_TASK, names.SUBMIT_TASK):
        return
    args = getattr(request, "args", None)  # the revoked message's Context
    job_id = args[0] if args else None
    if isinstance(job_id, str):
        threading.Thread(target=_cancel_revoked, args=(job_id,), daemon=True).start()


def _cancel_revoked(job_id: str) -> None:
    from worker.delivery.tasks import publish_deliveries

    outbox.start_buffer()
    try:
        with collecting():
            service.revoked(job_id)
        publish_deliveries()  # the producer hears of the cancel
    except Exception:  # the sweeper still finds the job and its deliveries
        log.exception("job.revoke_failed", job_id=job_id)
    finally:
        presence.release()  # what it admitted has its messages in the broker now


@app.task(name=names.GENERATE_TASK, bind=True, max_retries=None)
def generate(self: Task, *args: Any, **kwargs: Any) -> dict[str, str]:
    """Accept one request: validate it, record the job, admit what fits upstream.

    A request has no row until it is accepted, so nothing else could recover it: while its
    database or Redis is away it is retried every 30 s at most, like the requests still
    waiting in the queue behind it, never given up (and never acked as failed).
    """
    try:
        with collecting():
            return service.accept(str(self.request.id), args, kwargs)
    except INFRA_ERRORS as exc:
        if self.request.retries and self.request.retries % 20 == 0:
            log.error(
                "request.retrying",
                job_id=str(self.request.id),
                retries=self.request.retries,
                reason="database or Redis away",
            )
        delay = min(30.0, 2.0 ** min(self.request.retries, 5))
        try:
            raise self.retry(countdown=delay, exc=exc) from None
        except Reject:  # the retry could not be published: back to the queue instead
            raise Reject(str(exc), requeue=True) from None
    except Exception as exc:  # a defect, not the request's fault: kept visible, never lost
        log.exception("request.not_accepted", job_id=str(self.request.id))
        reason = f"could not be accepted ({type(exc).__name__}); see the worker log"
        service.record_dropped(str(self.request.id), reason)
        return {"job_id": str(self.request.id), "status": "dropped"}


@app.task(name=names.SUBMIT_TASK, bind=True, **RETRY_INFRA)
def submit(
    self: Task, job_id: str, upstream_task_id: str | None = None, attempt: int | None = None
) -> str:
    """POST one admitted job to the upstream, once (or only record an earlier POST's answer)."""
    with collecting():
        step = service.submit(job_id, upstream_task_id, attempt)
    if isinstance(step, Again):  # the request budget is spent
        raise self.retry(args=step.args, countdown=step.countdown)
    return step


@app.task(name=names.POLL_TASK, bind=True, **RETRY_INFRA)
def poll(self: Task, job_id: str, seq: int = 0) -> str:
    """Ask the upstream about a submitted job; retry with a countdown while it runs."""
    with collecting():
        step = service.poll(job_id, seq, self.request.retries)
    if isinstance(step, Again):
        raise self.retry(args=step.args, countdown=step.countdown, max_retries=POLL_MAX_RETRIES)
    return step


@app.task(name=names.SWEEP_TASK, **{**RETRY_INFRA, "max_retries": 3})
def sweep() -> dict[str, int]:
    """Move on every job whose next step is overdue (a lost message, a killed worker)."""
    with collecting():
        return service.sweep()


@app.task(name=names.RECLAIM_TASK, **{**RETRY_INFRA, "max_retries": 5})
def reclaim(node: str) -> dict[str, int]:
    """Move on the jobs of a worker that died (see ``worker/presence.py``)."""
    if not isinstance(node, str):
        return {}
    with collecting():
        return service.reclaim(node)
