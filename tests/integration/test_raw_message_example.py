"""The checked-in raw Redis message (``api_schema/examples/generate-message.json``) is what
Celery sends, its decoded body is the ``.body.json`` beside it, and a worker runs it as it
is when a plain Redis client LPUSHes it.

The file is ``api_schema.message.generate_message``'s output (what the HTTP API pushes too);
``python -m tests.integration.test_raw_message_example`` rewrites both files from it.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator

from api_schema import GENERATE_TASK, REQUESTS_QUEUE, GenerationRequest, JobStatus
from api_schema.jsonschema import SCHEMA_DIR
from api_schema.message import generate_message
from api_schema.producer import enqueue, producer_app
from tests.harness import Stack

EXAMPLES: Final = Path(__file__).resolve().parents[2] / "api_schema" / "examples"
MESSAGE_FILE: Final = EXAMPLES / "generate-message.json"
BODY_FILE: Final = EXAMPLES / "generate-message.body.json"
JOB_ID: Final = "3f2c8a54-7b1e-4d6a-9c0f-2e8b5d7a1c93"
REQUEST: Final = {
    "prompt": "A watercolour portrait of the person in the reference photo",
    "subject_reference_images": ["https://example.com/portrait.jpg"],
}
EMBED: Final = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: What differs between two sends of the same request and is normalised in the file: the
#: sender's pid@host, the reply queue of Celery's own result backend (no relation to the
#: request's reply_to) and kombu's delivery tag (the worker replaces it anyway); and the
#: summary of the arguments, which Celery spells as the whole request and generate_message
#: as a short summary (the worker rebuilds it either way).
NORMALISED: Final = {
    ("headers", "origin"): "gen4242@producer-host",
    ("headers", "kwargsrepr"): "{'request': …}",
    ("properties", "reply_to"): "",
    ("properties", "delivery_tag"): "9e1d6c2b-0f4a-4b8e-a5d3-7c6b2e1f0a98",
}


def example() -> dict[str, Any]:
    message: dict[str, Any] = json.loads(MESSAGE_FILE.read_text(encoding="utf-8"))
    return message


def decoded_body(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(message["body"], validate=True).decode("utf-8"))


def with_id(message: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The message with another job id: the three places it appears, and nothing else."""
    copy = json.loads(json.dumps(message))
    copy["headers"]["id"] = copy["headers"]["root_id"] = job_id
    copy["properties"]["correlation_id"] = job_id
    return copy


def celery_message(job_id: str = JOB_ID) -> dict[str, Any]:
    """What ``enqueue`` publishes for REQUEST (kombu's in-memory transport builds the same
    envelope as its Redis transport; both are virtual transports), normalised."""
    app = producer_app("memory://")
    enqueue(REQUEST, app=app, job_id=job_id)
    with app.connection_for_write() as connection:
        message: dict[str, Any] = connection.default_channel._get(REQUESTS_QUEUE)
    for (part, name), value in NORMALISED.items():
        assert name in message[part], f"Celery no longer sends {part}.{name}"
        message[part][name] = value
    return message


# --- the files ------------------------------------------------------------------------------


def built() -> dict[str, Any]:
    return generate_message(
        REQUEST,
        JOB_ID,
        origin=NORMALISED["headers", "origin"],
        delivery_tag=NORMALISED["properties", "delivery_tag"],
    )


def test_the_example_is_what_generate_message_builds() -> None:
    assert example() == built(), (
        "run `python -m tests.integration.test_raw_message_example` and review the diff"
    )


def test_the_example_is_what_celery_sends() -> None:
    assert example() == celery_message(), (
        "Celery or kombu changed the envelope: run "
        "`python -m tests.integration.test_raw_message_example` and review the diff"
    )


def test_the_body_file_is_the_decoded_body() -> None:
    message = example()
    body = decoded_body(message)
    assert body == json.loads(BODY_FILE.read_text(encoding="utf-8"))
    args, kwargs, embed = body
    assert args == []
    assert list(kwargs) == ["request"]
    assert embed == EMBED


def test_the_body_validates_against_the_producer_schemas() -> None:
    _, kwargs, _ = decoded_body(example())
    schema = json.loads((SCHEMA_DIR / "generate_task_kwargs.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    problems = [e.message for e in Draft202012Validator(schema).iter_errors(kwargs)]
    assert problems == []
    request = GenerationRequest.model_validate(kwargs["request"])
    assert request.subject_reference_images == ["https://example.com/portrait.jpg"]


def test_the_envelope_names_one_job_and_the_request_queue() -> None:
    message = example()
    headers, props = message["headers"], message["properties"]
    assert headers["task"] == GENERATE_TASK
    assert headers["id"] == headers["root_id"] == props["correlation_id"] == JOB_ID
    assert uuid.UUID(JOB_ID).version == 4
    assert (headers["eta"], headers["expires"], headers["parent_id"]) == (None, None, None)
    assert "countdown" not in headers and "compression" not in headers
    assert message["content-type"] == "application/json"
    assert message["content-encoding"] == "utf-8"
    assert props["body_encoding"] == "base64"
    assert props["delivery_info"] == {"exchange": "", "routing_key": REQUESTS_QUEUE}
    assert (props["delivery_mode"], props["priority"]) == (2, 0)


# --- a worker runs it -----------------------------------------------------------------------


def _check_ran(live: Stack, job_id: str) -> None:
    view = live.wait_ended([job_id])[job_id]
    assert view.status is JobStatus.SUCCEEDED, (view.error_code, view.error_message)
    assert view.tenant == "default"  # the broker tenant (IMAGEGEN_BROKER_TENANT unset)
    assert len(view.images) == 1
    _, kwargs, _ = decoded_body(example())
    (stored,) = live.sql("SELECT request, tenant FROM jobs WHERE id = :id", id=job_id)
    assert stored.tenant == "default"
    assert stored.request == kwargs["request"]
    assert live.sql("SELECT count(*) FROM dropped_messages")[0][0] == 0


def test_the_file_bytes_as_they_are_run(live: Stack) -> None:
    """Pretty-printed JSON with newlines is a valid entry: the file's bytes, unchanged."""
    live.redis().lpush(REQUESTS_QUEUE, MESSAGE_FILE.read_bytes())
    _check_ran(live, JOB_ID)
    assert live.sql("SELECT count(*) FROM jobs")[0][0] == 1


def test_on_one_line_with_a_fresh_id_it_runs(live: Stack) -> None:
    """What a producer does: the same message, compact, with its own job id."""
    job_id = str(uuid.uuid4())
    entry = json.dumps(with_id(example(), job_id), separators=(",", ":"))
    assert "\n" not in entry
    live.redis().lpush(REQUESTS_QUEUE, entry)
    _check_ran(live, job_id)


def test_the_fields_the_readme_calls_required_are_enough(live: Stack) -> None:
    """The worker rebuilds every other header and property (README: what the worker reads)."""
    job_id = str(uuid.uuid4())
    message = example()
    minimal = {
        "body": message["body"],
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"task": GENERATE_TASK, "id": job_id},
        "properties": {"body_encoding": "base64"},
    }
    live.redis().lpush(REQUESTS_QUEUE, json.dumps(minimal))
    _check_ran(live, job_id)


def regenerate() -> None:
    """Rewrite both example files from ``generate_message``."""
    message = built()
    MESSAGE_FILE.write_text(json.dumps(message, indent=2, ensure_ascii=False) + "\n")
    body = decoded_body(message)
    BODY_FILE.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    regenerate()
