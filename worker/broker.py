"""The broker boundary: what a queue entry must be before Celery sees it, and who may send it.

Producers reach one list, ``imagegen.requests`` (Redis ACLs enforce that in production; see
the README). Everything else a worker consumes is internal and signed by the workers. Every
entry a worker pops goes through :func:`screen` before kombu or Celery look at it, and comes
out as one of three verdicts:

- :class:`Deliver`: a message rebuilt from a whitelist of headers and properties with sane
  types (a fresh delivery tag, no time limits, no callbacks), so no envelope can stop a
  worker or reach a task it was not meant for;
- :class:`Refuse`: an ``imagegen.generate`` request with a usable job id that cannot be
  run as sent (another content type, an ETA, callbacks, an oversized entry): it becomes a
  ``failed`` job with error code ``invalid_request`` naming the problem;
- :class:`Drop`: no job to speak of (no usable id, another task on the request queue, an
  internal message without a valid signature): a row in ``dropped_messages`` with the
  reason, and an ERROR log line.

Internal messages carry an HMAC (``imagegen_mac`` header) over task, id, queue, args and
kwargs, made with a key only the workers hold (:func:`message_key`); :class:`SignedTask`
adds it to every message the workers publish, retries and countdowns included.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from queue import Empty
from typing import Any, Final

from celery import Task
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from sqlalchemy.exc import InterfaceError, OperationalError

from api_schema import names
from api_schema.models import MAX_REQUEST_BYTES

from .config import get_settings
from .logs import get_logger
from .metrics import observe
from .metrics.series import DropReason

log = get_logger("imagegen.broker")

MAC_HEADER: Final = "imagegen_mac"
#: The longest job id (the jobs.id column).
MAX_JOB_ID: Final = 64
#: The queue each internal task travels on; a message for it anywhere else is refused.
INTERNAL_TASKS: Final[Mapping[str, str]] = {
    names.SUBMIT_TASK: names.UPSTREAM_QUEUE,
    names.POLL_TASK: names.UPSTREAM_QUEUE,
    names.SWEEP_TASK: names.MAINTENANCE_QUEUE,
    # with the polls: it frees upstream slots, and must not wait behind them in a backlog
    names.RECLAIM_TASK: names.UPSTREAM_QUEUE,
    names.DELIVER_TASK: names.DELIVERIES_QUEUE,
}
INTERNAL_QUEUES: Final = frozenset(INTERNAL_TASKS.values())
#: Every task whose messages the workers sign: the internal ones, and the retries of a
#: request (a request delayed by a worker is legitimate; one delayed by a producer is not).
SIGNED_TASKS: Final[Mapping[str, str]] = {
    **INTERNAL_TASKS,
    names.GENERATE_TASK: names.REQUESTS_QUEUE,
}
#: A request entry larger than this (the request cap, base64 and the envelope around it) is
#: refused without decoding its body.
MAX_REQUEST_ENTRY_BYTES: Final = MAX_REQUEST_BYTES * 4 // 3 + 64 * 1024
#: Larger entries are not even parsed: they are dropped with their size.
MAX_ENTRY_BYTES: Final = 4 * MAX_REQUEST_ENTRY_BYTES
#: Internal messages are small (a job id and a sequence number).
MAX_INTERNAL_ENTRY_BYTES: Final = 64 * 1024
EMPTY_EMBED: Final = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Where an entry goes when what became of it could not be recorded (an unexpected error):
#: kept for an operator, never lost.
DEAD_LETTERS: Final = "imagegen.dead"
_TEXT_LIMIT: Final = 200


# --- verdicts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deliver:
    """Hand this (rebuilt) message to Celery."""

    message: dict[str, Any]


@dataclass(frozen=True)
class Refuse:
    """A request with a usable job id that cannot run: record it as ``invalid_request``."""

    job_id: str
    reason: str
    fingerprint: str | None = None  # of the entry, so its redelivery is recognised
    request: object = None  # what it asked for, when readable: its channels still hear of it


@dataclass(frozen=True)
class Drop:
    """No job to record it on: a ``dropped_messages`` row with the reason."""

    reason: str
    task: str | None = None
    message_id: str | None = None


Verdict = Deliver | Refuse | Drop


# --- signatures ----------------------------------------------------------------------------

_key_lock = threading.Lock()
_key: bytes | None = None


def message_key() -> bytes:
    """The key of internal message signatures: ``IMAGEGEN_MESSAGE_KEY``, else the one the
    migration stored in the database (read once per process)."""
    global _key
    if _key is None:
        with _key_lock:
            if _key is None:
                _key = _checked(_load_key())
    return _key


def _load_key() -> bytes:
    configured = get_settings().message_key
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value().encode()
    from sqlalchemy import text

    from .db import autocommit

    with autocommit() as connection:
        value = connection.execute(
            text("SELECT value FROM imagegen_secrets WHERE name = 'message_key'")
        ).scalar()
    if not value:
        raise RuntimeError("no message key: run `imagegen db upgrade`")
    return str(value).encode()


def _checked(key: bytes) -> bytes:
    if len(key) < 32:
        raise RuntimeError("the message key must be at least 32 characters")
    return key


def reset_message_key() -> None:
    """Forget the cached key (tests that switch databases)."""
    global _key
    _key = None


def message_mac(key: bytes, task: str, task_id: str, queue: str, args: Any, kwargs: Any) -> str:
    """The signature of an internal message (hex HMAC-SHA256 over canonical JSON)."""
    payload = json.dumps(
        [task, task_id, queue, list(args or ()), dict(kwargs or {})],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


class SignedTask(Task):  # type: ignore[misc]
    """The workers' task class: every message it publishes carries the workers' signature.

    ``Task.retry`` and ``autoretry_for`` publish through ``apply_async`` too, so retries and
    countdowns are signed like first sends.
    """

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        **options: Any,
    ) -> Any:
        queue = SIGNED_TASKS.get(self.name)
        if queue is not None:
            task_id = task_id or str(uuid.uuid4())
            headers = dict(options.pop("headers", None) or {})
            headers[MAC_HEADER] = message_mac(
                message_key(), self.name, task_id, queue, args, kwargs
            )
            options["headers"] = headers
            options["queue"] = queue
        return super().apply_async(args, kwargs, task_id=task_id, **options)


# --- screening -----------------------------------------------------------------------------


def usable_job_id(value: object) -> str | None:
    """``value`` if it can name a job: a non-empty string of at most 64 characters that
    PostgreSQL can store (no NUL, no unpaired surrogate)."""
    if not isinstance(value, str) or not value or len(value) > MAX_JOB_ID:
        return None
    if "\x00" in value:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


def _short(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return ascii(text)[1:-1][:_TEXT_LIMIT]


def _decode_body(entry: Mapping[str, Any]) -> tuple[bytes | None, str | None]:
    """The raw body bytes, or why there are none."""
    body = entry.get("body")
    props = entry.get("properties")
    encoding = props.get("body_encoding") if isinstance(props, dict) else None
    if not isinstance(body, str):
        return None, "body is not a string"
    if encoding == "base64":
        try:
            return base64.b64decode(body, validate=True), None
        except (binascii.Error, ValueError):
            return None, "body is not valid base64"
    if encoding is None:
        return body.encode("utf-8", "surrogatepass"), None
    return None, f"unknown body encoding {_short(encoding)!s}"


class _TypeTagError(ValueError):
    """An object kombu's JSON reader would turn into a Python value."""


def _no_type_tags(obj: dict[str, Any]) -> dict[str, Any]:
    # kombu's reader (what Celery decodes bodies with) turns {"__type__", "__value__"}
    # objects into datetimes, decimals, … or fails on them: such a body would not be the
    # JSON this screen saw, so it is refused here.
    if obj.keys() == {"__type__", "__value__"}:
        raise _TypeTagError("kombu type tag")
    return obj


def _json(data: bytes) -> tuple[Any, str | None]:
    """Parse ``data`` exactly as kombu would (strict UTF-8, no BOM), without type tags."""
    try:
        return json.loads(data.decode("utf-8"), object_hook=_no_type_tags), None
    except RecursionError:
        return None, "nests too deeply"
    except _TypeTagError:
        return None, 'is not plain JSON (an object of only "__type__" and "__value__")'
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"is not UTF-8 JSON ({type(exc).__name__})"


def _iso_or_none(value: object) -> bool:
    if value is None:
        return True
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _Parsed:
    """What an entry says, whatever its protocol."""

    protocol: int
    task: object
    task_id: object
    headers: Mapping[str, Any]  # protocol 2 headers, or the protocol 1 body's fields
    body: Any  # protocol 2: the decoded [args, kwargs, embed]; protocol 1: None
    body_problem: str | None
    content_type: object
    content_encoding: object


def _parse(entry: dict[str, Any], *, decode_body: bool) -> _Parsed | str:
    """Read an envelope (protocol 1 or 2) without trusting any of it; a string says why not."""
    headers = entry.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "headers is not an object"
    props = entry.get("properties")
    if props is not None and not isinstance(props, dict):
        return "properties is not an object"
    content_type, content_encoding = entry.get("content-type"), entry.get("content-encoding")
    if headers and "task" in headers:
        body: Any = None
        problem: str | None = None
        if decode_body:
            raw, problem = _decode_body(entry)
            if raw is not None:
                if content_type != "application/json" or headers.get("compression"):
                    problem = None  # refused for its content type, decoded no further
                else:
                    body, why = _json(raw)
                    problem = f"body {why}" if why else None
        return _Parsed(
            2, headers.get("task"), headers.get("id"), headers, body, problem,
            content_type, content_encoding,
        )  # fmt: skip
    # Protocol 1: everything is in a JSON body.
    raw, problem = _decode_body(entry)
    if raw is None:
        return f"protocol 1 message whose {problem}"
    fields, why = _json(raw)
    if why or not isinstance(fields, dict):
        return f"protocol 1 message whose body {why or 'is not an object'}"
    return _Parsed(
        1, fields.get("task"), fields.get("id"), fields, None, None,
        content_type, content_encoding,
    )  # fmt: skip


def _body_parts(parsed: _Parsed) -> tuple[list[Any], dict[str, Any], dict[str, Any]] | str:
    """[args, kwargs, embed] of a message, whatever its protocol; a string says why not."""
    if parsed.protocol == 1:
        h = parsed.headers
        args, kwargs = h.get("args", []), h.get("kwargs", {})
        embed = {k: h.get(k) for k in ("callbacks", "errbacks", "chord")}
        embed["chain"] = None
    else:
        if parsed.body_problem is not None:
            return parsed.body_problem
        body = parsed.body
        if not (isinstance(body, list) and len(body) == 3):
            return "body is not [args, kwargs, embed]"
        args, kwargs, embed = body
        embed = {} if embed is None else embed
    if not isinstance(args, list):
        return "args is not a list"
    if not isinstance(kwargs, dict):
        return "kwargs is not an object"
    if not isinstance(embed, dict):
        return "embed is not an object"
    return args, kwargs, embed


def _links(embed: Mapping[str, Any]) -> str | None:
    """The first of callbacks, errbacks, chain, chord that is set."""
    return next((k for k in ("callbacks", "errbacks", "chain", "chord") if embed.get(k)), None)


def _delayed(parsed: _Parsed) -> str | None:
    h = parsed.headers
    for name in ("eta", "countdown", "expires"):
        if h.get(name) not in (None, ""):
            return name
    return None


def _rebuild(
    task: str,
    task_id: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    body: str | None = None,
    eta: str | None = None,
    expires: str | None = None,
    retries: int = 0,
    extra_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A protocol 2 message with only headers and properties that Celery reads safely."""
    if body is None:
        data = json.dumps([args, kwargs, EMPTY_EMBED], separators=(",", ":"))
        body = base64.b64encode(data.encode("utf-8", "surrogatepass")).decode()
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": eta,
        "expires": expires,
        "group": None,
        "group_index": None,
        "retries": retries,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        # What Flower and the worker log show: never the request itself (data URLs, prompts).
        "argsrepr": repr(args) if task != names.GENERATE_TASK else "()",
        "kwargsrepr": "{'request': …}" if task == names.GENERATE_TASK else repr(kwargs),
        "origin": None,
        "ignore_result": True,
        **(extra_headers or {}),
    }
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            # Always ours: kombu keys its unacked hash by it, so a producer's tag could
            # overwrite another message's entry there.
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def screen(raw: bytes, queue: str, key: Callable[[], bytes] = message_key) -> Verdict:
    """What to do with one entry popped from ``queue`` (raw bytes, as stored in Redis)."""
    if queue == names.REQUESTS_QUEUE:
        return _screen_request(raw, key)
    return _screen_internal(raw, queue, key)


def _signed(
    key: Callable[[], bytes], parsed: _Parsed, queue: str, args: Any, kwargs: Any
) -> str | None:
    """The message's signature when it is a valid workers' signature, else None."""
    mac = parsed.headers.get(MAC_HEADER)
    if not isinstance(mac, str) or not mac.isascii() or not isinstance(parsed.task, str):
        return None
    if not isinstance(parsed.task_id, str):
        return None
    expected = message_mac(key(), parsed.task, parsed.task_id, queue, args, kwargs)
    return mac if hmac.compare_digest(mac.encode(), expected.encode()) else None


#: How an entry names its task and id, looked for (unparsed) at both ends of an entry too
#: large to parse, so its dropped_messages row can still name it.
_TASK_ID_NEAR_END: Final = re.compile(rb'"id"\s*:\s*"([\x21\x23-\x5b\x5d-\x7e]{1,64})"')
_SCAN_BYTES: Final = 64 * 1024


def _envelope(raw: bytes, limit: int) -> dict[str, Any] | Drop:
    if len(raw) > limit:
        # Not parsed (that would take several times its size in memory); its id is read
        # from the headers, which kombu writes after the body, on a best-effort basis.
        found = _TASK_ID_NEAR_END.search(raw[-_SCAN_BYTES:]) or _TASK_ID_NEAR_END.search(
            raw[:_SCAN_BYTES]
        )
        return Drop(
            f"entry of {len(raw)} bytes is over the {limit}-byte limit (not parsed)",
            message_id=found.group(1).decode() if found else None,
        )
    entry, why = _json(raw)
    if why:
        return Drop(f"entry {why}: not a message envelope")
    if not isinstance(entry, dict):
        return Drop(f"entry is a JSON {type(entry).__name__}, not a message envelope")
    return entry


def _screen_request(raw: bytes, key: Callable[[], bytes]) -> Verdict:
    verdict = _screen_request_entry(raw, key)
    if isinstance(verdict, Refuse):
        fingerprint = hashlib.sha256(raw).hexdigest()
        return Refuse(verdict.job_id, verdict.reason, fingerprint, verdict.request)
    return verdict


def _screen_request_entry(raw: bytes, key: Callable[[], bytes]) -> Verdict:
    entry = _envelope(raw, MAX_ENTRY_BYTES)
    if isinstance(entry, Drop):
        return entry
    oversized = len(raw) > MAX_REQUEST_ENTRY_BYTES
    parsed = _parse(entry, decode_body=not oversized)
    if isinstance(parsed, str):
        return Drop(parsed)
    task, task_id = parsed.task, usable_job_id(parsed.task_id)
    if task != names.GENERATE_TASK:
        return Drop(
            f"task {_short(task)} is not accepted on {names.REQUESTS_QUEUE}",
            _short(task),
            _short(parsed.task_id),
        )
    if task_id is None:
        return Drop(
            "no usable task id (a string of 1 to 64 storable characters)",
            names.GENERATE_TASK,
            _short(parsed.task_id),
        )
    if oversized:
        return Refuse(
            task_id,
            f"message: {len(raw)} bytes, over the limit for a request "
            f"({MAX_REQUEST_BYTES} bytes of JSON; send large images as https URLs)",
        )
    if parsed.content_type != "application/json":
        return Refuse(
            task_id, f"message: content type {_short(parsed.content_type)} is not accepted (JSON)"
        )
    if parsed.content_encoding not in ("utf-8", "utf8"):
        return Refuse(
            task_id, f"message: content encoding {_short(parsed.content_encoding)} is not utf-8"
        )
    if parsed.protocol == 2 and parsed.headers.get("compression"):
        return Refuse(task_id, "message: compressed bodies are not accepted")
    parts = _body_parts(parsed)
    if isinstance(parts, str):
        return Refuse(task_id, f"message: {parts}")
    args, kwargs, embed = parts
    delayed = _delayed(parsed)
    retried = None
    if parsed.protocol == 2 and delayed is not None:
        # A worker's own retry of a request (the database was away) carries an ETA.
        retried = _signed(key, parsed, names.REQUESTS_QUEUE, args, kwargs)
    if retried is not None:
        eta, retries = parsed.headers.get("eta"), parsed.headers.get("retries", 0)
        if _iso_or_none(eta) and parsed.headers.get("expires") is None and type(retries) is int:
            return Deliver(
                _rebuild(
                    names.GENERATE_TASK,
                    task_id,
                    names.REQUESTS_QUEUE,
                    args,
                    kwargs,
                    eta=eta,
                    retries=retries,
                    extra_headers={MAC_HEADER: retried},
                )
            )
    if delayed is not None:
        return Refuse(
            task_id,
            f"message.{delayed}: requests cannot be delayed or expire "
            "(set deadline_seconds in the request instead)",
            request=kwargs.get("request"),
        )
    link = _links(embed)
    if link is not None:
        return Refuse(
            task_id,
            f"message.{link}: requests cannot carry linked tasks",
            request=kwargs.get("request"),
        )
    # The body is reused as it is when it already is [args, kwargs, <no links>] in base64.
    props = entry.get("properties")
    keep = (
        parsed.protocol == 2
        and isinstance(props, dict)
        and props.get("body_encoding") == "base64"
        and not any(embed.values())
        and set(embed) <= set(EMPTY_EMBED)
    )
    message = _rebuild(
        names.GENERATE_TASK,
        task_id,
        names.REQUESTS_QUEUE,
        args,
        kwargs,
        body=entry["body"] if keep else None,
    )
    return Deliver(message)


def _screen_internal(raw: bytes, queue: str, key: Callable[[], bytes]) -> Verdict:
    entry = _envelope(raw, MAX_INTERNAL_ENTRY_BYTES)
    if isinstance(entry, Drop):
        return entry
    parsed = _parse(entry, decode_body=True)
    if isinstance(parsed, str):
        return Drop(parsed)
    task, task_id = parsed.task, parsed.task_id

    def drop(reason: str) -> Drop:
        return Drop(reason, _short(task), _short(task_id))

    if parsed.protocol != 2:
        return drop(f"protocol 1 message on {queue}")
    if not isinstance(task, str) or INTERNAL_TASKS.get(task) != queue:
        return drop(f"task {_short(task)} is not accepted on {queue}")
    if not isinstance(task_id, str) or not task_id or len(task_id) > _TEXT_LIMIT:
        return drop("no usable task id")
    if parsed.content_type != "application/json" or parsed.headers.get("compression"):
        return drop(f"content type {_short(parsed.content_type)} is not accepted (JSON)")
    parts = _body_parts(parsed)
    if isinstance(parts, str):
        return drop(parts)
    args, kwargs, embed = parts
    if _links(embed) is not None:
        return drop("internal messages carry no linked tasks")
    mac = _signed(key, parsed, queue, args, kwargs)
    if mac is None:
        return drop("no valid workers' signature")
    eta, expires = parsed.headers.get("eta"), parsed.headers.get("expires")
    retries = parsed.headers.get("retries", 0)
    if not (_iso_or_none(eta) and _iso_or_none(expires)):
        # (beat sends the sweep with an expiry: a sweep not run in time is skipped)
        return drop("eta or expires is not an ISO 8601 time")
    if type(retries) is not int or retries < 0:
        return drop("retries is not a non-negative integer")
    return Deliver(
        _rebuild(
            task,
            task_id,
            queue,
            args,
            kwargs,
            # re-encoded with no embed at all: Celery applies embed keys to the task's context
            eta=eta,
            expires=expires,
            retries=retries,
            extra_headers={MAC_HEADER: mac},
        )
    )


def envelope_problem(entry: object) -> str | None:
    """What makes an entry for any other queue (remote control, events, a benchmark's own
    queue) unusable, or None. kombu and Celery trust envelopes: a malformed one would stop
    the worker, and a content type Celery trusts without decoding (``application/data``)
    would reach a task as raw bytes."""
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
    if entry.get("content-type") != "application/json" or (headers or {}).get("compression"):
        return "content type is not (uncompressed) application/json"
    if not isinstance(entry.get("content-encoding"), str):
        return "no content-encoding"
    raw, problem = _decode_body(entry)
    if raw is None:
        return problem
    if headers is None or "task" not in headers:
        return None  # not a task message (remote control, events)
    task_id, limits = headers.get("id"), headers.get("timelimit")
    if not isinstance(headers["task"], str) or not isinstance(task_id, str) or not task_id:
        return "headers.task or headers.id is not a non-empty string"
    if limits is not None and not (
        isinstance(limits, list)
        and len(limits) == 2
        and all(
            x is None or (isinstance(x, int | float) and not isinstance(x, bool)) for x in limits
        )
    ):
        return "headers.timelimit is not [soft, hard]"
    if not (_iso_or_none(headers.get("eta")) and _iso_or_none(headers.get("expires"))):
        return "headers.eta or headers.expires is not an ISO 8601 time"
    parts = _body_parts(_Parsed(2, headers["task"], task_id, headers, *_json(raw), None, None))
    if isinstance(parts, str):
        return parts
    return None


# --- recording what is not delivered -------------------------------------------------------


def record_verdict(verdict: Refuse | Drop, queue: str, size: int) -> None:
    """Store a refusal (a failed job) or a drop (a ``dropped_messages`` row), and log it."""
    from . import jobs
    from .db import autocommit
    from .delivery import outbox, targets

    if isinstance(verdict, Refuse):
        outbox.start_buffer()
        with autocommit() as connection:
            jobs.record_invalid(
                connection,
                verdict.job_id,
                verdict.reason,
                request_hash=verdict.fingerprint,
                deliver_to=targets.for_raw(verdict.request, get_settings().delivery_policy),
                tenant=get_settings().broker_tenant,
            )
        from .delivery.tasks import publish_deliveries

        try:
            publish_deliveries()
        except Exception:  # the job is recorded: the sweeper publishes its deliveries
            log.exception("request.refused_unannounced", job_id=verdict.job_id)
        log.warning(
            "request.refused",
            job_id=verdict.job_id,
            task=names.GENERATE_TASK,
            error_code="invalid_request",
            reason=verdict.reason,
        )
        return
    log.error(
        "message.dropped",
        queue=queue,
        task=verdict.task,
        message_id=verdict.message_id,
        size=size,
        reason=verdict.reason,
    )
    with autocommit() as connection:
        jobs.record_dropped(
            connection,
            queue=queue[:_TEXT_LIMIT],
            task=verdict.task,
            message_id=verdict.message_id,
            size=size,
            reason=verdict.reason[:2000],
        )
    observe.message_dropped(verdict.reason)  # once recorded: an entry put back is counted once


#: Failures that mean "the database is away": the entry goes back to its queue.
_DB_AWAY: Final = (OperationalError, InterfaceError)


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
        # kombu's own, with the entry screened before it is decoded for Celery.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self._screen_and_deliver(dest, item)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _screen_and_deliver(self, queue: str, item: bytes) -> None:
        if queue not in names.ALL_QUEUES:
            entry, why = _json(item)
            if why:
                log.error("entry.dropped", queue=queue, reason=why)
                observe.message_dropped(DropReason.FANOUT)
                return
            self.connection._deliver(entry, queue)
            return
        try:
            verdict = screen(item, queue)
        except _DB_AWAY as exc:  # reading the signing key
            self._put_back(queue, item, exc)
            return
        except Exception as exc:  # noqa: BLE001 - no entry may stop the consumer
            verdict = Drop(f"could not be screened ({type(exc).__name__})")
        if isinstance(verdict, Deliver):
            # Outside any handler: a Redis error here is the connection's, and kombu
            # reconnects as for any failed read (the entry is then in its unacked hash).
            self.connection._deliver(verdict.message, queue)
            return
        try:
            record_verdict(verdict, queue, len(item))
        except _DB_AWAY as exc:
            self._put_back(queue, item, exc)
        except Exception:  # kept, not lost, whatever went wrong
            log.exception("entry.unrecorded", queue=queue, kept_in=DEAD_LETTERS)
            with self.conn_or_acquire() as client:
                client.lpush(DEAD_LETTERS, item)

    def _put_back(self, queue: str, item: bytes, exc: Exception) -> None:
        # Nothing is lost while the database is away: the entry goes back to the far end of
        # its queue (so it holds up no other entry), and this consumer pauses a moment
        # rather than spin on it.
        log.warning("entry.put_back", queue=queue, reason="database unavailable", error=str(exc))
        with self.conn_or_acquire() as client:
            client.lpush(queue, item)
        time.sleep(0.2)


class GuardedRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, screening every entry (see the module docstring)."""

    Channel = _GuardedChannel

    def _deliver(self, message: Any, queue: str) -> None:
        # Fan-out messages (remote control, events) arrive here without _brpop_read.
        if queue not in names.ALL_QUEUES:
            problem = envelope_problem(message)
            if problem is not None:
                log.error("message.malformed", queue=queue, reason=problem)
                observe.message_dropped(DropReason.FANOUT)
                return
        super()._deliver(message, queue)


# kombu resolves a broker URL's scheme through this table: redis:// and rediss:// URLs get
# the guarded transport and read the same everywhere they are shown (logs, Flower).
TRANSPORT_ALIASES.update(dict.fromkeys(("redis", "rediss"), f"{__name__}:GuardedRedisTransport"))
