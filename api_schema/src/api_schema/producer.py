"""Enqueue generation requests by task name, without importing the worker.

Needs the ``producer`` extra (``pip install 'imagegen-api-schema[producer]'``)::

    from api_schema.producer import enqueue
    job_id = enqueue({"prompt": "...", "subject_reference_images": ["https://..."]},
                     broker_url="redis://localhost:6379/0")

With an ``idempotency_key`` (and no explicit ``job_id``) the job id is derived from the key
and the request's fingerprint, so a retried call gets the same id and a reused key with a
different request does not.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from .models import GenerationRequest, request_fingerprint
from .names import ALL_QUEUES, GENERATE_TASK, REQUESTS_QUEUE

if TYPE_CHECKING:
    from celery import Celery

#: Namespace of job ids derived from idempotency keys (uuid5), so a retried enqueue of the
#: same request carries the same job id.
IDEMPOTENCY_NAMESPACE: Final = uuid.UUID("5b0c7f3e-6a47-4a53-9a5e-3f1f2f0a7c11")


def job_id_for(request: GenerationRequest) -> str:
    """The job id a request gets: derived from its idempotency key, else random.

    With a key, the id is uuid5 of the key and the request's fingerprint
    (``request_fingerprint``): retrying the same request with the same key gives the same id
    (the worker returns the first job), while reusing the key for a different request gives
    another id, which the worker refuses as an idempotency conflict instead of quietly
    returning the first job.
    """
    if request.idempotency_key is not None:
        name = f"{request.idempotency_key}\n{request_fingerprint(request)}"
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, name))
    return str(uuid.uuid4())


def celery_queues() -> list[Any]:
    """The queues, routed through the default exchange.

    Messages then go straight to the queue's list in Redis, with no binding lookup: a
    flushed (or restarted, memory-only) Redis cannot turn a publish into a silent drop.
    """
    from kombu.entity import Exchange, Queue

    default = Exchange("", type="direct")
    return [Queue(name, default, routing_key=name) for name in ALL_QUEUES]


@lru_cache(maxsize=8)
def producer_app(broker_url: str) -> Celery:
    """A minimal Celery app that only publishes, JSON only."""
    from celery import Celery

    app = Celery("imagegen-producer", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        task_queues=celery_queues(),
        task_create_missing_queues=False,
    )
    return app


def enqueue(
    request: GenerationRequest | Mapping[str, Any],
    *,
    broker_url: str | None = None,
    app: Celery | None = None,
    job_id: str | None = None,
) -> str:
    """Validate ``request``, send it as ``imagegen.generate`` and return its job id.

    Raises ``pydantic.ValidationError`` (nothing is sent) for any invalid request: not a
    mapping, a field out of its limits, ``metadata`` nested too deep, a request over
    ``MAX_REQUEST_BYTES`` as JSON. A ``GenerationRequest`` instance is taken as validated.

    The job id is ``job_id`` when given, else derived from the idempotency key and the
    request (see ``job_id_for``): the same call retried yields the same id, the same key
    with a different request another id (an idempotency conflict for the worker); random
    without a key.
    """
    if not isinstance(request, GenerationRequest):
        data = dict(request) if isinstance(request, Mapping) else request
        request = GenerationRequest.model_validate(data)
    if app is None:
        if broker_url is None:
            raise ValueError("enqueue needs broker_url or app")
        app = producer_app(broker_url)
    job_id = job_id or job_id_for(request)
    app.send_task(
        GENERATE_TASK,
        kwargs={"request": request.model_dump(mode="json", exclude_none=True)},
        task_id=job_id,
        queue=REQUESTS_QUEUE,
    )
    return job_id
