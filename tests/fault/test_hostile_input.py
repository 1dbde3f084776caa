"""Hostile input: a corpus of broken, malicious and malformed ``imagegen.generate`` messages.

Every message either ends as a ``failed`` job with error code ``invalid_request`` whose
message names the offending field, or, when there is no job to speak of (the envelope
itself is unusable), is logged clearly by the worker and dropped. In every case the worker
keeps running, nothing reaches the upstream, and a valid request still succeeds afterwards.

The (a) cases are published like any producer would (by task name, JSON); the (b) cases
are raw entries LPUSHed onto the ``imagegen.requests`` list, built from the exact kombu /
Celery protocol-2 envelope a real publish produces (learned at run time, not hard-coded).
"""

from __future__ import annotations

import base64
import copy
import json
import pickle
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu import Exchange, Queue

from api_schema import GENERATE_TASK, REQUESTS_QUEUE, ErrorCode, JobStatus
from api_schema.models import MAX_IMAGE_BYTES
from api_schema.producer import producer_app
from tests.harness import Stack, request, tiny_png

pytestmark = pytest.mark.timeout(120)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(64)
GIF_BYTES = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,"
)
HTTPS_IMAGE = "https://example.com/reference.jpg"
#: kombu's Redis transport keeps delivered-but-unacked messages in this hash.
UNACKED_KEY = "unacked"


def _data_url(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _big_png(size: int) -> str:
    return _data_url("png", PNG_MAGIC + bytes(size - len(PNG_MAGIC)))


def _ten_mib_png() -> str:
    # exactly MAX_IMAGE_BYTES decoded: the limit is "under 10 MiB", so this is one byte too many
    return _data_url("png", PNG_MAGIC + bytes(MAX_IMAGE_BYTES - len(PNG_MAGIC)))


# --- (a) requests that must end as a failed invalid_request job ------------------------

Sender = Callable[[Stack], str]


@dataclass(frozen=True)
class Bad:
    """One hostile message and the field its job's error message must name."""

    send: Sender
    field: str


def _with(**fields: Any) -> Sender:
    """A valid request with ``fields`` replaced (built when sent)."""
    # not request(**fields): it turns a falsy prompt into a valid one
    return lambda live: live.send({**request(), **fields})


def _lazy(make: Callable[[], dict[str, Any]]) -> Sender:
    """A request built only when sent (for the big ones)."""
    return lambda live: live.send(make())


def _without(name: str) -> Sender:
    def send(live: Stack) -> str:
        body = request()
        del body[name]
        return live.send(body)

    return send


def _request_is(value: object) -> Sender:
    """The ``request`` kwarg is ``value`` itself, not an object."""
    return lambda live: live.send(value)


def _message(args: list[Any], kwargs: dict[str, Any]) -> Sender:
    """An ``imagegen.generate`` message with exactly these args and kwargs."""

    def send(live: Stack) -> str:
        job_id = str(uuid.uuid4())
        producer_app(live.broker_url).send_task(
            GENERATE_TASK, args=args, kwargs=kwargs, task_id=job_id, queue=REQUESTS_QUEUE
        )
        return job_id

    return send


REFS = "subject_reference_images"
INVALID: dict[str, Bad] = {
    # prompt
    "prompt-empty": Bad(_with(prompt=""), "prompt"),
    "prompt-1501-chars": Bad(_with(prompt="p" * 1501), "prompt"),
    "prompt-1MB": Bad(_lazy(lambda: {**request(), "prompt": "p" * 1_000_000}), "prompt"),
    "prompt-not-a-string": Bad(_with(prompt=42), "prompt"),
    "prompt-a-list": Bad(_with(prompt=["a portrait"]), "prompt"),
    "prompt-null": Bad(_with(prompt=None), "prompt"),
    "prompt-missing": Bad(_without("prompt"), "prompt"),
    # subject_reference_images
    "refs-missing": Bad(_without(REFS), REFS),
    "refs-empty": Bad(_with(subject_reference_images=[]), REFS),
    "refs-11-items": Bad(_with(subject_reference_images=[HTTPS_IMAGE] * 11), REFS),
    "refs-not-a-list": Bad(_with(subject_reference_images=HTTPS_IMAGE), REFS),
    "refs-an-object": Bad(_with(subject_reference_images={"0": HTTPS_IMAGE}), REFS),
    "refs-item-not-a-string": Bad(_with(subject_reference_images=[123]), f"{REFS}.0"),
    "refs-item-null": Bad(_with(subject_reference_images=[None]), f"{REFS}.0"),
    "refs-http": Bad(_with(subject_reference_images=["http://example.com/a.jpg"]), f"{REFS}.0"),
    "refs-ftp": Bad(_with(subject_reference_images=["ftp://example.com/a.jpg"]), f"{REFS}.0"),
    "refs-javascript": Bad(_with(subject_reference_images=["javascript:alert(1)"]), f"{REFS}.0"),
    "refs-https-without-host": Bad(_with(subject_reference_images=["https:///a.jpg"]), f"{REFS}.0"),
    "refs-https-only-scheme": Bad(_with(subject_reference_images=["https://"]), f"{REFS}.0"),
    "refs-https-with-space": Bad(
        _with(subject_reference_images=["https://example.com/a b.jpg"]), f"{REFS}.0"
    ),
    "refs-file-path": Bad(_with(subject_reference_images=["/etc/passwd"]), f"{REFS}.0"),
    "refs-data-url-gif": Bad(
        _with(subject_reference_images=[_data_url("gif", GIF_BYTES)]), f"{REFS}.0"
    ),
    "refs-data-url-not-base64": Bad(
        _with(subject_reference_images=["data:image/png;base64,not*base64!"]), f"{REFS}.0"
    ),
    "refs-data-url-not-an-image": Bad(
        _with(subject_reference_images=[_data_url("png", b"just some text, not pixels")]),
        f"{REFS}.0",
    ),
    "refs-png-declared-jpeg-bytes": Bad(
        _with(subject_reference_images=[_data_url("png", JPEG_BYTES)]), f"{REFS}.0"
    ),
    "refs-jpeg-declared-png-bytes": Bad(
        _with(subject_reference_images=[_data_url("jpeg", PNG_MAGIC + bytes(64))]), f"{REFS}.0"
    ),
    "refs-data-url-10MiB": Bad(
        _lazy(lambda: request(subject_reference_images=[_ten_mib_png()])), f"{REFS}.0"
    ),
    "refs-third-of-three-bad": Bad(
        _lazy(
            lambda: request(
                subject_reference_images=[tiny_png(), HTTPS_IMAGE, "http://example.com/a.jpg"]
            )
        ),
        f"{REFS}.2",
    ),
    # aspect_ratio, width, height
    "aspect-ratio-not-in-enum": Bad(_with(aspect_ratio="5:4"), "aspect_ratio"),
    "aspect-ratio-a-number": Bad(_with(aspect_ratio=1.5), "aspect_ratio"),
    "aspect-ratio-lowercase-x": Bad(_with(aspect_ratio="16x9"), "aspect_ratio"),
    "width-without-height": Bad(_with(width=1024), "width"),
    "height-without-width": Bad(_with(height=1024), "height"),
    "width-511": Bad(_with(width=511, height=512), "width"),
    "width-2049": Bad(_with(width=2049, height=512), "width"),
    "width-1001-not-multiple-of-8": Bad(_with(width=1001, height=512), "width"),
    "width-a-string": Bad(_with(width="1024", height=1024), "width"),
    "height-a-float": Bad(_with(width=1024, height=1024.0), "height"),
    # seed
    "seed-negative": Bad(_with(seed=-1), "seed"),
    "seed-a-float": Bad(_with(seed=1.5), "seed"),
    "seed-a-string": Bad(_with(seed="7"), "seed"),
    "seed-2**63": Bad(_with(seed=2**63), "seed"),
    # n
    "n-0": Bad(_with(n=0), "n"),
    "n-10": Bad(_with(n=10), "n"),
    "n-true": Bad(_with(n=True), "n"),
    "n-2.5": Bad(_with(n=2.5), "n"),
    "n-null": Bad(_with(n=None), "n"),
    # prompt_optimizer
    "prompt-optimizer-yes": Bad(_with(prompt_optimizer="yes"), "prompt_optimizer"),
    "prompt-optimizer-1": Bad(_with(prompt_optimizer=1), "prompt_optimizer"),
    # envelope fields
    "priority-negative": Bad(_with(priority=-1), "priority"),
    "priority-10": Bad(_with(priority=10), "priority"),
    "priority-a-string": Bad(_with(priority="5"), "priority"),
    "deadline-0": Bad(_with(deadline_seconds=0), "deadline_seconds"),
    "deadline-over-a-week": Bad(_with(deadline_seconds=604_801), "deadline_seconds"),
    "idempotency-key-empty": Bad(_with(idempotency_key=""), "idempotency_key"),
    "idempotency-key-201-chars": Bad(_with(idempotency_key="k" * 201), "idempotency_key"),
    "idempotency-key-with-spaces": Bad(_with(idempotency_key="order 1234"), "idempotency_key"),
    "idempotency-key-non-ascii": Bad(_with(idempotency_key="commande-é"), "idempotency_key"),
    "metadata-a-list": Bad(_with(metadata=[1, 2, 3]), "metadata"),
    "metadata-a-string": Bad(_with(metadata="order 42"), "metadata"),
    "metadata-over-4KiB": Bad(_with(metadata={"blob": "m" * 4100}), "metadata"),
    "unknown-field": Bad(_with(colour="red"), "colour"),
    "unknown-field-near-miss": Bad(_with(aspectRatio="1:1"), "aspectRatio"),
    # hostile shapes the producer's own validation refuses early (models and JSON Schema)
    "metadata-256-deep": Bad(_lazy(lambda: request(metadata=_nested(256))), "metadata"),
    "metadata-900-deep": Bad(_lazy(lambda: request(metadata=_nested(900))), "metadata"),
    "prompt-only-whitespace": Bad(_with(prompt=" \t\n "), "prompt"),
    "prompt-only-zero-width": Bad(_with(prompt="\u200b\u200c\u200d\u2060\ufeff"), "prompt"),
    "refs-userinfo": Bad(
        _with(subject_reference_images=["https://user:pw@example.com/a.jpg"]), f"{REFS}.0"
    ),
    "refs-loopback-ip": Bad(_with(subject_reference_images=["https://127.0.0.1/a.jpg"]), REFS),
    "refs-private-ip": Bad(_with(subject_reference_images=["https://10.1.2.3/a.jpg"]), REFS),
    "refs-link-local-ip": Bad(
        _with(subject_reference_images=["https://169.254.169.254/latest"]), REFS
    ),
    "refs-ipv6-loopback": Bad(_with(subject_reference_images=["https://[::1]/a.jpg"]), REFS),
    "refs-ipv4-mapped-ipv6": Bad(
        _with(subject_reference_images=["https://[::ffff:127.0.0.1]/a.jpg"]), REFS
    ),
    "refs-control-character": Bad(
        _with(subject_reference_images=["https://example.com/a\x07.jpg"]), REFS
    ),
    "refs-url-2049-chars": Bad(
        _with(subject_reference_images=["https://example.com/" + "a" * 2029]), REFS
    ),
    "refs-bad-port": Bad(_with(subject_reference_images=["https://example.com:99999/a"]), REFS),
    "request-over-the-size-cap": Bad(
        _lazy(lambda: request(subject_reference_images=[_big_png(9 * 2**20)] * 2)), "bytes"
    ),
    # the request itself is not an object
    "request-a-string": Bad(_request_is("not an object"), "request"),
    "request-a-list": Bad(_request_is([request()]), "request"),
    "request-null": Bad(_request_is(None), "request"),
    "request-a-number": Bad(_request_is(42), "request"),
    "request-true": Bad(_request_is(True), "request"),
    # the message is not {"request": ...}
    "extra-kwarg-besides-request": Bad(
        _message([], {"request": request(), "priority": 9}), "priority"
    ),
    "positional-args-instead-of-kwargs": Bad(_message([request()], {}), "request"),
    "positional-and-request-kwarg": Bad(_message([1], {"request": request()}), "positional"),
    "no-args-no-kwargs": Bad(_message([], {}), "request"),
    "kwarg-misspelt": Bad(_message([], {"requests": request()}), "requests"),
    # text PostgreSQL cannot store
    "prompt-with-NUL": Bad(_with(prompt="a portrait\x00"), "request.prompt"),
    "prompt-lone-surrogate": Bad(_with(prompt="a portrait \ud800"), "prompt"),
    "metadata-with-NUL": Bad(_with(metadata={"note": "a\x00b"}), "request.metadata.note"),
    "metadata-key-with-NUL": Bad(_with(metadata={"a\x00b": 1}), "request.metadata.'a\\x00b'"),
    "metadata-lone-surrogate": Bad(_with(metadata={"note": "\udfff"}), "request.metadata.note"),
    "unknown-field-named-with-NUL": Bad(_with(**{"col\x00our": "red"}), "request.'col\\x00our'"),
    "kwarg-named-with-NUL": Bad(_message([], {"request": request(), "x\x00": 1}), "'x\\x00'"),
}


def _no_submit(live: Stack) -> None:
    stats = live.sim_stats()
    assert stats["submits_accepted"] == 0, stats
    assert sum(stats["submits_rejected"].values()) == 0, stats


@pytest.mark.parametrize("case", list(INVALID.values()), ids=list(INVALID))
def test_invalid_message_fails_naming_the_field(live: Stack, case: Bad) -> None:
    job_id = case.send(live)
    job = live.wait_ended([job_id], timeout=20)[job_id]

    assert job.status is JobStatus.FAILED, job
    assert job.error_code is ErrorCode.INVALID_REQUEST, job
    assert case.field in (job.error_message or ""), job.error_message
    assert job.upstream_task_id is None
    assert live.sql("SELECT count(*) FROM jobs")[0][0] == 1
    assert live.workers[0].alive(), live.workers[0].log_tail()
    _no_submit(live)


# --- (b) raw entries with no job to speak of: logged clearly and dropped ---------------


def _log_size(live: Stack) -> int:
    path = live.workers[0].log_path
    return path.stat().st_size if path.exists() else 0


def _log_since(live: Stack, offset: int) -> str:
    with live.workers[0].log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _logged_drop(log: str, queue: str) -> bool:
    """A ``message.dropped`` line (the workers' JSON log) naming ``queue``."""
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "message.dropped" and entry.get("queue") == queue:
            return True
    return False


def _drained(live: Stack) -> bool:
    """Nothing left on the requests list, nothing delivered and not yet acked."""
    r = live.redis()
    return r.llen(REQUESTS_QUEUE) == 0 and r.hlen(UNACKED_KEY) == 0


@pytest.fixture(scope="module")
def envelope(worker_stack: Stack) -> dict[str, Any]:
    """The envelope of a real publish, read back from a scratch list nobody consumes."""
    scratch = f"hostile.scratch.{uuid.uuid4().hex[:8]}"
    producer_app(worker_stack.broker_url).send_task(
        GENERATE_TASK,
        kwargs={"request": request()},
        task_id="template",
        queue=Queue(scratch, Exchange(""), routing_key=scratch),
    )
    r = worker_stack.redis()
    entries = r.lrange(scratch, 0, -1)
    r.delete(scratch)
    assert len(entries) == 1
    template: dict[str, Any] = json.loads(entries[0])
    # what the raw cases rely on: kombu's Redis framing around Celery's protocol 2
    assert template["content-type"] == "application/json"
    assert template["content-encoding"] == "utf-8"
    assert template["properties"]["body_encoding"] == "base64"
    assert isinstance(template["properties"]["delivery_tag"], str)
    assert template["headers"]["task"] == GENERATE_TASK
    assert template["headers"]["id"] == "template"
    args, kwargs, embed = json.loads(base64.b64decode(template["body"]))
    assert args == []
    assert set(kwargs) == {"request"}
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}
    return template


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _entry(template: dict[str, Any], task_id: str, body: bytes | None = None) -> dict[str, Any]:
    """A fresh copy of ``template``: a new id and delivery tag, a valid request as body."""
    env = copy.deepcopy(template)
    if body is None:
        body = json.dumps([[], {"request": request()}, EMBED]).encode()
    env["body"] = base64.b64encode(body).decode()
    env["headers"].update(id=task_id, root_id=task_id, argsrepr="()", kwargsrepr="{}")
    env["properties"].update(
        correlation_id=task_id,
        delivery_tag=str(uuid.uuid4()),
        delivery_info={"exchange": "", "routing_key": REQUESTS_QUEUE},
    )
    return env


class _OpenOnUnpickle:
    """Its pickle opens (creates) ``path`` when loaded: a stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _pickle_of(request_value: object) -> bytes:
    """A protocol-2 body, as pickle: loading it builds ``request_value``."""
    return pickle.dumps(((), {"request": request_value}, EMBED))


def _pickled(env: dict[str, Any], request_value: object) -> None:
    env["body"] = base64.b64encode(_pickle_of(request_value)).decode()
    env["content-type"] = "application/x-python-serialize"
    env["content-encoding"] = "binary"


Build = Callable[[dict[str, Any], str, Path], bytes]  # (template, task id, marker) -> entry


def _raw(text: bytes | str) -> Build:
    """An entry that is these bytes, whatever the template."""
    data = text.encode() if isinstance(text, str) else text
    return lambda template, task_id, marker: data


def _changed(change: Callable[[dict[str, Any], Path], object]) -> Build:
    """The template's entry with ``change`` applied to it."""

    def build(template: dict[str, Any], task_id: str, marker: Path) -> bytes:
        env = _entry(template, task_id)
        change(env, marker)
        return json.dumps(env).encode()

    return build


def _body(data: bytes, content_type: str = "application/json") -> Build:
    def change(env: dict[str, Any], marker: Path) -> None:
        env["body"] = base64.b64encode(data).decode()
        env["content-type"] = content_type

    return _changed(change)


def _set(part: str, key: str, value: object) -> Build:
    """The template's entry with ``env[part][key] = value`` (``part`` "" is the top level)."""
    return _changed(lambda env, m: (env[part] if part else env).__setitem__(key, value))


def _drop(part: str, key: str) -> Build:
    return _changed(lambda env, m: (env[part] if part else env).pop(key))


@dataclass(frozen=True)
class Raw:
    """One raw list entry and what must become of it.

    ``job``: a failed ``invalid_request`` job whose message contains this text (the entry
    has a usable id); ``dropped``: a ``dropped_messages`` row whose reason matches this
    regex (no job to speak of); neither: the entry runs as the valid request it carries.
    """

    build: Build
    job: str | None = None
    dropped: str | None = None
    marker: bool = False  # the entry would create the marker file if its body were unpickled


def _body_with(embed: dict[str, Any]) -> Build:
    return _body(json.dumps([[], {"request": request()}, {**EMBED, **embed}]).encode())


def _protocol1(**fields: Any) -> Build:
    """A protocol 1 entry: task, id, args and kwargs in a JSON body, no task headers."""

    def build(template: dict[str, Any], task_id: str, marker: Path) -> bytes:
        env = _entry(template, task_id)
        body = {"task": GENERATE_TASK, "id": task_id, "args": [], "kwargs": {"request": request()}}
        body.update(fields)
        env["headers"] = {}
        env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
        return json.dumps(env).encode()

    return build


NOOP_LINK = {"task": "imagegen.noop", "args": [], "kwargs": {"counter": "imagegen.upstream"}}
CONTENT = "content type"
DEEP = b"[" * 100_000 + b"]" * 100_000
RAW: dict[str, Raw] = {
    # the content types Celery must refuse, never load: the request is refused as a job
    "pickle-of-a-dict": Raw(_changed(lambda env, m: _pickled(env, {"a": 1})), job=CONTENT),
    "pickle-that-would-create-a-file": Raw(
        _changed(lambda env, m: _pickled(env, _OpenOnUnpickle(m))), job=CONTENT, marker=True
    ),
    "yaml": Raw(
        _body(b"- []\n- {request: {prompt: x}}\n- {}\n", "application/x-yaml"), job=CONTENT
    ),
    "application-data-celery-trusts": Raw(_body(b"raw bytes", "application/data"), job=CONTENT),
    "application-text": Raw(_body(b"raw text", "application/text"), job=CONTENT),
    "compressed-body": Raw(_set("headers", "compression", "application/x-gzip"), job="compress"),
    "json-body-not-json": Raw(_body(b'[[], {"request": {"prompt": '), job="UTF-8 JSON"),
    "json-body-kombu-type-tag": Raw(
        _body(b'[[], {"request": {"__type__": "decimal", "__value__": "x"}}, {}]'), job="plain JSON"
    ),
    "json-body-utf16": Raw(_body('[[], {"request": {}}, {}]'.encode("utf-16")), job="UTF-8 JSON"),
    "json-body-utf8-bom": Raw(_body(b'\xef\xbb\xbf[[], {"request": {}}, {}]'), job="UTF-8 JSON"),
    # entries that are no kombu envelope at all
    "entry-not-json": Raw(_raw("this is not a kombu envelope {"), dropped="not a message envelope"),
    "entry-not-utf8": Raw(_raw(b"\xff\xfe\x00\x81"), dropped="not a message envelope"),
    "entry-nested-100k-deep": Raw(_raw(DEEP), dropped="nests too deeply"),
    "entry-a-json-list": Raw(_raw("[1, 2, 3]"), dropped="JSON list"),
    "entry-a-json-string": Raw(_raw('"imagegen.generate"'), dropped="JSON str"),
    "entry-an-empty-object": Raw(_raw("{}"), dropped="protocol 1 message"),
    # envelopes kombu could not unpack
    "properties-not-an-object": Raw(_set("", "properties", [1]), dropped="properties"),
    "headers-not-an-object": Raw(_set("", "headers", "imagegen.generate"), dropped="headers"),
    "envelope-without-headers": Raw(_drop("", "headers"), dropped="protocol 1 message"),
    "body-missing": Raw(_drop("", "body"), job="body is not a string"),
    "body-not-base64": Raw(_set("", "body", "!!!not*base64"), job="base64"),
    "body-encoding-unknown": Raw(_set("properties", "body_encoding", "rot13"), job="encoding"),
    "content-type-null": Raw(_set("", "content-type", None), job=CONTENT),
    # the envelope is rebuilt from a whitelist: a missing or odd delivery tag is replaced
    "delivery-tag-missing": Raw(_drop("properties", "delivery_tag")),
    "delivery-tag-null": Raw(_set("properties", "delivery_tag", None)),
    "delivery-tag-an-object": Raw(_set("properties", "delivery_tag", {"a": 1})),
    "delivery-tag-of-unacked-hash-key": Raw(_set("properties", "delivery_tag", "unacked")),
    "timelimit-not-a-pair": Raw(_set("headers", "timelimit", "soon")),
    "timelimit-a-tiny-pair": Raw(_set("headers", "timelimit", [0.001, 0.001])),
    "origin-an-object": Raw(_set("headers", "origin", {"a": [1]})),
    "retries-a-string": Raw(_set("headers", "retries", "many")),
    "group-an-object": Raw(_set("headers", "group", {"g": 1})),
    "stamped-headers-garbage": Raw(_set("headers", "stamped_headers", "x")),
    "shadow-another-name": Raw(_set("headers", "shadow", "imagegen.poll")),
    "reply-to-a-queue": Raw(_set("properties", "reply_to", "imagegen.upstream")),
    "delivery-info-routing-elsewhere": Raw(
        _set("properties", "delivery_info", {"exchange": "", "routing_key": "imagegen.upstream"})
    ),
    # protocol 1 (everything in the body)
    "protocol-1-request": Raw(_protocol1()),
    "protocol-1-timelimit-soon": Raw(_protocol1(timelimit="soon")),
    "protocol-1-id-an-object": Raw(_protocol1(id={"job": 1}), dropped="no usable task id"),
    "protocol-1-eta": Raw(_protocol1(eta="2999-01-01T00:00:00"), job="message.eta"),
    "protocol-1-internal-task": Raw(_protocol1(task="imagegen.poll"), dropped="not accepted"),
    # tasks that are not requests, and ids that cannot name a job
    "unknown-task-name": Raw(_set("headers", "task", "imagegen.nope"), dropped="not accepted"),
    "bench-task-by-name": Raw(_set("headers", "task", "imagegen.noop"), dropped="not accepted"),
    "internal-submit-on-requests": Raw(
        _set("headers", "task", "imagegen.submit"), dropped="not accepted"
    ),
    "task-name-a-list": Raw(_set("headers", "task", [GENERATE_TASK]), dropped="not accepted"),
    "task-id-missing": Raw(_drop("headers", "id"), dropped="no usable task id"),
    "task-id-null": Raw(_set("headers", "id", None), dropped="no usable task id"),
    "task-id-an-object": Raw(_set("headers", "id", {"job": 1}), dropped="no usable task id"),
    "task-id-65-chars": Raw(_set("headers", "id", "j" * 65), dropped="no usable task id"),
    "task-id-with-NUL": Raw(_set("headers", "id", "job\x00id"), dropped="no usable task id"),
    # delays and links a request may not carry
    "eta-far-future": Raw(_set("headers", "eta", "2999-01-01T00:00:00+00:00"), job="message.eta"),
    "eta-garbage": Raw(_set("headers", "eta", "soon"), job="message.eta"),
    "expires-past": Raw(_set("headers", "expires", "2000-01-01T00:00:00+00:00"), job="expires"),
    "chain-to-bench-task": Raw(_body_with({"chain": [NOOP_LINK]}), job="message.chain"),
    "callbacks-to-bench-task": Raw(_body_with({"callbacks": [NOOP_LINK]}), job="callbacks"),
    "errbacks-to-bench-task": Raw(_body_with({"errbacks": [NOOP_LINK]}), job="errbacks"),
    "chord-to-bench-task": Raw(_body_with({"chord": NOOP_LINK}), job="message.chord"),
    "body-embed-chain-a-string": Raw(_body(b'[[], {"request": {}}, {"chain": "x"}]'), job="chain"),
    # bodies that are not [args, kwargs, embed]
    "body-an-object": Raw(_body(b'{"request": {}}'), job="body is not [args, kwargs, embed]"),
    "body-two-items": Raw(_body(b'[[], {"request": {}}]'), job="body is not [args"),
    "body-kwargs-a-list": Raw(_body(b'[[], [{"request": {}}], {}]'), job="kwargs is not"),
    "body-nested-100k-deep": Raw(
        _body(b'[[], {"request": ' + DEEP + b"}, {}]"), job="nests too deeply"
    ),
}


def _dropped(live: Stack) -> list[Any]:
    return live.sql("SELECT queue, task, message_id, reason FROM dropped_messages")


def test_raw_entry_built_from_the_template_runs(live: Stack, envelope: dict[str, Any]) -> None:
    # the control of the raw cases: an unaltered entry built the same way is a working message
    job_id = str(uuid.uuid4())
    live.redis().lpush(REQUESTS_QUEUE, json.dumps(_entry(envelope, job_id)).encode())
    job = live.wait_ended([job_id], timeout=30)[job_id]
    assert job.status is JobStatus.SUCCEEDED, job


@pytest.mark.parametrize("case", list(RAW.values()), ids=list(RAW))
def test_raw_entry_is_refused_dropped_or_run_never_lost(
    live: Stack, envelope: dict[str, Any], case: Raw, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    if case.marker:
        # the payload is live: loaded here, its twin does create its file
        twin = tmp_path / "twin"
        _, kwargs, _ = pickle.loads(_pickle_of(_OpenOnUnpickle(twin)))
        kwargs["request"].close()
        assert twin.exists()
    offset = _log_size(live)
    job_id = str(uuid.uuid4())

    live.redis().lpush(REQUESTS_QUEUE, case.build(envelope, job_id, marker))
    if case.dropped is not None:
        pattern = re.compile(case.dropped)
        live.wait_for(
            lambda: _drained(live) and any(pattern.search(r.reason) for r in _dropped(live)),
            timeout=20,
            what=f"the entry consumed and a dropped_messages row matching {case.dropped!r}",
        )
        assert _logged_drop(_log_since(live, offset), REQUESTS_QUEUE)
        assert live.sql("SELECT count(*) FROM jobs")[0][0] == 0
        _no_submit(live)
    else:
        job = live.wait_ended([job_id], timeout=30)[job_id]
        if case.job is not None:
            assert job.status is JobStatus.FAILED, job
            assert job.error_code is ErrorCode.INVALID_REQUEST, job
            assert case.job in (job.error_message or ""), job.error_message
            _no_submit(live)
        else:
            assert job.status is JobStatus.SUCCEEDED, job
        assert _dropped(live) == []
    live.wait_for(lambda: _drained(live), timeout=20, what="nothing left unacked")
    assert live.workers[0].alive(), live.workers[0].log_tail()
    assert "Unrecoverable error" not in _log_since(live, offset)
    assert not marker.exists(), "the worker unpickled a message body"
    # the worker still answers, and still consumes requests
    assert live.pings("w1@")
    live.sim_configure(pending_seconds=0.0, processing_seconds=0.05)
    probe = live.send(request())
    job = live.wait_ended([probe], timeout=30)[probe]
    assert job.status is JobStatus.SUCCEEDED, (job, live.workers[0].log_tail())


def test_after_the_corpus_the_worker_still_runs_valid_requests(live: Stack) -> None:
    assert live.workers[0].alive()
    assert live.pings("w1@")
    log = live.workers[0].log_path.read_text(errors="replace")
    assert "Unrecoverable error" not in log
    job_id = live.send(request(n=2))
    job = live.wait_ended([job_id], timeout=30)[job_id]
    assert job.status is JobStatus.SUCCEEDED, job
    assert len(job.images) == 2
    assert live.sim_stats()["submits_accepted"] == 1
