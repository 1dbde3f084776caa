"""Deliveries, decided: what an ended job's event is, how one attempt goes on each channel,
and what follows from its outcome. No Celery here: the ``imagegen.deliver`` task claims a
row, calls :func:`attempt` and :func:`next_state`, records the result and schedules the next
attempt."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from api_schema import DeliveryState, JobView

from . import webhooks
from .outbox import Claim
from .targets import REPLY, WEBHOOK
from .webhooks import Attempt, Outcome, WebhookConfig

#: Publishes a Celery task by name onto a queue: (task, queue, task id, kwargs).
SendReply = Callable[[str, str, str, dict[str, Any]], None]


def event(view: JobView) -> dict[str, Any]:
    """The event a job's end is: ``{"type": "job.<status>", "timestamp", "data": JobView}``."""
    return {
        "type": f"job.{view.status.value}",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": payload(view),
    }


def payload(view: JobView) -> dict[str, Any]:
    """The JobView as it is delivered: as JSON, without the state of its own deliveries."""
    data: dict[str, Any] = view.model_dump(mode="json", exclude={"deliveries"})
    return data


def attempt(
    claim: Claim,
    view: JobView | None,
    *,
    send_reply: SendReply,
    http: httpx.Client,
    webhook_config: Callable[[], WebhookConfig],
) -> Attempt:
    """Make one attempt of a claimed delivery."""
    if view is None:
        return Attempt(Outcome.PERMANENT, None, "the job no longer exists")
    if claim.channel == REPLY:
        task, queue = str(claim.target.get("task")), str(claim.target.get("queue"))
        try:
            # The delivery id is the task id: the same across retries, so a consumer that
            # sees it twice (at least once, never zero times) can tell.
            send_reply(task, queue, claim.delivery_id, {"job": payload(view)})
        except Exception as exc:  # noqa: BLE001 - any failure to publish is retried
            return Attempt(Outcome.RETRY, None, f"{type(exc).__name__}: {str(exc)[:200]}")
        return Attempt(Outcome.DELIVERED, None, None)
    if claim.channel == WEBHOOK:
        body = json.dumps(event(view), separators=(",", ":")).encode()
        return webhooks.send(
            http,
            str(claim.target.get("url")),
            msg_id=claim.delivery_id,
            payload=body,
            config=webhook_config(),
        )
    return Attempt(Outcome.PERMANENT, None, f"unknown channel {claim.channel!r}")


def next_state(
    result: Attempt,
    attempt_no: int,
    schedule: Sequence[float],
    rng: random.Random | None = None,
) -> tuple[DeliveryState, float | None]:
    """What follows attempt ``attempt_no`` (0 = the first): the delivery's state and, when
    it stays pending, the seconds until the next attempt."""
    if result.outcome is Outcome.DELIVERED:
        return DeliveryState.DELIVERED, None
    if result.outcome in (Outcome.PERMANENT, Outcome.GONE):
        return DeliveryState.DEAD, None
    delay = webhooks.backoff(attempt_no, schedule, rng or random.Random())
    if delay is None:
        return DeliveryState.DEAD, None
    return DeliveryState.PENDING, delay
