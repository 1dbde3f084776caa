"""The raw Redis entry of an ``imagegen.generate`` request, for producers without Celery.

Byte for byte what a Celery 5 producer LPUSHes onto the ``imagegen.requests`` list
(protocol 2, JSON body in base64), except two things a producer need not send:
``kwargsrepr``/``argsrepr`` (short summaries instead of the whole request, so prompts
and data URLs are not repeated in the envelope), and ``origin``/``reply_to``, which Celery
fills with its own process name and result queue. ``api_schema/examples/generate-message.json``
is this function's output, and a test compares it with what Celery sends.

Needs nothing but the standard library and pydantic::

    entry = generate_message(request, job_id)
    redis.lpush(REQUESTS_QUEUE, json.dumps(entry))
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

from .models import GenerationRequest
from .names import GENERATE_TASK, REQUESTS_QUEUE

EMBED: Final = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def generate_message(
    request: GenerationRequest | Mapping[str, Any],
    job_id: str,
    *,
    origin: str = "",
    delivery_tag: str | None = None,
) -> dict[str, Any]:
    """The Redis list entry that asks for ``request`` as job ``job_id``.

    ``request`` is validated first (``pydantic.ValidationError``) unless it already is a
    ``GenerationRequest``.
    """
    if not isinstance(request, GenerationRequest):
        request = GenerationRequest.model_validate(dict(request))
    kwargs = {"request": request.model_dump(mode="json", exclude_none=True)}
    # kombu's JSON: the standard library's default separators, non-ASCII escaped.
    body = json.dumps([[], kwargs, EMBED]).encode("utf-8")
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": GENERATE_TASK,
            "id": job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": job_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": "{'request': …}",
            "origin": origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": job_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": REQUESTS_QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag or str(uuid.uuid4()),
        },
    }
