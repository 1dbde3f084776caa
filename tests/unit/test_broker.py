"""The broker boundary's screening, as plain functions: every verdict for every kind of entry.

The same entries go through real workers in tests/fault/test_hostile_input.py; these pin
down the decisions themselves (what is delivered, refused as a job, or dropped, and why).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from api_schema import (
    GENERATE_TASK,
    MAINTENANCE_QUEUE,
    POLL_TASK,
    REQUESTS_QUEUE,
    SUBMIT_TASK,
    SWEEP_TASK,
    UPSTREAM_QUEUE,
)
from worker.broker import (
    MAC_HEADER,
    MAX_ENTRY_BYTES,
    MAX_REQUEST_ENTRY_BYTES,
    Deliver,
    Drop,
    Refuse,
    envelope_problem,
    message_mac,
    screen,
)

KEY = b"k" * 32
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
REQUEST = {"prompt": "a portrait", "subject_reference_images": ["https://example.com/a.jpg"]}


def _key() -> bytes:
    return KEY


def envelope(
    task: str = GENERATE_TASK,
    task_id: Any = "job-1",
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    embed: dict[str, Any] | None = None,
    queue: str = REQUESTS_QUEUE,
    **headers: Any,
) -> dict[str, Any]:
    """A protocol 2 entry as kombu's Redis transport stores it."""
    kwargs = {"request": REQUEST} if kwargs is None else kwargs
    body = json.dumps([args or [], kwargs, EMBED if embed is None else embed]).encode()
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "eta": None,
            "expires": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            **headers,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "tag-1",
        },
    }


def signed(task: str, task_id: str, queue: str, args: list[Any], **headers: Any) -> dict[str, Any]:
    mac = message_mac(KEY, task, task_id, queue, args, {})
    return envelope(task, task_id, args, {}, queue=queue, **{MAC_HEADER: mac}, **headers)


def protocol1(**fields: Any) -> dict[str, Any]:
    body = {"task": GENERATE_TASK, "id": "job-p1", "args": [], "kwargs": {"request": REQUEST}}
    body.update(fields)
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {},
        "properties": {"body_encoding": "base64", "delivery_tag": "t", "delivery_info": {}},
    }


def run(entry: object, queue: str = REQUESTS_QUEUE) -> Deliver | Refuse | Drop:
    raw = entry if isinstance(entry, bytes) else json.dumps(entry).encode()
    return screen(raw, queue, _key)


def body_of(message: dict[str, Any]) -> list[Any]:
    parts: list[Any] = json.loads(base64.b64decode(message["body"]))
    return parts


# --- requests --------------------------------------------------------------------------


def test_a_producer_request_is_delivered_rebuilt() -> None:
    entry = envelope(timelimit=[1, 2], origin="x" * 10_000, shadow="other", stamps={"a": 1})
    verdict = run(entry)
    assert isinstance(verdict, Deliver)
    message = verdict.message
    assert message["headers"]["task"] == GENERATE_TASK
    assert message["headers"]["id"] == "job-1"
    assert message["headers"]["timelimit"] == [None, None]
    assert "stamps" not in message["headers"]
    assert message["headers"]["shadow"] is None
    assert message["headers"]["origin"] is None
    assert message["properties"]["delivery_tag"] != "tag-1"  # never the producer's
    assert message["properties"]["delivery_info"]["routing_key"] == REQUESTS_QUEUE
    assert body_of(message) == [[], {"request": REQUEST}, EMBED]
    assert message["body"] == entry["body"]  # already canonical: not re-encoded
    assert "portrait" not in message["headers"]["kwargsrepr"]  # Flower shows no request


def test_a_protocol_1_request_becomes_protocol_2() -> None:
    verdict = run(protocol1(timelimit="soon", utc=True))
    assert isinstance(verdict, Deliver)
    assert verdict.message["headers"]["id"] == "job-p1"
    assert body_of(verdict.message) == [[], {"request": REQUEST}, EMBED]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (protocol1(id={"job": 1}), "no usable task id"),
        (protocol1(id=""), "no usable task id"),
        (protocol1(id="j" * 65), "no usable task id"),
        (protocol1(id="a\x00b"), "no usable task id"),
        (envelope(task_id=None), "no usable task id"),
        (envelope(task_id=["x"]), "no usable task id"),
        (
            envelope(task=SUBMIT_TASK, args=["job"], kwargs={}),
            "is not accepted on imagegen.requests",
        ),
        (envelope(task="imagegen.noop"), "is not accepted"),
        (envelope(task=["imagegen.generate"]), "is not accepted"),
        (protocol1(task=POLL_TASK), "is not accepted"),
        (b"not json {", "not a message envelope"),
        (b"\xff\xfe\x00", "not a message envelope"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        ([1, 2, 3], "JSON list, not a message envelope"),
        ({"headers": "x"}, "headers is not an object"),
        ({"headers": {}, "body": 5}, "protocol 1 message whose body is not a string"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_entries_with_no_job_to_speak_of_are_dropped(entry: Any, reason: str) -> None:
    verdict = run(entry)
    assert isinstance(verdict, Drop), verdict
    assert reason in verdict.reason


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"content-type": "application/data"}, "content type"),
        ({"content-type": "application/x-python-serialize"}, "content type"),
        ({"content-type": "application/x-yaml"}, "content type"),
        ({"content-type": None}, "content type"),
        ({"content-encoding": "binary"}, "content encoding"),
        ({"headers": {"compression": "application/x-gzip"}}, "compressed"),
        ({"headers": {"eta": "2999-01-01T00:00:00+00:00"}}, "message.eta"),
        ({"headers": {"eta": "soon"}}, "message.eta"),
        ({"headers": {"expires": "2000-01-01T00:00:00+00:00"}}, "message.expires"),
        ({"headers": {"countdown": 10**9}}, "message.countdown"),
        ({"body": "!!!not*base64"}, "base64"),
        ({"properties": {"body_encoding": "rot13"}}, "body encoding"),
    ],
)
def test_requests_that_cannot_run_as_sent_are_refused_naming_why(
    change: dict[str, Any], field: str
) -> None:
    entry = envelope()
    for part, value in change.items():
        if isinstance(value, dict):
            entry[part].update(value)
        else:
            entry[part] = value
    verdict = run(entry)
    assert isinstance(verdict, Refuse), verdict
    assert verdict.job_id == "job-1"
    assert field in verdict.reason


@pytest.mark.parametrize("link", ["callbacks", "errbacks", "chain", "chord"])
def test_requests_cannot_carry_linked_tasks(link: str) -> None:
    signature = {"task": "imagegen.noop", "args": [], "kwargs": {"counter": "imagegen.upstream"}}
    value = signature if link == "chord" else [signature]
    verdict = run(envelope(embed={**EMBED, link: value}))
    assert isinstance(verdict, Refuse)
    assert f"message.{link}" in verdict.reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"request": {}}', "body is not [args, kwargs, embed]"),
        (b'[[], {"request": {}}]', "body is not [args, kwargs, embed]"),
        (b'[[], [{"request": {}}], {}]', "kwargs is not an object"),
        (b'["x", {}, {}]', "args is not a list"),
        (b'[[], {}, "x"]', "embed is not an object"),
        (b'[[], {"request": ' + b"[" * 100_000 + b"]" * 100_000 + b"}, {}]", "nests too deeply"),
        (b'[[], {"request": ', "is not UTF-8 JSON"),
    ],
)
def test_request_bodies_that_are_not_a_message_are_refused(body: bytes, reason: str) -> None:
    entry = envelope()
    entry["body"] = base64.b64encode(body).decode()
    verdict = run(entry)
    assert isinstance(verdict, Refuse), verdict
    assert reason in verdict.reason


def test_a_protocol_1_request_with_a_countdown_is_refused() -> None:
    verdict = run(protocol1(countdown=10**9))
    assert isinstance(verdict, Refuse)
    assert "message.countdown" in verdict.reason


def test_an_oversized_request_is_refused_without_decoding_its_body() -> None:
    entry = envelope()
    entry["body"] = "A" * MAX_REQUEST_ENTRY_BYTES
    verdict = run(entry)
    assert isinstance(verdict, Refuse)
    assert "over the limit" in verdict.reason


def test_a_huge_entry_is_dropped_unread() -> None:
    verdict = run(b"{" + b" " * MAX_ENTRY_BYTES + b"}")
    assert isinstance(verdict, Drop)
    assert "over the" in verdict.reason


def test_a_workers_retry_of_a_request_keeps_its_eta_and_count() -> None:
    mac = message_mac(KEY, GENERATE_TASK, "job-1", REQUESTS_QUEUE, [], {"request": REQUEST})
    eta = "2026-12-01T16:00:00+00:00"
    verdict = run(envelope(eta=eta, retries=3, **{MAC_HEADER: mac}))
    assert isinstance(verdict, Deliver)
    assert verdict.message["headers"]["eta"] == eta
    assert verdict.message["headers"]["retries"] == 3


def test_a_forged_signature_does_not_make_a_delayed_request_legitimate() -> None:
    verdict = run(envelope(eta="2999-01-01T00:00:00+00:00", **{MAC_HEADER: "0" * 64}))
    assert isinstance(verdict, Refuse)


# --- internal queues -------------------------------------------------------------------


def test_a_signed_poll_is_delivered() -> None:
    verdict = run(signed(POLL_TASK, "t1", UPSTREAM_QUEUE, ["job-1", 3]), UPSTREAM_QUEUE)
    assert isinstance(verdict, Deliver)
    assert body_of(verdict.message)[:2] == [["job-1", 3], {}]
    assert verdict.message["properties"]["delivery_tag"] != "tag-1"


def test_a_signed_sweep_is_delivered_on_its_queue() -> None:
    verdict = run(signed(SWEEP_TASK, "s1", MAINTENANCE_QUEUE, []), MAINTENANCE_QUEUE)
    assert isinstance(verdict, Deliver)


@pytest.mark.parametrize(
    ("entry", "queue", "reason"),
    [
        (envelope(POLL_TASK, "t", ["job-1", 0], {}), UPSTREAM_QUEUE, "signature"),
        (
            envelope(SUBMIT_TASK, "t", ["job-1"], {"upstream_task_id": "x"}, queue=UPSTREAM_QUEUE),
            UPSTREAM_QUEUE,
            "signature",
        ),
        (signed(POLL_TASK, "t", UPSTREAM_QUEUE, ["job-1", 0]), MAINTENANCE_QUEUE, "not accepted"),
        (signed(SWEEP_TASK, "t", MAINTENANCE_QUEUE, []), UPSTREAM_QUEUE, "not accepted"),
        (envelope(GENERATE_TASK), UPSTREAM_QUEUE, "not accepted"),
        (envelope("imagegen.noop", kwargs={"counter": "x"}), UPSTREAM_QUEUE, "not accepted"),
        (protocol1(task=POLL_TASK, args=["job-1", 0]), UPSTREAM_QUEUE, "protocol 1"),
        (
            signed(POLL_TASK, "t", UPSTREAM_QUEUE, ["job-1", 0], eta="soon"),
            UPSTREAM_QUEUE,
            "ISO 8601",
        ),
        (
            signed(POLL_TASK, "t", UPSTREAM_QUEUE, ["job-1", 0], retries="many"),
            UPSTREAM_QUEUE,
            "retries",
        ),
        (b"x" * 70_000, UPSTREAM_QUEUE, "over the"),
    ],
)
def test_internal_entries_need_the_workers_signature(entry: Any, queue: str, reason: str) -> None:
    verdict = run(entry, queue)
    assert isinstance(verdict, Drop), verdict
    assert reason in verdict.reason


def test_a_signed_poll_with_other_arguments_is_dropped() -> None:
    entry = signed(POLL_TASK, "t", UPSTREAM_QUEUE, ["job-1", 0])
    entry["body"] = base64.b64encode(json.dumps([["job-2", 0], {}, EMBED]).encode()).decode()
    verdict = run(entry, UPSTREAM_QUEUE)
    assert isinstance(verdict, Drop)


def test_another_key_does_not_verify() -> None:
    mac = message_mac(b"other", POLL_TASK, "t", UPSTREAM_QUEUE, ["job-1", 0], {})
    entry = envelope(POLL_TASK, "t", ["job-1", 0], {}, **{MAC_HEADER: mac})
    assert isinstance(run(entry, UPSTREAM_QUEUE), Drop)


# --- other queues (remote control, events) ---------------------------------------------


def test_remote_control_envelopes_are_checked() -> None:
    good = {
        "body": base64.b64encode(b'{"method": "ping"}').decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1},
        "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64"},
    }
    assert envelope_problem(good) is None
    assert envelope_problem({**good, "content-type": "application/data"}) is not None
    assert envelope_problem({**good, "headers": "x"}) is not None
    assert envelope_problem([good]) is not None
    task = envelope(timelimit="soon")
    assert envelope_problem(task) == "headers.timelimit is not [soft, hard]"
    assert envelope_problem(envelope(task_id={"a": 1})) is not None
    assert envelope_problem(envelope(eta="soon")) is not None


def test_beats_sweep_keeps_its_expiry() -> None:
    # beat sends the sweep with an expiry (a sweep not run in time is skipped)
    expires = "2026-12-01T16:00:30+00:00"
    verdict = run(
        signed(SWEEP_TASK, "s", MAINTENANCE_QUEUE, [], expires=expires), MAINTENANCE_QUEUE
    )
    assert isinstance(verdict, Deliver)
    assert verdict.message["headers"]["expires"] == expires


@pytest.mark.parametrize(
    "body",
    [
        b'[[], {"request": {"metadata": {"a": {"__type__": "zzz", "__value__": 1}}}}, {}]',
        b'[[], {"__type__": "datetime", "__value__": "2020-01-01"}, {}]',
        '[[], {"request": {}}, {}]'.encode("utf-16"),
        b'\xef\xbb\xbf[[], {"request": {}}, {}]',
        b'[[], {"request": {"prompt": "\xed\xa0\x80"}}, {}]',
    ],
    ids=["type-tag-deep", "type-tag-kwargs", "utf-16", "bom", "encoded-surrogate"],
)
def test_bodies_kombu_would_read_differently_are_refused(body: bytes) -> None:
    # Celery decodes with kombu's reader (strict UTF-8, type tags): what passes here must
    # be exactly the JSON Celery will see.
    entry = envelope()
    entry["body"] = base64.b64encode(body).decode()
    verdict = run(entry)
    assert isinstance(verdict, Refuse), verdict


def test_a_request_without_properties_is_still_screened() -> None:
    # no properties: no body encoding, so the body is read as plain JSON text
    entry = envelope()
    entry["body"] = json.dumps([[], {"request": REQUEST}, EMBED])
    del entry["properties"]
    assert isinstance(run(entry), Deliver)
    entry["properties"] = None
    assert isinstance(run(entry), Deliver)
    entry["body"] = base64.b64encode(entry["body"].encode()).decode()
    assert isinstance(run(entry), Refuse)


def test_a_non_ascii_signature_is_just_invalid() -> None:
    verdict = run(envelope(eta="2999-01-01T00:00:00+00:00", **{MAC_HEADER: "é" * 64}))
    assert isinstance(verdict, Refuse)


def test_a_signed_internal_message_loses_any_embed() -> None:
    entry = signed(POLL_TASK, "t", UPSTREAM_QUEUE, ["job-1", 0])
    body = json.dumps([["job-1", 0], {}, {"is_eager": True, "chain": None}]).encode()
    entry["body"] = base64.b64encode(body).decode()
    verdict = run(entry, UPSTREAM_QUEUE)
    assert isinstance(verdict, Deliver)
    assert body_of(verdict.message)[2] == EMBED
