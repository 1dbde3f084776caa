"""The Celery app: JSON only, late acks, task events on, one queue per kind of work."""

from __future__ import annotations

import logging

from celery import Celery

from api_schema import names
from api_schema.producer import celery_queues

from .config import get_settings

# One INFO line per upstream request is noise at production rates (and costs CPU).
logging.getLogger("httpx").setLevel(logging.WARNING)


def make_app() -> Celery:
    """Build the worker's Celery app from the settings."""
    settings = get_settings()
    app = Celery("imagegen", broker=settings.broker_url, include=["worker.tasks"])
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
        worker_prefetch_multiplier=4,
        # Redis re-delivers an unacked message after the visibility timeout. Every countdown
        # we schedule is far below it (Settings checks), or an early redelivery would
        # duplicate a poll (which the poll sequence number would then drop).
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        task_queues=celery_queues(),
        task_create_missing_queues=False,
        task_default_queue=names.UPSTREAM_QUEUE,
        task_routes={
            names.GENERATE_TASK: {"queue": names.REQUESTS_QUEUE},
            names.SUBMIT_TASK: {"queue": names.UPSTREAM_QUEUE},
            names.POLL_TASK: {"queue": names.UPSTREAM_QUEUE},
            names.SWEEP_TASK: {"queue": names.MAINTENANCE_QUEUE},
        },
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
    return app


app = make_app()
