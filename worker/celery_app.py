"""The Celery app: JSON only, late acks, task events on, one queue per kind of work."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

from api_schema import names
from api_schema.producer import celery_queues

from .config import get_settings

# One INFO line per upstream request is noise at production rates (and costs CPU).
logging.getLogger("httpx").setLevel(logging.WARNING)
log = logging.getLogger("imagegen.broker")
#: The order a worker takes messages in when several of its queues have some: submits and
#: polls of admitted (paid, running) jobs, then the sweeper, then new requests. A burst of
#: new requests therefore never delays the polls of jobs already upstream.
CONSUME_ORDER: Final = (names.UPSTREAM_QUEUE, names.MAINTENANCE_QUEUE, names.REQUESTS_QUEUE)


def envelope_problem(entry: object) -> str | None:
    """What makes a queue entry unusable, or None for a message kombu and Celery can handle.

    kombu's Redis transport and Celery's consumer trust the envelope: a malformed one stops
    the worker (or leaves its message stuck unacked), so it is dropped before they see it.
    Bodies in another serializer, or not JSON, are left to Celery, which refuses them safely.
    """
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not a message envelope"
    props = entry.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("delivery_tag"), str):
        return "no properties.delivery_tag"
    if not isinstance(props.get("delivery_info", {}), dict):
        return "properties.delivery_info is not an object"
    headers = entry.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "headers is not an object"
    if not isinstance(entry.get("content-type"), str):
        return "no content-type"
    if not isinstance(entry.get("content-encoding"), str):
        return "no content-encoding"
    body, encoding = entry.get("body"), props.get("body_encoding")
    if not isinstance(body, str) or encoding not in (None, "base64"):
        return "body is not a string in a known encoding"
    try:
        raw = base64.b64decode(body) if encoding == "base64" else body.encode()
    except (binascii.Error, ValueError):
        return "body is not valid base64"
    if headers is None or "task" not in headers:
        return None  # not a protocol-2 task message: Celery reports it as unknown
    task_id, limits = headers.get("id"), headers.get("timelimit")
    if not isinstance(headers["task"], str) or not isinstance(task_id, str) or not task_id:
        return "headers.task or headers.id is not a non-empty string"
    if limits is not None and not (
        isinstance(limits, list)
        and len(limits) == 2
        and all(x is None or isinstance(x, int | float) for x in limits)
    ):
        return "headers.timelimit is not [soft, hard]"
    if entry["content-type"] != "application/json" or headers.get("compression"):
        return None
    try:
        parts = json.loads(raw)
    except RecursionError:
        return "body nests too deeply"
    except ValueError:
        return None  # Celery logs "Can't decode message body" and drops it
    if not (
        isinstance(parts, list)
        and len(parts) == 3
        and isinstance(parts[0], list)
        and isinstance(parts[1], dict)
        and isinstance(parts[2], dict | None)
    ):
        return "body is not [args, kwargs, embed]"
    embed = parts[2] or {}
    signatures = [embed.get(k) or [] for k in ("callbacks", "errbacks", "chain")]
    if not all(isinstance(v, list) and all(isinstance(x, dict) for x in v) for v in signatures):
        return "embed callbacks, errbacks or chain is not a list of signatures"
    if not isinstance(embed.get("chord"), dict | None):
        return "embed chord is not a signature"
    return None


class _GuardedChannel(kombu_redis.Channel):
    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a new redis.Redis object (and its callback tables) for every publish;
        # one client per connection pool does the same work (redis-py clients are
        # thread-safe, each command takes a connection from the pool).
        if client:
            yield client
            return
        pool = self.pool
        cached = self.__dict__.get("_shared_client")
        if cached is None or cached[0] is not pool:
            cached = (pool, self._create_client())
            self.__dict__["_shared_client"] = cached
        yield cached[1]

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            log.error("dropped a queue entry that is not a JSON message envelope: %s", exc)
            return True


class GuardedRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, dropping (and logging) entries it would choke on."""

    Channel = _GuardedChannel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = envelope_problem(message)
        if problem is not None:
            headers = message.get("headers") if isinstance(message, dict) else None
            about = headers if isinstance(headers, dict) else {}
            log.error(
                "dropped a malformed message from %s (task %.80r, id %.80r): %s",
                queue,
                about.get("task"),
                about.get("id"),
                problem,
            )
            return
        super()._deliver(message, queue)


# kombu resolves a broker URL's scheme through this table: redis:// and rediss:// URLs get
# the guarded transport and read the same everywhere they are shown (logs, Flower).
TRANSPORT_ALIASES.update(dict.fromkeys(("redis", "rediss"), f"{__name__}:GuardedRedisTransport"))


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
