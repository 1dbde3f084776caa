"""The Celery app: JSON only, late acks, task events on, one queue per kind of work."""

from __future__ import annotations

import logging
from typing import Any, Final

from celery import Celery
from celery.signals import beat_init, task_postrun, task_prerun, worker_init

from api_schema import names
from api_schema.producer import celery_queues

from . import logs
from .broker import SIGNED_TASKS, message_key
from .config import get_settings
from .presence import Presence

# One INFO line per upstream request is noise at production rates (and costs CPU).
logging.getLogger("httpx").setLevel(logging.WARNING)
#: The order a worker takes messages in when several of its queues have some: submits and
#: polls of admitted (paid, running) jobs, then the sweeper, then deliveries of ended jobs,
#: then new requests. A burst of new requests therefore never delays the polls of jobs
#: already upstream, nor the results of jobs that ended.
CONSUME_ORDER: Final = (
    names.UPSTREAM_QUEUE,
    names.MAINTENANCE_QUEUE,
    names.DELIVERIES_QUEUE,
    names.REQUESTS_QUEUE,
)


def make_app() -> Celery:
    """Build the worker's Celery app from the settings."""
    settings = get_settings()
    # Importing .broker registered the guarded transport for redis:// URLs; the task class
    # signs every internal message (see worker/broker.py), shows redacted arguments and ends
    # a task that failed a job in FAILURE (worker/ops/taskclass.py; named, not imported:
    # it imports the jobs package, which must not import the app).
    app = Celery(
        "imagegen",
        broker=settings.broker_url,
        include=["worker.jobs.tasks", "worker.delivery.tasks"],
        task_cls="worker.ops.taskclass:ObservedTask",
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],  # a pickle (or any other) payload is refused, never run
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # Ack after the task ran, and hand a task back if its worker process died, so a
        # killed worker loses nothing; every state change is committed before the next
        # message is published, and redelivered messages are no-ops (conditional updates).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # (Celery's default, relied upon: a task that ended a job as failed raises JobFailed
        # after its state is committed, and its message must be acked, not redelivered.)
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
        # Redis re-delivers an unacked message after the visibility timeout. Every countdown
        # we schedule is far below it (Settings checks), or an early redelivery would
        # duplicate a poll (which the poll sequence number would then drop).
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            # Take from the queues in the order the worker lists them (CONSUME_ORDER), not
            # round robin: polls of paid, running jobs go before a backlog of new requests.
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        task_queues=celery_queues(),
        task_create_missing_queues=False,
        task_default_queue=names.UPSTREAM_QUEUE,
        # One table says which queue each task travels on; the transport refuses it elsewhere.
        task_routes={task: {"queue": queue} for task, queue in SIGNED_TASKS.items()},
        # Workers emit task events for Flower; "sent" events on every publish are left off,
        # they double the broker traffic of each retry and countdown.
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=None,
        beat_schedule={
            "sweep": {
                "task": names.SWEEP_TASK,
                "schedule": settings.sweep_interval_seconds,
                "options": {"expires": settings.sweep_interval_seconds},
            }
        },
    )
    # Each worker announces itself and the jobs it holds; peers reclaim a dead one's jobs.
    app.steps["consumer"].add(Presence)
    return app


app = make_app()


@worker_init.connect
@beat_init.connect
def _load_message_key(**_: Any) -> None:
    # Read the signing key before the first message, so a worker or beat that cannot read
    # it fails at start (like one that cannot reach its database), not on its first task.
    message_key()


@task_prerun.connect
def _bind_job(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    # Connected before the task modules' own handlers: their lines carry the job too.
    if task is not None and task_id is not None:
        logs.bind_task(str(task.name), task_id, args if isinstance(args, list | tuple) else ())


@worker_init.connect
def _forget_job_last(**_: Any) -> None:
    # Connected once every task module has connected its own task_postrun handlers (the
    # worker imported them before this signal), so their lines still carry the job.
    task_postrun.connect(_forget_job, weak=False)


def _forget_job(**_: Any) -> None:
    logs.clear_task()
