"""The Modellix upstream client: typed responses, typed errors, rate-limit headers.

Error tree (what a caller may do next)::

    UpstreamError                 base; never carries the API key
    +-- PermanentError            the upstream said no; retrying will not help (400, 401,
    |   |                         402, 403, 404, ...)
    |   +-- InvalidAnswerError    a 200 whose content breaks the protocol (an image format,
    |                             URL or size that cannot be stored, another task's id): the
    |                             job ends with ``upstream_invalid_response``
    +-- RetryableError            not accepted or not answered; safe to try again later
    |                             (429 on any call; 5xx, 408 and transport errors on a GET)
    +-- OutcomeUnknownError       a POST whose fate is unknown (5xx, 408, timeout or connection
                                  loss after sending, non-JSON body, no task_id): a second POST
                                  may create a second paid task

Every error has ``throttle`` set when the upstream asked everyone to back off (429, 503), and
``retry_after`` from ``Retry-After`` / ``X-RateLimit-Reset`` when it said for how long.

Every text that comes from the upstream and may be stored or logged (error messages, transport
errors, a failed task's reason, request ids, result URLs) goes through the client's
:class:`Redactor`, which masks the API key in any of the forms it can be echoed in, and is
checked or cut to fit its database column before it leaves this module.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from api_schema import ErrorCode
from worker.config import SUBMIT_PATH, TASK_PATH
from worker.metrics import observe
from worker.metrics.series import Endpoint

#: Statuses after which a GET may be repeated.
RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
#: Statuses after which a POST was definitely not accepted (Modellix's own CLI's list).
NOT_ACCEPTED_STATUSES: Final = frozenset({400, 401, 402, 403, 404, 405, 413, 415, 422, 429})
THROTTLE_STATUSES: Final = frozenset({429, 503})
#: What an upstream task id may look like: one path segment, no dot-segments.
TASK_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
#: The image formats a result may have (lowercase); anything else is an invalid answer.
IMAGE_FORMATS: Final = frozenset({"png", "jpeg", "jpg", "webp"})
MAX_URL_CHARS: Final = 4096
MAX_DIMENSION: Final = 100_000
#: More image resources than this in one answer is not an answer to our request (n <= 9).
MAX_RESOURCES: Final = 64
#: ``jobs.upstream_request_id`` is String(128); longer or odd ids are dropped (informational).
MAX_REQUEST_ID: Final = 128
#: A failed task's reason is cut to this (``jobs.MAX_ERROR_MESSAGE``).
MAX_ERROR_TEXT: Final = 2000
#: An error envelope's message is cut to this.
MAX_ENVELOPE_TEXT: Final = 500
_REQUEST_ID: Final = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID}}}")
#: Characters a URL we store and fetch must not contain: whitespace, C0/C1 controls, DEL,
#: and lone surrogates (PostgreSQL cannot store them).
_URL_FORBIDDEN: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: What PostgreSQL text cannot hold: NUL and unpaired surrogates.
_UNSTORABLE: Final = re.compile(r"[\x00\ud800-\udfff]")
_INT32_MAX: Final = 2**31 - 1
#: ``jobs.billing_amount`` is Numeric(12, 4).
_MAX_AMOUNT: Final = Decimal(10) ** 8
_PERMANENT_CODES: Final = {
    401: ErrorCode.UPSTREAM_AUTH,
    403: ErrorCode.UPSTREAM_AUTH,
    402: ErrorCode.UPSTREAM_PAYMENT,
    404: ErrorCode.UPSTREAM_NOT_FOUND,
}


#: Runs of at least this many characters shared with a form of the key are masked.
MIN_MASKED_RUN: Final = 8
MASK: Final = "***"
#: Prefixes the key is base64-encoded with in headers: ``Bearer <key>``, basic auth ``u:<key>``.
_B64_PREFIXES: Final = (b"", b"Bearer ", b":")
_URLSAFE: Final = str.maketrans("+/", "-_")
#: Texts longer than this are cut before masking (see ``Redactor.cut``).
_MASK_INPUT_LIMIT: Final = 65_536


class Redactor:
    """Masks one secret, in every form it is likely to be echoed in, out of texts.

    The forms: the secret itself; its standard and urlsafe base64, alone and at each of the
    three byte alignments it can have inside a longer encoded blob (the edge characters that
    depend on the neighbouring bytes are left out), also preceded by ``Bearer `` and by
    ``:`` (basic auth); its percent-encoding (``quote(key, safe="")``); and its full
    percent-encoding (every byte as ``%XX``). Matching ignores case, so upper and lower hex
    and a re-cased key are masked too.

    Every run of :data:`MIN_MASKED_RUN` or more consecutive characters of a text that also
    appears in one of the forms becomes ``***`` (overlapping and adjacent runs merge into one
    mask). A secret shorter than that is masked where it occurs in full. Windows of the
    prefixed base64 forms that carry no bit of the key (``QmVhcmVy`` is just ``Bearer``) are
    not masked.

    Built once per client: the forms' 8-character windows are precomputed into a set and a
    text is scanned with one sliding window. The repr never shows the secret.
    """

    __slots__ = ("_pattern", "_windows")

    def __init__(self, secret: str) -> None:
        self._windows: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        if not secret:
            return
        if len(secret) < MIN_MASKED_RUN:
            self._pattern = re.compile(re.escape(secret), re.IGNORECASE)
            return
        windows: set[str] = set()
        for form, first in _secret_forms(secret):
            low = _lower(form)
            # a window must end past the first character that carries a bit of the key
            for start in range(max(0, first - MIN_MASKED_RUN + 1), len(low) - MIN_MASKED_RUN + 1):
                windows.add(low[start : start + MIN_MASKED_RUN])
        self._windows = frozenset(windows)

    def __repr__(self) -> str:
        return "Redactor(<secret hidden>)"

    def __call__(self, text: str) -> str:
        """``text`` with every form of the secret masked."""
        if self._pattern is not None:
            return self._pattern.sub(MASK, text)
        if not self._windows or len(text) < MIN_MASKED_RUN:
            return text
        low = _lower(text)
        windows = self._windows
        spans: list[tuple[int, int]] = []
        start = end = -1
        for i in range(len(low) - MIN_MASKED_RUN + 1):
            if low[i : i + MIN_MASKED_RUN] in windows:
                if i <= end:  # overlapping or adjacent: one mask
                    end = i + MIN_MASKED_RUN
                else:
                    if end >= 0:
                        spans.append((start, end))
                    start, end = i, i + MIN_MASKED_RUN
        if end < 0:
            return text
        spans.append((start, end))
        parts: list[str] = []
        at = 0
        for begin, finish in spans:
            parts.append(text[at:begin])
            parts.append(MASK)
            at = finish
        parts.append(text[at:])
        return "".join(parts)

    def cut(self, text: str, limit: int) -> str:
        """``text`` masked, made storable (no NUL, no lone surrogate) and cut to ``limit``.

        A huge text is cut before it is masked; the few characters at that cut that could be
        the start of an unmasked key are dropped with it.
        """
        if len(text) > _MASK_INPUT_LIMIT:
            # up to MIN_MASKED_RUN - 1 unmasked key characters can end the cut text
            masked = self(text[:_MASK_INPUT_LIMIT])[: -(MIN_MASKED_RUN - 1)]
        else:
            masked = self(text)
        return _UNSTORABLE.sub("\ufffd", masked)[:limit]

    def quote(self, value: str, limit: int = 80) -> str:
        """``value`` masked, shortened and quoted for an error message."""
        masked = self(value)
        shown = masked if len(masked) <= limit else masked[:limit] + "..."
        return self(repr(shown))


def _lower(text: str) -> str:
    """``text`` lowercased character by character, keeping every index in place."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def secret_forms(secret: str) -> list[str]:
    """Every form :class:`Redactor` masks ``secret`` in, whole (the log scrubber replaces
    each of them where it appears in full)."""
    return [form for form, _ in _secret_forms(secret)]


def _secret_forms(secret: str) -> list[tuple[str, int]]:
    """Each form of ``secret`` with the index of its first character carrying key bits."""
    raw = secret.encode("utf-8", "surrogatepass")
    forms = [
        (secret, 0),
        (quote(raw, safe=""), 0),
        ("".join(f"%{byte:02X}" for byte in raw), 0),  # lower hex: matching ignores case
    ]
    encoded: list[tuple[str, int]] = []
    for prefix in _B64_PREFIXES:
        blob = prefix + raw
        # the whole blob encoded alone, its last character padded with zero bits
        encoded.append((base64.b64encode(blob).decode().rstrip("="), 8 * len(prefix) // 6))
        for shift in range(3):
            encoded.append(_b64_inside(blob, shift, len(prefix)))
    forms += encoded
    forms += [(form.translate(_URLSAFE), first) for form, first in encoded]
    return forms


def _b64_inside(blob: bytes, shift: int, key_from: int) -> tuple[str, int]:
    """The base64 characters of ``blob`` placed ``shift`` bytes into a longer blob that only
    depend on ``blob`` itself, and the index among them of the first one that carries a bit of
    ``blob[key_from:]``."""
    encoded = base64.b64encode(bytes(shift) + blob + bytes(2)).decode()
    first = -(-8 * shift // 6)  # the first character with no bit of the bytes before
    last = 8 * (shift + len(blob)) // 6  # past the last character with no bit of those after
    key_char = 8 * (shift + key_from) // 6
    return encoded[first:last], max(0, key_char - first)


class UpstreamError(Exception):
    """Something went wrong talking to the upstream."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        concurrency: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        #: a 429 "Concurrent limit exceeded": the team's slots were all taken (not its rate)
        self.concurrency = concurrency

    @property
    def throttle(self) -> bool:
        """The upstream asked every caller of this team to slow down."""
        return self.status in THROTTLE_STATUSES

    @property
    def error_code(self) -> ErrorCode:
        """The job error code this failure ends a job with."""
        return _PERMANENT_CODES.get(self.status or 0, ErrorCode.UPSTREAM_REJECTED)

    @classmethod
    def from_response(
        cls, response: httpx.Response, *, secret: str | Redactor = ""
    ) -> UpstreamError:
        """Build the error an HTTP error response stands for (the caller picks the class).

        ``secret`` is the key or, better, the client's :class:`Redactor` for it.
        """
        redactor = secret if isinstance(secret, Redactor) else Redactor(secret)
        message = _envelope_message(response) or ""
        text = redactor.cut(message, MAX_ENVELOPE_TEXT) or "(no message)"
        return cls(
            f"HTTP {response.status_code}: {text}",
            status=response.status_code,
            retry_after=RateLimit.from_headers(response.headers).wait_seconds(),
            concurrency=response.status_code == 429
            and message.strip().lower().startswith("concurrent"),
        )


class PermanentError(UpstreamError):
    """The upstream refused the request; the job ends with ``error_code``."""


class RetryableError(UpstreamError):
    """Not accepted or not answered; the same call may be made again later."""


class OutcomeUnknownError(UpstreamError):
    """A POST that may or may not have created a paid task."""


class InvalidAnswerError(PermanentError):
    """A 200 whose content breaks the protocol; the message names the field (masked).

    Retrying would read the same answer: the job ends with ``upstream_invalid_response``.
    """

    @property
    def error_code(self) -> ErrorCode:
        """Always ``upstream_invalid_response``."""
        return ErrorCode.UPSTREAM_INVALID_RESPONSE


@dataclass(frozen=True)
class RateLimit:
    """The upstream's ``X-RateLimit-*`` / ``Retry-After`` headers."""

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None
    retry_after: float | None = None

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> RateLimit:
        """Parse whatever of the headers is present and well formed."""
        return cls(
            limit=_int(headers.get("x-ratelimit-limit")),
            remaining=_int(headers.get("x-ratelimit-remaining")),
            reset=_float(headers.get("x-ratelimit-reset")),
            retry_after=_float(headers.get("retry-after")),
        )

    def wait_seconds(self, now: float | None = None) -> float | None:
        """How long the upstream asked callers to wait, if it said."""
        if self.retry_after is not None:
            return max(0.0, self.retry_after)
        if self.reset is not None and self.remaining == 0:
            return max(0.0, self.reset - (time.time() if now is None else now))
        return None


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Resource(_Lenient):
    """One output file of a finished task.

    Parsed leniently; the image resources of a success are then checked (format in
    :data:`IMAGE_FORMATS`, lowercased; an http(s) URL without whitespace or controls, at most
    :data:`MAX_URL_CHARS`, masked; sizes in ``0..MAX_DIMENSION``) before a TaskState has them.
    """

    url: str
    type: str = "image"
    width: int = 0
    height: int = 0
    format: str = "png"
    role: str | None = None


class _Result(_Lenient):
    resources: list[Resource] = []
    metadata: dict[str, Any] = {}


class _Billing(_Lenient):
    status: Any = None
    amount: Any = None  # informational: read by _decimal, dropped when unusable


class _TaskData(_Lenient):
    # Lenient on purpose: a missing status or task id makes the body unreadable (retried),
    # informational fields of an unexpected type are dropped, and the values that are
    # stored or put in a path are checked by _task_state (InvalidAnswerError).
    status: str
    task_id: str
    model_id: Any = None
    duration: Any = None
    result: _Result | None = None
    billing: _Billing | None = None
    result_expires_at: Any = None
    error: Any = None
    error_message: Any = None
    message: Any = None


@dataclass(frozen=True)
class Submitted:
    """The upstream accepted a submit."""

    task_id: str
    status: str
    rate_limit: RateLimit


@dataclass(frozen=True)
class TaskState:
    """What a task query said."""

    task_id: str
    status: str  # pending | processing | success | failed
    rate_limit: RateLimit
    duration_ms: int | None = None
    resources: list[Resource] = field(default_factory=list)
    billing_amount: Decimal | None = None
    result_expires_at: datetime | None = None
    request_id: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """True once the task reached success or failed."""
        return self.status in ("success", "failed")


class _BearerAuth(httpx.Auth):
    """Adds the key to each request; keeps it out of reprs."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request


class ModellixClient:
    """Synchronous client of the two endpoints the worker uses; one per process."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._redact = Redactor(api_key.get_secret_value())
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            auth=_BearerAuth(api_key),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
            headers={"User-Agent": "imagegen-worker/0.1", "Accept": "application/json"},
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(self, payload: dict[str, Any]) -> Submitted:
        """POST one generation. Raises RetryableError, PermanentError or OutcomeUnknownError."""
        try:
            response = observe.upstream_call(
                Endpoint.SUBMIT, lambda: self._http.post(SUBMIT_PATH, json=payload)
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached the upstream: safe to try again.
            raise RetryableError(self._describe(exc)) from None
        except httpx.HTTPError as exc:
            raise OutcomeUnknownError(self._describe(exc)) from None
        if response.status_code in NOT_ACCEPTED_STATUSES:
            kind: type[UpstreamError] = (
                RetryableError if response.status_code == 429 else PermanentError
            )
            raise kind.from_response(response, secret=self._redact)
        if response.status_code != 200:
            raise OutcomeUnknownError.from_response(response, secret=self._redact)
        body = self._json(response, OutcomeUnknownError)
        data = body.get("data") if isinstance(body.get("data"), dict) else None
        task_id = data.get("task_id") if data else None
        if not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
            raise OutcomeUnknownError("HTTP 200 without a usable data.task_id", status=200)
        return Submitted(
            task_id=task_id,
            status=str(data.get("status", "pending")) if data else "pending",
            rate_limit=RateLimit.from_headers(response.headers),
        )

    def get_task(self, task_id: str) -> TaskState:
        """GET one task. Raises RetryableError or PermanentError."""
        # The path is built from our own base URL, never from get_result.url, so the key
        # cannot be sent to another host or over plain http; the id must be one plain token.
        if not TASK_ID.fullmatch(task_id):
            raise PermanentError(f"not a task id: {self._redact.quote(task_id)}", status=404)
        try:
            response = observe.upstream_call(
                Endpoint.TASK, lambda: self._http.get(TASK_PATH.format(task_id=task_id))
            )
        except httpx.HTTPError as exc:
            raise RetryableError(self._describe(exc)) from None
        if response.status_code in RETRYABLE_STATUSES:
            raise RetryableError.from_response(response, secret=self._redact)
        if response.status_code != 200:
            raise PermanentError.from_response(response, secret=self._redact)
        body = self._json(response, RetryableError)
        try:
            data = _TaskData.model_validate(body.get("data"))
        except ValidationError:
            raise RetryableError("HTTP 200 with an unreadable task body", status=200) from None
        return _task_state(task_id, data, RateLimit.from_headers(response.headers), self._redact)

    def _json(self, response: httpx.Response, kind: type[UpstreamError]) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise kind(
                f"HTTP {response.status_code} with a non-JSON body", status=response.status_code
            ) from None
        if not isinstance(body, dict):
            raise kind(
                f"HTTP {response.status_code} with a non-object JSON body",
                status=response.status_code,
            )
        return body

    def _describe(self, exc: httpx.HTTPError) -> str:
        return self._redact.cut(f"{type(exc).__name__}: {exc}", MAX_ERROR_TEXT)


def _task_state(asked: str, data: _TaskData, rate_limit: RateLimit, mask: Redactor) -> TaskState:
    """The state a task body describes, with every upstream value checked and masked.

    Raises :class:`InvalidAnswerError` for a body about another task, and for a success whose
    images could not be stored as they are.
    """
    if data.task_id != asked:
        raise InvalidAnswerError(
            f"upstream answer: task_id {mask.quote(data.task_id)} is not the task asked for",
            status=200,
        )
    result = data.result or _Result()
    resources = _image_resources(result.resources, mask) if data.status == "success" else []
    request_id = result.metadata.get("request_id")
    if isinstance(request_id, str):
        request_id = mask(request_id)
    return TaskState(
        task_id=asked,
        status=data.status,
        rate_limit=rate_limit,
        duration_ms=_bounded_int(data.duration, 0, _INT32_MAX),
        resources=resources,
        billing_amount=_decimal(data.billing.amount if data.billing else None),
        result_expires_at=_timestamp_ms(data.result_expires_at),
        request_id=request_id
        if isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id)
        else None,
        error=_reason(data, mask),
    )


def _image_resources(resources: list[Resource], mask: Redactor) -> list[Resource]:
    """The image resources of a success, normalized; InvalidAnswerError names a bad field."""
    images: list[Resource] = []
    for index, resource in enumerate(resources):
        if resource.type != "image":
            continue
        where = f"result.resources.{index}"
        if len(images) == MAX_RESOURCES:
            raise InvalidAnswerError(
                f"upstream answer: result.resources has more than {MAX_RESOURCES} images",
                status=200,
            )
        fmt = resource.format.lower()
        if fmt not in IMAGE_FORMATS:
            raise InvalidAnswerError(
                f"upstream answer: {where}.format {mask.quote(resource.format)} "
                "is not an image format",
                status=200,
            )
        problem = _url_problem(resource.url)
        if problem is not None:
            raise InvalidAnswerError(
                f"upstream answer: {where}.url {mask.quote(resource.url)} {problem}",
                status=200,
            )
        for name in ("width", "height"):
            value = getattr(resource, name)
            if not 0 <= value <= MAX_DIMENSION:
                raise InvalidAnswerError(
                    f"upstream answer: {where}.{name} {value} is not in 0..{MAX_DIMENSION}",
                    status=200,
                )
        images.append(resource.model_copy(update={"format": fmt, "url": mask(resource.url)}))
    return images


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not an image URL we can store and fetch, or None."""
    if len(url) > MAX_URL_CHARS:
        return f"is longer than {MAX_URL_CHARS} characters"
    if _URL_FORBIDDEN.search(url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL"
    return None


def _reason(data: _TaskData, mask: Redactor) -> str | None:
    """A failed task's reason, masked, storable and cut to the column's limit."""
    for value in (data.error, data.error_message, data.message):
        if value is None or value == "":
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return mask.cut(text, MAX_ERROR_TEXT) or None
    return None


def redact(text: str, secret: str) -> str:
    """``text`` with every form of ``secret`` masked (see :class:`Redactor`).

    Builds a Redactor per call: code that masks often keeps one instead.
    """
    return Redactor(secret)(text)


def _envelope_message(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _decimal(value: Any) -> Decimal | None:
    """An amount ``jobs.billing_amount`` (Numeric(12, 4)) can hold, else None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and abs(amount) < _MAX_AMOUNT else None


def _bounded_int(value: Any, low: int, high: int) -> int | None:
    """``value`` if it is an integer in ``low..high``, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    number = int(value)
    return number if low <= number <= high else None


def _timestamp_ms(value: Any) -> datetime | None:
    """A time given in milliseconds since the epoch, if it is a plausible one."""
    millis = _bounded_int(value, 1, 253_402_300_799_000)  # up to 9999-12-31
    return datetime.fromtimestamp(millis / 1000, tz=UTC) if millis else None
