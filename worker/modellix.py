"""The Modellix upstream client: typed responses, typed errors, rate-limit headers.

Error tree (what a caller may do next)::

    UpstreamError                 base; never carries the API key
    +-- PermanentError            the upstream said no; retrying will not help (400, 401,
    |                             402, 403, 404, ...)
    +-- RetryableError            not accepted or not answered; safe to try again later
    |                             (429 on any call; 5xx, 408 and transport errors on a GET)
    +-- OutcomeUnknownError       a POST whose fate is unknown (5xx, 408, timeout or connection
                                  loss after sending, non-JSON body, no task_id): a second POST
                                  may create a second paid task

Every error has ``throttle`` set when the upstream asked everyone to back off (429, 503), and
``retry_after`` from ``Retry-After`` / ``X-RateLimit-Reset`` when it said for how long.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from api_schema import ErrorCode

from .config import SUBMIT_PATH, TASK_PATH

#: Statuses after which a GET may be repeated.
RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
#: Statuses after which a POST was definitely not accepted (Modellix's own CLI's list).
NOT_ACCEPTED_STATUSES: Final = frozenset({400, 401, 402, 403, 404, 405, 413, 415, 422, 429})
THROTTLE_STATUSES: Final = frozenset({429, 503})
#: What an upstream task id may look like: one path segment, no dot-segments.
TASK_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_PERMANENT_CODES: Final = {
    401: ErrorCode.UPSTREAM_AUTH,
    403: ErrorCode.UPSTREAM_AUTH,
    402: ErrorCode.UPSTREAM_PAYMENT,
    404: ErrorCode.UPSTREAM_NOT_FOUND,
}


class UpstreamError(Exception):
    """Something went wrong talking to the upstream."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def throttle(self) -> bool:
        """The upstream asked every caller of this team to slow down."""
        return self.status in THROTTLE_STATUSES

    @property
    def error_code(self) -> ErrorCode:
        """The job error code this failure ends a job with."""
        return _PERMANENT_CODES.get(self.status or 0, ErrorCode.UPSTREAM_REJECTED)

    @classmethod
    def from_response(cls, response: httpx.Response, *, secret: str = "") -> UpstreamError:
        """Build the error an HTTP error response stands for (the caller picks the class)."""
        text = redact(_envelope_message(response) or "", secret)[:500] or "(no message)"
        return cls(
            f"HTTP {response.status_code}: {text}",
            status=response.status_code,
            retry_after=RateLimit.from_headers(response.headers).wait_seconds(),
        )


class PermanentError(UpstreamError):
    """The upstream refused the request; the job ends with ``error_code``."""


class RetryableError(UpstreamError):
    """Not accepted or not answered; the same call may be made again later."""


class OutcomeUnknownError(UpstreamError):
    """A POST that may or may not have created a paid task."""


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
    """One output file of a finished task."""

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
    status: str | None = None
    amount: str | None = None


class _TaskData(_Lenient):
    status: str
    task_id: str
    model_id: str | None = None
    duration: int | None = None
    result: _Result | None = None
    billing: _Billing | None = None
    result_expires_at: int | None = None
    error: str | None = None
    error_message: str | None = None
    message: str | None = None


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
        self._secret = api_key.get_secret_value()
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
            response = self._http.post(SUBMIT_PATH, json=payload)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached the upstream: safe to try again.
            raise RetryableError(self._describe(exc)) from None
        except httpx.HTTPError as exc:
            raise OutcomeUnknownError(self._describe(exc)) from None
        if response.status_code in NOT_ACCEPTED_STATUSES:
            kind: type[UpstreamError] = (
                RetryableError if response.status_code == 429 else PermanentError
            )
            raise kind.from_response(response, secret=self._secret)
        if response.status_code != 200:
            raise OutcomeUnknownError.from_response(response, secret=self._secret)
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
            raise PermanentError(f"not a task id: {task_id[:80]!r}", status=404)
        try:
            response = self._http.get(TASK_PATH.format(task_id=task_id))
        except httpx.HTTPError as exc:
            raise RetryableError(self._describe(exc)) from None
        if response.status_code in RETRYABLE_STATUSES:
            raise RetryableError.from_response(response, secret=self._secret)
        if response.status_code != 200:
            raise PermanentError.from_response(response, secret=self._secret)
        body = self._json(response, RetryableError)
        try:
            data = _TaskData.model_validate(body.get("data"))
        except ValidationError:
            raise RetryableError("HTTP 200 with an unreadable task body", status=200) from None
        return _task_state(data, RateLimit.from_headers(response.headers))

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
        return redact(f"{type(exc).__name__}: {exc}", self._secret)


def _task_state(data: _TaskData, rate_limit: RateLimit) -> TaskState:
    result = data.result or _Result()
    expires = (
        datetime.fromtimestamp(data.result_expires_at / 1000, tz=UTC)
        if data.result_expires_at
        else None
    )
    request_id = result.metadata.get("request_id")
    return TaskState(
        task_id=data.task_id,
        status=data.status,
        rate_limit=rate_limit,
        duration_ms=data.duration,
        resources=[r for r in result.resources if r.type == "image"],
        billing_amount=_decimal(data.billing.amount if data.billing else None),
        result_expires_at=expires,
        request_id=request_id if isinstance(request_id, str) else None,
        error=data.error or data.error_message or data.message,
    )


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` masked."""
    return text.replace(secret, "***") if secret else text


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


def _decimal(value: str | None) -> Decimal | None:
    try:
        return Decimal(value) if value is not None else None
    except InvalidOperation:
        return None
