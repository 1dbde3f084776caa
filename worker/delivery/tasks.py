"""The delivery task: thin. Claim an attempt in the outbox, let the service make it, record
what became of it, publish the next attempt. Also where a task's new outbox rows are
published, once the task that wrote them has returned."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.signals import task_postrun

from api_schema import DeliveryState, names
from worker import jobs
from worker.celery_app import app
from worker.db import autocommit, session_scope
from worker.jobs.tasks import RETRY_INFRA
from worker.logs import bind_job, get_logger
from worker.runtime import get_runtime

from . import outbox
from . import service as deliveries
from .webhooks import Attempt, Outcome, WebhookConfig

log = get_logger("imagegen.delivery")


@task_postrun.connect
def _publish_deliveries(**_: Any) -> None:
    # After the task returned, every statement that ended a job has committed: its outbox
    # rows can be announced (if this fails, the sweeper announces them).
    publish_deliveries()


def publish_deliveries() -> None:
    """Send a delivery message for each outbox row written since the buffer started."""
    for delivery_id in outbox.take_buffer():
        deliver.apply_async((delivery_id, 0))


def send_reply(task: str, queue: str, task_id: str, kwargs: dict[str, Any]) -> None:
    """Send a producer's reply task by name onto its own queue (JSON, protocol 2)."""
    from kombu.entity import Exchange, Queue

    app.send_task(
        task,
        kwargs=kwargs,
        task_id=task_id,
        queue=Queue(queue, Exchange(""), routing_key=queue),
        serializer="json",
    )


@app.task(name=names.DELIVER_TASK, bind=True, **RETRY_INFRA)
def deliver(self: Task, delivery_id: str, attempt: int) -> str:
    """Make attempt ``attempt`` of one delivery of an ended job, then record its outcome."""
    if not isinstance(delivery_id, str) or type(attempt) is not int:
        return "refused"
    runtime = get_runtime()
    settings = runtime.settings
    # Countdowns stay below a quarter of the visibility timeout: a longer wait is made of
    # several hops (each message finds the row not yet due and waits again).
    longest = settings.visibility_timeout_seconds / 4
    with autocommit() as connection:
        claimed = outbox.claim(
            connection, delivery_id, attempt, hold_for=settings.delivery_hold_seconds
        )
    if claimed is None:
        return "stale"
    if isinstance(claimed, float):
        deliver.apply_async((delivery_id, attempt), countdown=min(claimed, longest))
        return "waiting"
    bind_job(claimed.job_id)  # this task's lines from here on are about the delivery's job
    steps = settings.delivery_steps
    if claimed.attempt > len(steps):  # re-sent by the sweeper after crashes, past its schedule
        with autocommit() as connection:
            outbox.record(
                connection,
                delivery_id,
                attempt=attempt,
                state=DeliveryState.DEAD,
                status=None,
                error=f"no result recorded after {attempt} attempts",
            )
        return DeliveryState.DEAD.value
    with session_scope() as session:
        view = jobs.view(session, claimed.job_id, with_deliveries=False)
    try:
        result = deliveries.attempt(
            claimed,
            view,
            send_reply=send_reply,
            http=runtime.webhooks,
            webhook_config=lambda: WebhookConfig(
                secrets=settings.webhook_secret_list,
                allow_hosts=settings.delivery_policy.allow_hosts,
                timeout=settings.webhook_timeout,
            ),
        )
    except Exception as exc:  # a defect: recorded and retried on the schedule, never silent
        log.exception("delivery.attempt_crashed", delivery_id=delivery_id)
        result = Attempt(Outcome.RETRY, None, f"{type(exc).__name__} in the worker")
    state, retry_in = deliveries.next_state(result, attempt, steps)
    with autocommit() as connection:
        recorded = outbox.record(
            connection,
            delivery_id,
            attempt=attempt,
            state=state,
            status=result.status,
            error=result.error,
            retry_in=retry_in,
        )
    if not recorded:  # a later attempt (the sweeper's) took over meanwhile: its result stands
        return "superseded"
    log.info(
        "delivery.attempted",
        delivery_id=delivery_id,
        channel=claimed.channel,
        attempt=attempt + 1,
        state=state.value,
        error=result.error,
    )
    if retry_in is not None:
        deliver.apply_async((delivery_id, attempt + 1), countdown=min(retry_in, longest))
    return state.value
