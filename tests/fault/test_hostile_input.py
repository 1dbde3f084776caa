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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
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


# --- (b) raw entries whose envelope is unusable: logged and dropped --------------------


def _log_size(live: Stack) -> int:
    path = live.workers[0].log_path
    return path.stat().st_size if path.exists() else 0


def _log_since(live: Stack, offset: int) -> str:
    with live.workers[0].log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _drained(live: Stack) -> bool:
    r = live.redis()
    return r.llen(REQUESTS_QUEUE) == 0 and r.hlen(UNACKED_KEY) == 0


@pytest.fixture(scope="module")
def envelope(worker_stack: Stack) -> dict[str, Any]:
    """The protocol-2 envelope of a real publish, read back from a scratch list."""
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
    assert template["properties"]["body_encoding"] == "base64"
    assert template["headers"]["task"] == GENERATE_TASK
    assert template["headers"]["id"] == "template"
    args, kwargs, embed = json.loads(base64.b64decode(template["body"]))
    assert args == [] and set(kwargs) == {"request"} and "callbacks" in embed
    return template


def _entry(
    template: dict[str, Any],
    *,
    task_id: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    task: str = GENERATE_TASK,
) -> dict[str, Any]:
    """A fresh envelope from ``template``: new ids, routed to the requests queue."""
    env = copy.deepcopy(template)
    if body is None:
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        body = json.dumps([[], {"request": request()}, embed]).encode()
    env["body"] = base64.b64encode(body).decode()
    env["content-type"] = content_type
    env["headers"].update(task=task, id=task_id, root_id=task_id, argsrepr="", kwargsrepr="")
    env["properties"].update(
        correlation_id=task_id,
        delivery_tag=str(uuid.uuid4()),
        delivery_info={"exchange": "", "routing_key": REQUESTS_QUEUE},
    )
    return env


def _dump(env: object) -> bytes:
    return json.dumps(env).encode()


class _OpenOnUnpickle:
    """Unpickling the pickle of this opens (creates) ``path``: a stand-in for any code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@dataclass(frozen=True)
class Raw:
    """One raw list entry, the log line the worker must write about it."""

    build: Callable[[dict[str, Any], str, Path], bytes]  # (template, task id, marker) -> entry
    log: str  # regex the worker log must match after the entry is consumed
    marker: bool = False  # the entry would create ``marker`` if its body were unpickled
    notes: list[str] = field(default_factory=list)


def _pickle_body(_: Path) -> bytes:
    return pickle.dumps(((), {"request": request()}, {}))


def _pickle_bomb(marker: Path) -> bytes:
    return pickle.dumps(((), {"request": _OpenOnUnpickle(marker)}, {}))


REFUSED = r"ContentDisallowed|[Rr]efus\w+ (to deserialize )?(untrusted )?content"
RAW: dict[str, Raw] = {
    "pickle-of-a-dict": Raw(
        lambda t, i, m: _dump(
            _entry(
                t, task_id=i, body=_pickle_body(m), content_type="application/x-python-serialize"
            )
        ),
        REFUSED,
    ),
    "pickle-that-would-create-a-file": Raw(
        lambda t, i, m: _dump(
            _entry(
                t, task_id=i, body=_pickle_bomb(m), content_type="application/x-python-serialize"
            )
        ),
        REFUSED,
        marker=True,
    ),
    "yaml": Raw(
        lambda t, i, m: _dump(
            _entry(
                t,
                task_id=i,
                body=b"- []\n- request: {prompt: hi, subject_reference_images: [x]}\n- {}\n",
                content_type="application/x-yaml",
            )
        ),
        REFUSED,
    ),
    "json-body-not-json": Raw(
        lambda t, i, m: _dump(_entry(t, task_id=i, body=b'[[], {"request": {"prompt": ')),
        r"DecodeError|JSONDecodeError|[Cc]an't decode",
    ),
    "entry-not-json": Raw(
        lambda t, i, m: b"this is not a kombu envelope {",
        r"dropped|[Cc]an't decode|JSONDecodeError|not json",
    ),
    "envelope-without-headers": Raw(
        lambda t, i, m: _dump({k: v for k, v in _entry(t, task_id=i).items() if k != "headers"}),
        r"unknown message",
    ),
    "unknown-task-name": Raw(
        lambda t, i, m: _dump(_entry(t, task_id=i, task="imagegen.nope")),
        r"unregistered task of type 'imagegen\.nope'",
    ),
    "task-id-65-chars": Raw(
        lambda t, i, m: _dump(_entry(t, task_id=i + "x" * (65 - len(i)))),
        r"dropped imagegen\.generate message: task id longer than 64",
    ),
}


@pytest.mark.parametrize("case", list(RAW.values()), ids=list(RAW))
def test_unusable_entry_is_logged_and_dropped(
    live: Stack, envelope: dict[str, Any], case: Raw, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled-code-ran"
    task_id = str(uuid.uuid4())
    entry = case.build(envelope, task_id, marker)
    if case.marker:
        # the payload is live: unpickled here, it does create its file
        twin = tmp_path / "twin"
        pickle.loads(_pickle_bomb(twin))  # noqa: S301
        assert twin.exists()
    offset = _log_size(live)

    live.redis().lpush(REQUESTS_QUEUE, entry)
    pattern = re.compile(case.log)
    live.wait_for(
        lambda: _drained(live) and pattern.search(_log_since(live, offset)) is not None,
        timeout=20,
        what=f"entry consumed and a log line matching {case.log!r}",
    )

    assert live.workers[0].alive(), live.workers[0].log_tail()
    assert live.sql("SELECT count(*) FROM jobs")[0][0] == 0
    assert not marker.exists(), "the worker unpickled a message body"
    _no_submit(live)
    # the worker still answers, and still consumes requests
    assert live.pings("w1@")
    probe = live.send(request())
    job = live.wait_ended([probe], timeout=30)[probe]
    assert job.status is JobStatus.SUCCEEDED, (job, live.workers[0].log_tail())


def test_raw_envelope_from_the_template_is_a_working_message(
    live: Stack, envelope: dict[str, Any]
) -> None:
    # the control of the raw cases: an unmodified entry built the same way runs to success
    job_id = str(uuid.uuid4())
    live.redis().lpush(REQUESTS_QUEUE, _dump(_entry(envelope, task_id=job_id)))
    job = live.wait_ended([job_id], timeout=30)[job_id]
    assert job.status is JobStatus.SUCCEEDED, job


def test_after_the_corpus_the_worker_still_runs_valid_requests(live: Stack) -> None:
    started = time.monotonic()
    assert live.workers[0].alive()
    assert live.pings("w1@")
    job_id = live.send(request(n=2))
    job = live.wait_ended([job_id], timeout=30)[job_id]
    assert job.status is JobStatus.SUCCEEDED, job
    assert len(job.images) == 2
    assert live.sim_stats()["submits_accepted"] == 1
    assert time.monotonic() - started < 30
