"""Unit tests of the Modellix upstream client (``worker/upstream/client.py``).

Every test drives :class:`ModellixClient` through an ``httpx.MockTransport`` (or respx):
no network, no sleeps.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import respx
from pydantic import SecretStr

from api_schema import ErrorCode
from worker.upstream import client as modellix
from worker.upstream.client import (
    MAX_ERROR_TEXT,
    InvalidAnswerError,
    ModellixClient,
    OutcomeUnknownError,
    PermanentError,
    RateLimit,
    Redactor,
    Resource,
    RetryableError,
    Submitted,
    TaskState,
    UpstreamError,
)

KEY = "mdlx-test-SECRET-abc123"
BASE = "https://api.modellix.test"
SUBMIT_URL = f"{BASE}/api/v1/minimax/minimax-image-01-live-i2i/async"
EVIL_HOST = "evil.example.test"
NOW = 1_700_000_000.0

PAYLOAD: dict[str, Any] = {
    "prompt": "a cat in a hat",
    "subject_reference_images": ["https://img.example.test/cat.png"],
    "aspect_ratio": "16:9",
    "n": 2,
    "seed": 42,
    "prompt_optimizer": False,
}

Handler = Callable[[httpx.Request], httpx.Response]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """A MockTransport handler that records requests and replays a fixed behaviour."""

    respond: Handler
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.respond(request)


def make_client(respond: Handler, base_url: str = BASE) -> tuple[ModellixClient, Recorder]:
    recorder = Recorder(respond)
    client = ModellixClient(base_url, SecretStr(KEY), transport=httpx.MockTransport(recorder))
    return client, recorder


def envelope_error(status: int, message: str, headers: dict[str, str] | None = None) -> Handler:
    def respond(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, json={"code": status, "message": message}, headers=headers or {}
        )

    return respond


def raw(status: int, content: bytes, headers: dict[str, str] | None = None) -> Handler:
    def respond(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers or {})

    return respond


def ok(data: Any, headers: dict[str, str] | None = None) -> Handler:
    def respond(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"code": 0, "message": "success", "data": data}, headers=headers or {}
        )

    return respond


def ok_escaped(data: Any) -> Handler:
    """Like ``ok``, with the body as ASCII JSON: lone surrogates travel as ``\\udXXX``."""
    body = json.dumps({"code": 0, "message": "success", "data": data}).encode()

    def respond(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    return respond


def raising(exc_type: type[httpx.TransportError], message: str = "boom") -> Handler:
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc_type(message, request=request)

    return respond


def assert_no_secret(exc: BaseException) -> None:
    """The key appears in no text an error can be rendered as."""
    assert KEY not in str(exc)
    assert KEY not in repr(exc)
    assert all(KEY not in str(arg) for arg in exc.args)
    if isinstance(exc, UpstreamError):
        assert KEY not in exc.message


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``worker.upstream.client`` sees a fixed wall clock (X-RateLimit-Reset is absolute)."""
    monkeypatch.setattr(modellix, "time", SimpleNamespace(time=lambda: NOW))


# --------------------------------------------------------------------------------------
# submit: success
# --------------------------------------------------------------------------------------


def submit_ok_response(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "code": 0,
            "message": "success",
            "data": {
                "status": "pending",
                "task_id": "task-def456",
                "model_id": "minimax-image-01-live-i2i",
                "get_result": {
                    "method": "GET",
                    "url": f"http://{EVIL_HOST}/api/v1/tasks/task-def456",
                },
            },
        },
        headers={
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": "97",
            "X-RateLimit-Reset": "1700000060",
        },
    )


def test_submit_success_sends_payload_with_bearer_and_parses_response() -> None:
    client, rec = make_client(submit_ok_response)

    result = client.submit(PAYLOAD)

    assert len(rec.requests) == 1
    request = rec.requests[0]
    assert request.method == "POST"
    assert str(request.url) == SUBMIT_URL
    assert request.url.host == "api.modellix.test"
    assert request.url.scheme == "https"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == PAYLOAD

    assert isinstance(result, Submitted)
    assert result.task_id == "task-def456"
    assert result.status == "pending"
    assert result.rate_limit == RateLimit(limit=100, remaining=97, reset=1700000060.0)
    assert result.rate_limit.wait_seconds(now=NOW) is None  # remaining > 0


def test_submit_uses_base_url_path_prefix_and_trailing_slash() -> None:
    client, rec = make_client(submit_ok_response, base_url="https://gw.example.test/modellix/")
    client.submit(PAYLOAD)
    assert str(rec.requests[0].url) == (
        "https://gw.example.test/modellix/api/v1/minimax/minimax-image-01-live-i2i/async"
    )


def test_submit_success_without_rate_limit_headers() -> None:
    client, _ = make_client(ok({"status": "pending", "task_id": "t-1"}))
    result = client.submit(PAYLOAD)
    assert result == Submitted(task_id="t-1", status="pending", rate_limit=RateLimit())


def test_submit_success_with_respx() -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        route = router.post(SUBMIT_URL).mock(
            return_value=httpx.Response(
                200, json={"code": 0, "message": "success", "data": {"task_id": "task-r"}}
            )
        )
        client = ModellixClient(BASE, SecretStr(KEY))
        result = client.submit(PAYLOAD)
        client.close()
    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content) == PAYLOAD
    assert result.task_id == "task-r"
    assert result.status == "pending"  # absent status defaults to pending


# --------------------------------------------------------------------------------------
# submit: error classification
# --------------------------------------------------------------------------------------

PERMANENT_SUBMIT = [
    pytest.param(
        400,
        "Invalid parameters: parameter 'prompt' is required",
        ErrorCode.UPSTREAM_REJECTED,
        id="400",
    ),
    pytest.param(401, "Authentication failed: invalid API key", ErrorCode.UPSTREAM_AUTH, id="401"),
    pytest.param(402, "Insufficient balance: top up", ErrorCode.UPSTREAM_PAYMENT, id="402"),
    pytest.param(403, "Forbidden: team disabled", ErrorCode.UPSTREAM_AUTH, id="403"),
    pytest.param(404, "Resource not found: model", ErrorCode.UPSTREAM_NOT_FOUND, id="404"),
    pytest.param(405, "Method not allowed: GET", ErrorCode.UPSTREAM_REJECTED, id="405"),
    pytest.param(413, "Payload too large: 12 MB", ErrorCode.UPSTREAM_REJECTED, id="413"),
    pytest.param(415, "Unsupported media type: text", ErrorCode.UPSTREAM_REJECTED, id="415"),
    pytest.param(422, "Unprocessable: bad image", ErrorCode.UPSTREAM_REJECTED, id="422"),
]


@pytest.mark.parametrize(("status", "message", "code"), PERMANENT_SUBMIT)
def test_submit_not_accepted_is_permanent(status: int, message: str, code: ErrorCode) -> None:
    client, rec = make_client(envelope_error(status, message))

    with pytest.raises(PermanentError) as info:
        client.submit(PAYLOAD)

    exc = info.value
    assert type(exc) is PermanentError
    assert exc.status == status
    assert exc.error_code == code
    assert message in str(exc)
    assert str(status) in str(exc)
    assert exc.throttle is False
    assert exc.retry_after is None
    assert len(rec.requests) == 1  # a paid call is never repeated by the client
    assert_no_secret(exc)


def test_submit_429_is_retryable_throttle_with_retry_after() -> None:
    client, rec = make_client(
        envelope_error(
            429,
            "Concurrent limit exceeded: 3 tasks running",
            headers={
                "Retry-After": "7",
                "X-RateLimit-Limit": "100",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(NOW) + 30),
            },
        )
    )

    with pytest.raises(RetryableError) as info:
        client.submit(PAYLOAD)

    exc = info.value
    assert type(exc) is RetryableError
    assert exc.status == 429
    assert exc.throttle is True
    assert exc.retry_after == 7.0  # Retry-After wins over X-RateLimit-Reset
    assert "Concurrent limit exceeded: 3 tasks running" in str(exc)
    assert len(rec.requests) == 1
    assert_no_secret(exc)


def test_submit_429_falls_back_to_rate_limit_reset() -> None:
    client, _ = make_client(
        envelope_error(
            429,
            "Rate limit exceeded: 100 requests per minute",
            headers={
                "X-RateLimit-Limit": "100",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(NOW) + 42),
            },
        )
    )
    with pytest.raises(RetryableError) as info:
        client.submit(PAYLOAD)
    assert info.value.throttle is True
    assert info.value.retry_after == pytest.approx(42.0)
    assert_no_secret(info.value)


def test_submit_429_without_any_hint_has_no_retry_after() -> None:
    client, _ = make_client(envelope_error(429, "Rate limit exceeded: slow down"))
    with pytest.raises(RetryableError) as info:
        client.submit(PAYLOAD)
    assert info.value.throttle is True
    assert info.value.retry_after is None


def test_submit_429_reset_ignored_while_remaining_positive() -> None:
    client, _ = make_client(
        envelope_error(
            429,
            "Concurrent limit exceeded: 3",
            headers={"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": str(int(NOW) + 42)},
        )
    )
    with pytest.raises(RetryableError) as info:
        client.submit(PAYLOAD)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("status", "throttle"),
    [
        pytest.param(500, False, id="500"),
        pytest.param(502, False, id="502"),
        pytest.param(503, True, id="503"),
        pytest.param(504, False, id="504"),
        pytest.param(408, False, id="408"),
    ],
)
def test_submit_5xx_and_408_outcome_unknown(status: int, throttle: bool) -> None:
    client, rec = make_client(
        envelope_error(status, "Service unavailable: breaker open", headers={"Retry-After": "3"})
    )

    with pytest.raises(OutcomeUnknownError) as info:
        client.submit(PAYLOAD)

    exc = info.value
    assert type(exc) is OutcomeUnknownError
    assert exc.status == status
    assert exc.throttle is throttle
    assert exc.retry_after == 3.0
    assert "Service unavailable: breaker open" in str(exc)
    assert len(rec.requests) == 1
    assert_no_secret(exc)


def test_submit_500_with_non_json_body_is_outcome_unknown() -> None:
    client, _ = make_client(raw(500, b"<html>oops</html>"))
    with pytest.raises(OutcomeUnknownError) as info:
        client.submit(PAYLOAD)
    assert info.value.status == 500
    assert "HTTP 500" in str(info.value)


@pytest.mark.parametrize(
    "exc_type",
    [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteTimeout],
    ids=lambda t: t.__name__,
)
def test_submit_failure_after_sending_is_outcome_unknown(
    exc_type: type[httpx.TransportError],
) -> None:
    client, rec = make_client(raising(exc_type, "peer went away"))
    with pytest.raises(OutcomeUnknownError) as info:
        client.submit(PAYLOAD)
    exc = info.value
    assert type(exc) is OutcomeUnknownError
    assert exc.status is None
    assert exc.throttle is False
    assert exc_type.__name__ in str(exc)
    assert len(rec.requests) == 1
    assert_no_secret(exc)


@pytest.mark.parametrize(
    "exc_type",
    [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout],
    ids=lambda t: t.__name__,
)
def test_submit_connect_failure_is_retryable(exc_type: type[httpx.TransportError]) -> None:
    client, _ = make_client(raising(exc_type, "connection refused"))
    with pytest.raises(RetryableError) as info:
        client.submit(PAYLOAD)
    exc = info.value
    assert type(exc) is RetryableError
    assert exc.status is None
    assert exc_type.__name__ in str(exc)
    assert_no_secret(exc)


@pytest.mark.parametrize(
    "respond",
    [
        pytest.param(raw(200, b"not json at all"), id="non-json"),
        pytest.param(raw(200, b""), id="empty-body"),
        pytest.param(raw(200, b"[1, 2]", {"Content-Type": "application/json"}), id="json-array"),
        pytest.param(raw(200, b'"task-1"', {"Content-Type": "application/json"}), id="json-str"),
        pytest.param(ok({"status": "pending"}), id="no-task-id"),
        pytest.param(ok({"status": "pending", "task_id": ""}), id="empty-task-id"),
        pytest.param(ok({"status": "pending", "task_id": 123}), id="int-task-id"),
        pytest.param(ok(None), id="data-null"),
        pytest.param(ok(["task-1"]), id="data-list"),
        pytest.param(
            lambda _: httpx.Response(200, json={"code": 0, "task_id": "task-1"}),
            id="task-id-outside-data",
        ),
    ],
)
def test_submit_200_without_readable_task_id_is_outcome_unknown(respond: Handler) -> None:
    client, _ = make_client(respond)
    with pytest.raises(OutcomeUnknownError) as info:
        client.submit(PAYLOAD)
    assert info.value.status == 200
    assert_no_secret(info.value)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        pytest.param(201, OutcomeUnknownError, id="201"),
        pytest.param(202, OutcomeUnknownError, id="202"),
        pytest.param(302, OutcomeUnknownError, id="302"),
    ],
)
def test_submit_other_statuses_outcome_unknown(status: int, kind: type[UpstreamError]) -> None:
    # Anything other than 200 that is not in the CLI's "not accepted" list may have been
    # accepted: treat it as unknown, never as success and never as a safe retry.
    def respond(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            json={"code": 0, "data": {"task_id": "t-1"}},
            headers={"Location": f"https://{EVIL_HOST}/x"},
        )

    client, rec = make_client(respond)
    with pytest.raises(kind):
        client.submit(PAYLOAD)
    assert [r.url.host for r in rec.requests] == ["api.modellix.test"]


# --------------------------------------------------------------------------------------
# get_task
# --------------------------------------------------------------------------------------

SUCCESS_DATA: dict[str, Any] = {
    "status": "success",
    "task_id": "task-abc123",
    "model_id": "minimax-image-01-live-i2i",
    "duration": 3500,
    "result": {
        "resources": [
            {
                "url": "https://file.modellix.ai/aigc/image/abc.png",
                "type": "image",
                "width": 1024,
                "height": 1024,
                "format": "png",
                "role": "primary",
            },
            {
                "url": "https://file.modellix.ai/aigc/image/def.jpeg",
                "type": "image",
                "width": 1280,
                "height": 720,
                "format": "jpeg",
            },
        ],
        "metadata": {"image_count": 2, "request_id": "req-123456"},
        "extensions": {"submit_time": "2024-01-01T10:00:00Z", "end_time": "2024-01-01T10:00:03Z"},
    },
    "billing": {"status": "succeeded", "amount": "0.0350"},
    "result_expires_at": 1786000000000,
}


def test_get_task_requests_own_base_url_with_bearer() -> None:
    client, rec = make_client(ok({"status": "pending", "task_id": "task-1"}))
    client.get_task("task-1")
    assert len(rec.requests) == 1
    request = rec.requests[0]
    assert request.method == "GET"
    assert str(request.url) == f"{BASE}/api/v1/tasks/task-1"
    assert request.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    "task_id",
    [
        pytest.param("../../admin", id="dotdot-slash"),
        pytest.param("a/b", id="slash"),
        pytest.param("x?y=1#z", id="query-fragment"),
        pytest.param(f"https://{EVIL_HOST}/steal", id="absolute-url"),
        pytest.param("%2e%2e", id="pre-encoded"),
        pytest.param("task def", id="space"),
        pytest.param("..", id="dotdot"),
        pytest.param(".", id="dot"),
        pytest.param("", id="empty"),
        pytest.param("t" * 129, id="too-long"),
    ],
)
def test_get_task_refuses_ids_that_are_not_one_plain_token(task_id: str) -> None:
    # An id that could leave /api/v1/tasks/ (or smuggle a query) is refused before any request.
    client, rec = make_client(ok({"status": "pending", "task_id": task_id}))
    with pytest.raises(PermanentError) as info:
        client.get_task(task_id)
    assert info.value.error_code is ErrorCode.UPSTREAM_NOT_FOUND
    assert rec.requests == []


@pytest.mark.parametrize("task_id", ["..", "a/b", "", "x y"])
def test_submit_answer_with_unusable_task_id_is_outcome_unknown(task_id: str) -> None:
    client, _ = make_client(ok({"status": "pending", "task_id": task_id}))
    with pytest.raises(OutcomeUnknownError):
        client.submit(PAYLOAD)


def test_get_task_never_follows_get_result_url_to_another_host() -> None:
    # The submit response names a get_result.url on another host over plain http; the
    # task query must still go to our own base URL.
    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return submit_ok_response(request)
        return ok({"status": "processing", "task_id": "task-def456"})(request)

    client, rec = make_client(respond)
    submitted = client.submit(PAYLOAD)
    state = client.get_task(submitted.task_id)
    seen = rec.requests
    assert state.status == "processing"
    assert [(r.method, r.url.host, r.url.scheme) for r in seen] == [
        ("POST", "api.modellix.test", "https"),
        ("GET", "api.modellix.test", "https"),
    ]


@pytest.mark.parametrize("status", ["pending", "processing"])
def test_get_task_in_progress(status: str) -> None:
    client, _ = make_client(
        ok(
            {"status": status, "task_id": "task-1", "model_id": "m"},
            headers={"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "50"},
        )
    )
    state = client.get_task("task-1")
    assert isinstance(state, TaskState)
    assert state.task_id == "task-1"
    assert state.status == status
    assert state.finished is False
    assert state.resources == []
    assert state.billing_amount is None
    assert state.result_expires_at is None
    assert state.duration_ms is None
    assert state.request_id is None
    assert state.error is None
    assert state.rate_limit == RateLimit(limit=100, remaining=50)


def test_get_task_success_parses_everything() -> None:
    client, _ = make_client(
        ok(
            SUCCESS_DATA,
            headers={
                "X-RateLimit-Limit": "1000",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(NOW) + 12),
            },
        )
    )
    state = client.get_task("task-abc123")

    assert state.status == "success"
    assert state.finished is True
    assert state.task_id == "task-abc123"
    assert state.duration_ms == 3500
    assert state.resources == [
        Resource(
            url="https://file.modellix.ai/aigc/image/abc.png",
            type="image",
            width=1024,
            height=1024,
            format="png",
            role="primary",
        ),
        Resource(
            url="https://file.modellix.ai/aigc/image/def.jpeg",
            type="image",
            width=1280,
            height=720,
            format="jpeg",
        ),
    ]
    assert [(r.url, r.width, r.height, r.format) for r in state.resources] == [
        ("https://file.modellix.ai/aigc/image/abc.png", 1024, 1024, "png"),
        ("https://file.modellix.ai/aigc/image/def.jpeg", 1280, 720, "jpeg"),
    ]
    assert isinstance(state.billing_amount, Decimal)
    assert state.billing_amount == Decimal("0.0350")
    assert str(state.billing_amount) == "0.0350"  # exact, not a float
    assert state.result_expires_at == datetime(2026, 8, 6, 7, 6, 40, tzinfo=UTC)
    assert state.result_expires_at is not None
    assert state.result_expires_at.utcoffset() is not None
    assert state.result_expires_at.timestamp() == 1786000000.0
    assert state.request_id == "req-123456"
    assert state.error is None
    assert state.rate_limit.limit == 1000
    assert state.rate_limit.wait_seconds() == pytest.approx(12.0)


def test_get_task_success_keeps_only_image_resources_and_tolerates_extras() -> None:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data["result"]["resources"].append({"url": "https://file.example.test/x.json", "type": "log"})
    data["result"]["metadata"]["request_id"] = 12345  # not a string: dropped
    data["unexpected"] = {"ignored": True}
    client, _ = make_client(ok(data))
    state = client.get_task("task-abc123")
    assert [r.url for r in state.resources] == [
        "https://file.modellix.ai/aigc/image/abc.png",
        "https://file.modellix.ai/aigc/image/def.jpeg",
    ]
    assert state.request_id is None


def test_get_task_success_with_unparseable_billing_amount() -> None:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data["billing"]["amount"] = "n/a"
    client, _ = make_client(ok(data))
    assert client.get_task("task-abc123").billing_amount is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({"error": "content policy"}, "content policy", id="error"),
        pytest.param({"error_message": "nsfw input"}, "nsfw input", id="error_message"),
        pytest.param({"message": "model crashed"}, "model crashed", id="message"),
        pytest.param(
            {"error": "first", "error_message": "second", "message": "third"},
            "first",
            id="error-wins",
        ),
        pytest.param(
            {"error_message": "second", "message": "third"}, "second", id="error_message-wins"
        ),
        pytest.param({}, None, id="no-reason"),
    ],
)
def test_get_task_failed_reads_error(extra: dict[str, str], expected: str | None) -> None:
    client, _ = make_client(ok({"status": "failed", "task_id": "task-9", "model_id": "m", **extra}))
    state = client.get_task("task-9")
    assert state.status == "failed"
    assert state.finished is True
    assert state.error == expected
    assert state.resources == []
    assert state.billing_amount is None


@pytest.mark.parametrize(
    ("status", "throttle"),
    [
        pytest.param(408, False, id="408"),
        pytest.param(429, True, id="429"),
        pytest.param(500, False, id="500"),
        pytest.param(502, False, id="502"),
        pytest.param(503, True, id="503"),
        pytest.param(504, False, id="504"),
    ],
)
def test_get_task_retryable_statuses(status: int, throttle: bool) -> None:
    client, rec = make_client(
        envelope_error(status, "Rate limit exceeded: try later", headers={"Retry-After": "4"})
    )
    with pytest.raises(RetryableError) as info:
        client.get_task("task-1")
    exc = info.value
    assert type(exc) is RetryableError
    assert exc.status == status
    assert exc.throttle is throttle
    assert exc.retry_after == 4.0
    assert "Rate limit exceeded: try later" in str(exc)
    assert len(rec.requests) == 1
    assert_no_secret(exc)


@pytest.mark.parametrize(
    "exc_type",
    [
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.RemoteProtocolError,
        httpx.ReadError,
        httpx.PoolTimeout,
    ],
    ids=lambda t: t.__name__,
)
def test_get_task_transport_errors_are_retryable(exc_type: type[httpx.TransportError]) -> None:
    client, _ = make_client(raising(exc_type))
    with pytest.raises(RetryableError) as info:
        client.get_task("task-1")
    assert type(info.value) is RetryableError
    assert info.value.status is None
    assert exc_type.__name__ in str(info.value)
    assert_no_secret(info.value)


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        pytest.param(401, "Authentication failed: bad key", ErrorCode.UPSTREAM_AUTH, id="401"),
        pytest.param(403, "Forbidden: other team", ErrorCode.UPSTREAM_AUTH, id="403"),
        pytest.param(
            404, "Resource not found: task expired", ErrorCode.UPSTREAM_NOT_FOUND, id="404"
        ),
        pytest.param(400, "Invalid parameters: bad task id", ErrorCode.UPSTREAM_REJECTED, id="400"),
    ],
)
def test_get_task_permanent_errors(status: int, message: str, code: ErrorCode) -> None:
    client, _ = make_client(envelope_error(status, message))
    with pytest.raises(PermanentError) as info:
        client.get_task("task-1")
    exc = info.value
    assert exc.status == status
    assert exc.error_code == code
    assert message in str(exc)
    assert exc.throttle is False
    assert_no_secret(exc)


@pytest.mark.parametrize(
    "respond",
    [
        pytest.param(raw(200, b"<html>gateway</html>"), id="non-json"),
        pytest.param(raw(200, b"[]", {"Content-Type": "application/json"}), id="json-array"),
        pytest.param(ok(None), id="data-null"),
        pytest.param(ok({"task_id": "task-1"}), id="no-status"),
        pytest.param(ok({"status": "success"}), id="no-task-id"),
        pytest.param(
            ok({"status": "success", "task_id": "t", "result": {"resources": [{"w": 1}]}}),
            id="resource-without-url",
        ),
    ],
)
def test_get_task_unreadable_200_is_retryable(respond: Handler) -> None:
    client, _ = make_client(respond)
    with pytest.raises(RetryableError) as info:
        client.get_task("task-1")
    assert info.value.status == 200
    assert_no_secret(info.value)


def test_get_task_redirect_to_other_host_is_not_followed() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.host == EVIL_HOST:
            return ok({"status": "success", "task_id": "task-1"})(request)
        return httpx.Response(
            302,
            headers={"Location": f"https://{EVIL_HOST}/api/v1/tasks/task-1"},
            json={"code": 302, "message": "Found: elsewhere"},
        )

    client, rec = make_client(respond)
    with pytest.raises(UpstreamError) as info:
        client.get_task("task-1")
    assert [r.url.host for r in rec.requests] == ["api.modellix.test"]
    assert all(r.url.host != EVIL_HOST for r in rec.requests)
    assert info.value.status == 302
    assert_no_secret(info.value)


def test_get_task_redirect_with_respx_sends_nothing_to_other_host() -> None:
    with respx.mock(assert_all_called=False) as router:
        ours = router.get(f"{BASE}/api/v1/tasks/task-1").mock(
            return_value=httpx.Response(307, headers={"Location": f"https://{EVIL_HOST}/collect"})
        )
        theirs = router.route(host=EVIL_HOST).mock(return_value=httpx.Response(200, json={}))
        client = ModellixClient(BASE, SecretStr(KEY))
        with pytest.raises(UpstreamError):
            client.get_task("task-1")
        client.close()
    assert ours.call_count == 1
    assert theirs.call_count == 0


# --------------------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------------------


def echoing(status: int) -> Handler:
    return envelope_error(
        status,
        f"Authentication failed: key {KEY} is not valid (you sent Bearer {KEY})",
        headers={"Retry-After": "1"},
    )


@pytest.mark.parametrize(
    "status", [400, 401, 402, 403, 404, 422, 429, 500, 502, 503, 504, 408], ids=str
)
def test_submit_redacts_key_echoed_by_upstream(status: int) -> None:
    client, _ = make_client(echoing(status))
    with pytest.raises(UpstreamError) as info:
        client.submit(PAYLOAD)
    exc = info.value
    assert_no_secret(exc)
    assert "key *** is not valid (you sent Bearer ***)" in str(exc)
    assert "***" in repr(exc)


@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 500, 502, 503, 504], ids=str)
def test_get_task_redacts_key_echoed_by_upstream(status: int) -> None:
    client, _ = make_client(echoing(status))
    with pytest.raises(UpstreamError) as info:
        client.get_task("task-1")
    exc = info.value
    assert_no_secret(exc)
    assert "key *** is not valid (you sent Bearer ***)" in str(exc)


@pytest.mark.parametrize(
    "exc_type",
    [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError],
    ids=lambda t: t.__name__,
)
@pytest.mark.parametrize("call", ["submit", "get_task"])
def test_transport_error_text_echoing_key_is_redacted(
    exc_type: type[httpx.TransportError], call: str
) -> None:
    client, _ = make_client(raising(exc_type, f"proxy said: Authorization: Bearer {KEY}"))
    action: Callable[[], object] = (
        (lambda: client.submit(PAYLOAD)) if call == "submit" else (lambda: client.get_task("t"))
    )
    with pytest.raises(UpstreamError) as info:
        action()
    assert_no_secret(info.value)
    assert "Bearer ***" in str(info.value)
    # the original httpx exception (whose request carries the header) is not chained
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


@pytest.mark.parametrize(
    "respond",
    [
        pytest.param(raw(200, b"not json"), id="submit-non-json"),
        pytest.param(ok({"status": "pending"}), id="submit-no-task-id"),
    ],
)
def test_submit_body_errors_carry_no_secret(respond: Handler) -> None:
    client, _ = make_client(respond)
    with pytest.raises(OutcomeUnknownError) as info:
        client.submit(PAYLOAD)
    assert_no_secret(info.value)


def test_key_straddling_message_truncation_leaks_no_prefix() -> None:
    message = "Authentication failed: " + "x" * (490 - len("Authentication failed: ")) + KEY
    client, _ = make_client(envelope_error(401, message))
    with pytest.raises(PermanentError) as info:
        client.submit(PAYLOAD)
    assert_no_secret(info.value)
    assert KEY[:10] not in str(info.value)  # "mdlx-test-"


def test_client_repr_and_attributes_do_not_show_key() -> None:
    client, _ = make_client(submit_ok_response)
    assert KEY not in repr(client)
    assert KEY not in str(client)
    assert KEY not in repr(client._http)
    assert KEY not in repr(client._http.auth)
    client.close()


def test_key_only_sent_as_bearer_header_to_base_host() -> None:
    client, rec = make_client(submit_ok_response)
    client.submit(PAYLOAD)
    client.get_task("task-def456")
    for request in rec.requests:
        assert request.url.host == "api.modellix.test"
        assert KEY not in str(request.url)
        assert KEY.encode() not in request.content
        leaking = [k for k, v in request.headers.items() if KEY in v and k != "authorization"]
        assert leaking == []


# --------------------------------------------------------------------------------------
# RateLimit
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_limit", "now", "expected"),
    [
        pytest.param(RateLimit(), 100.0, None, id="nothing"),
        pytest.param(RateLimit(retry_after=5), 100.0, 5.0, id="retry-after"),
        pytest.param(RateLimit(retry_after=0), 100.0, 0.0, id="retry-after-zero"),
        pytest.param(RateLimit(retry_after=-3), 100.0, 0.0, id="retry-after-negative"),
        pytest.param(RateLimit(retry_after=2.5), 100.0, 2.5, id="retry-after-fraction"),
        pytest.param(
            RateLimit(retry_after=5, reset=160, remaining=0), 100.0, 5.0, id="retry-after-wins"
        ),
        pytest.param(RateLimit(reset=160, remaining=0), 100.0, 60.0, id="reset"),
        pytest.param(RateLimit(reset=100.5, remaining=0), 100.0, 0.5, id="reset-fraction"),
        pytest.param(RateLimit(reset=100, remaining=0), 100.0, 0.0, id="reset-now"),
        pytest.param(RateLimit(reset=40, remaining=0), 100.0, 0.0, id="reset-past"),
        pytest.param(RateLimit(reset=160, remaining=1), 100.0, None, id="reset-remaining"),
        pytest.param(RateLimit(reset=160), 100.0, None, id="reset-remaining-unknown"),
        pytest.param(RateLimit(limit=100, remaining=0), 100.0, None, id="no-reset"),
    ],
)
def test_rate_limit_wait_seconds(rate_limit: RateLimit, now: float, expected: float | None) -> None:
    result = rate_limit.wait_seconds(now=now)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_rate_limit_wait_seconds_defaults_to_wall_clock() -> None:
    # the autouse fixture pins worker.upstream.client's clock at NOW
    assert RateLimit(reset=NOW + 9, remaining=0).wait_seconds() == pytest.approx(9.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, RateLimit(), id="none"),
        pytest.param(
            {
                "X-RateLimit-Limit": "100",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": "1700000060",
                "Retry-After": "12",
            },
            RateLimit(limit=100, remaining=0, reset=1700000060.0, retry_after=12.0),
            id="all",
        ),
        pytest.param(
            {"x-ratelimit-limit": "1000", "retry-after": "0.5"},
            RateLimit(limit=1000, retry_after=0.5),
            id="lowercase",
        ),
        pytest.param(
            {
                "X-RateLimit-Limit": "lots",
                "X-RateLimit-Remaining": "1.5",
                "X-RateLimit-Reset": "soon",
                "Retry-After": "",
            },
            RateLimit(),
            id="malformed",
        ),
    ],
)
def test_rate_limit_from_headers(headers: dict[str, str], expected: RateLimit) -> None:
    assert RateLimit.from_headers(httpx.Headers(headers)) == expected


def test_close_closes_the_pool() -> None:
    client, _ = make_client(submit_ok_response)
    client.close()
    with pytest.raises((RuntimeError, UpstreamError)):
        client.submit(PAYLOAD)


# --------------------------------------------------------------------------------------
# Redactor: every form of the key
# --------------------------------------------------------------------------------------

#: A key whose percent-encoding differs from the key itself.
ODD_KEY = "mdlx/Odd+Key=42 ~x?&#"


def b64_stable(blob: bytes, shift: int) -> str:
    """The base64 characters of ``blob`` placed ``shift`` bytes into a longer blob that do not
    depend on the neighbouring bytes (what tests/fault/test_secrets.py searches for)."""
    encoded = base64.b64encode(b"\0" * shift + blob + b"\0\0").decode()
    return encoded[-(-8 * shift // 6) : 8 * (shift + len(blob)) // 6]


def key_runs(text: str, secret: str = KEY) -> list[str]:
    """Every 8-character piece of the key (any case) still in ``text``."""
    low = text.lower()
    return [secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8].lower() in low]


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(KEY, id="plain"),
        pytest.param(KEY.upper(), id="upper"),
        pytest.param(KEY.lower(), id="lower"),
        pytest.param(KEY.swapcase(), id="swapcase"),
    ],
)
def test_redactor_masks_the_key_in_any_case(form: str) -> None:
    assert Redactor(KEY)(f"key={form};") == "key=***;"


def test_redactor_masks_8_character_pieces_but_not_7() -> None:
    mask = Redactor(KEY)
    for start in range(len(KEY) - 7):
        assert mask(f"<{KEY[start : start + 8]}>") == "<***>"
    for start in range(len(KEY) - 6):
        piece = KEY[start : start + 7]
        assert mask(f"<{piece}>") == f"<{piece}>"


def test_redactor_masks_the_prefix_left_by_a_cut_and_merges_runs() -> None:
    mask = Redactor(KEY)
    assert mask(f"a {KEY[:12]}") == "a ***"
    assert mask(f"{KEY}{KEY}") == "***"  # adjacent: one mask
    assert mask(f"{KEY[:12]}{KEY[4:]}") == "***"  # overlapping
    assert mask(f"{KEY} | {KEY}") == "*** | ***"


@pytest.mark.parametrize("shift", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("prefix", [b"", b"Bearer ", b":", b"ops:", b"Authorization: Bearer "])
@pytest.mark.parametrize("alphabet", ["standard", "urlsafe"])
def test_redactor_masks_base64_of_the_key_at_every_offset(
    shift: int, prefix: bytes, alphabet: str
) -> None:
    blob = bytes(range(7, 7 + shift)) + prefix + KEY.encode() + b"\xfe tail"
    encode = base64.b64encode if alphabet == "standard" else base64.urlsafe_b64encode
    encoded = encode(blob).decode()
    out = Redactor(KEY)(f"body={encoded}&x=1")
    assert "***" in out
    assert out.startswith("body=")
    assert out.endswith("&x=1")
    for offset in range(3):
        stable = b64_stable(KEY.encode(), offset)
        forms = {stable, stable.replace("+", "-").replace("/", "_")}
        for form in forms:
            assert not any(form[i : i + 8] in out for i in range(len(form) - 7)), (offset, out)


def test_redactor_masks_base64_of_bearer_and_basic_auth_headers() -> None:
    mask = Redactor(KEY)
    bearer = base64.b64encode(f"Bearer {KEY}".encode()).decode()
    basic = base64.b64encode(f":{KEY}".encode()).decode()
    out = mask(f"h1={bearer} h2={basic}")
    assert bearer not in out
    assert basic not in out
    assert out.count("***") == 2
    # the encoded 'Bearer' alone carries nothing of the key and is left alone
    assert mask("QmVhcmVy") == "QmVhcmVy"


def test_redactor_masks_the_whole_standalone_base64_of_the_key() -> None:
    encoded = base64.b64encode(KEY.encode()).decode()
    assert Redactor(KEY)(f"[{encoded}]") == "[***=]"  # the padding carries nothing


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(quote(ODD_KEY, safe=""), id="quote"),
        pytest.param(quote(ODD_KEY, safe="").lower(), id="quote-lower"),
        pytest.param("".join(f"%{b:02X}" for b in ODD_KEY.encode()), id="full-upper"),
        pytest.param("".join(f"%{b:02x}" for b in ODD_KEY.encode()), id="full-lower"),
        pytest.param(ODD_KEY, id="plain"),
    ],
)
def test_redactor_masks_percent_encodings(form: str) -> None:
    assert Redactor(ODD_KEY)(f"url?k={form}&n=1") == "url?k=***&n=1"


def test_redactor_short_key_masks_exact_occurrences_only() -> None:
    mask = Redactor("k3Y")
    assert mask("a k3y b K3Y c k3") == "a *** b *** c k3"


def test_redactor_empty_key_and_short_text() -> None:
    assert Redactor("")("anything at all") == "anything at all"
    assert Redactor(KEY)("") == ""
    assert Redactor(KEY)("mdlx") == "mdlx"


def test_redactor_leaves_unrelated_text_alone_and_hides_itself() -> None:
    mask = Redactor(KEY)
    text = "Authentication failed: invalid API key (mdlx-prod-xyz) at 2024-01-01T00:00:00Z"
    assert mask(text) == text
    assert KEY not in repr(mask)
    assert KEY not in str(mask)


def test_redactor_keeps_indices_with_length_changing_lowercase() -> None:
    # 'İ'.lower() is two characters: the masked range must still line up
    assert Redactor(KEY)(f"İİ {KEY} İ") == "İİ *** İ"


def test_redactor_cut_masks_huge_texts_and_makes_them_storable() -> None:
    mask = Redactor(KEY)
    huge = "x" * 65_530 + KEY + "y" * 100
    out = mask.cut(huge, 100_000)
    assert key_runs(out) == []
    assert KEY[:7] not in out
    assert mask.cut("a\x00b\ud800c", 10) == "a\ufffdb\ufffdc"
    assert mask.cut(f"{KEY} and more", 6) == "*** an"


def test_module_level_redact_is_kept() -> None:
    assert modellix.redact(f"Bearer {KEY.upper()}", KEY) == "Bearer ***"
    assert modellix.redact("nothing", "") == "nothing"


def test_error_envelope_with_encoded_key_is_masked() -> None:
    encoded = base64.b64encode(f"Bearer {KEY}".encode()).decode()
    client, _ = make_client(envelope_error(401, f"bad header {encoded} / {KEY.lower()}"))
    with pytest.raises(PermanentError) as info:
        client.submit(PAYLOAD)
    assert_no_secret(info.value)
    assert key_runs(str(info.value)) == []
    assert encoded not in str(info.value)


def test_transport_error_with_percent_encoded_key_is_masked() -> None:
    encoded = "".join(f"%{b:02x}" for b in KEY.encode())
    client, _ = make_client(raising(httpx.ConnectError, f"proxy: GET /?k={encoded}"))
    with pytest.raises(RetryableError) as info:
        client.get_task("task-1")
    assert encoded not in str(info.value)
    assert "?k=***" in str(info.value)


# --------------------------------------------------------------------------------------
# get_task: upstream values checked and masked before they are stored
# --------------------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("field_name", ["error", "error_message", "message"])
@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(KEY, id="plain"),
        pytest.param(KEY.upper(), id="upper"),
        pytest.param(b64(f"Bearer {KEY}"), id="b64-bearer"),
        pytest.param(b64(f"x{KEY}"), id="b64-offset-1"),
    ],
)
def test_failed_task_reason_carrying_the_key_is_masked(field_name: str, echo: str) -> None:
    reason = f"upstream worker crashed; request had Authorization: {echo} (retry later)"
    client, _ = make_client(ok({"status": "failed", "task_id": "task-9", field_name: reason}))
    state = client.get_task("task-9")
    assert state.status == "failed"
    assert state.error is not None
    assert "***" in state.error
    assert echo not in state.error
    assert key_runs(state.error) == []
    assert state.error.startswith("upstream worker crashed; request had Authorization: ")
    assert state.error.endswith(" (retry later)")


def test_failed_task_reason_is_cut_and_storable() -> None:
    reason = "bad\x00input \ud800 " + "z" * 5000 + KEY
    client, _ = make_client(ok_escaped({"status": "failed", "task_id": "task-9", "error": reason}))
    error = client.get_task("task-9").error
    assert error is not None
    assert len(error) == MAX_ERROR_TEXT
    assert error.startswith("bad\ufffdinput \ufffd z")
    assert "\x00" not in error


def test_failed_task_reason_that_is_not_a_string_is_kept_as_json() -> None:
    data = {"status": "failed", "task_id": "task-9", "error": {"code": 7, "why": KEY}}
    client, _ = make_client(ok(data))
    assert client.get_task("task-9").error == '{"code": 7, "why": "***"}'


def success_with(**resource: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data["result"]["resources"][1].update(resource)
    return data


@pytest.mark.parametrize(
    ("resource", "field_name", "detail"),
    [
        pytest.param({"format": "exe"}, "format", "'exe' is not an image format", id="exe"),
        pytest.param({"format": "../png"}, "format", "is not an image format", id="path"),
        pytest.param({"format": "png" * 10}, "format", "is not an image format", id="long"),
        pytest.param({"format": ""}, "format", "'' is not an image format", id="empty"),
        pytest.param({"format": "svg"}, "format", "is not an image format", id="svg"),
        pytest.param({"url": "ftp://file.example.test/a.png"}, "url", "http(s)", id="ftp"),
        pytest.param({"url": "javascript:alert(1)"}, "url", "http(s)", id="javascript"),
        pytest.param({"url": "file:///etc/passwd"}, "url", "http(s)", id="file"),
        pytest.param({"url": "data:image/png;base64,AAAA"}, "url", "http(s)", id="data"),
        pytest.param({"url": "/relative/a.png"}, "url", "http(s)", id="relative"),
        pytest.param({"url": "https:///a.png"}, "url", "http(s)", id="no-host"),
        pytest.param({"url": "https://a.test/a b.png"}, "url", "whitespace", id="space"),
        pytest.param({"url": "https://a.test/a\n.png"}, "url", "whitespace", id="newline"),
        pytest.param({"url": "https://a.test/\x00.png"}, "url", "control", id="nul"),
        pytest.param({"url": "https://a.test/\ud800.png"}, "url", "control", id="surrogate"),
        pytest.param({"url": "https://[::1/a.png"}, "url", "not a valid URL", id="bad-host"),
        pytest.param(
            {"url": "https://a.test/" + "a" * 4096}, "url", "longer than 4096", id="too-long"
        ),
        pytest.param({"width": -1}, "width", "-1 is not in 0..100000", id="width-negative"),
        pytest.param({"height": 100_001}, "height", "is not in 0..100000", id="height-huge"),
        pytest.param({"width": 2**40}, "width", "is not in 0..100000", id="width-int64"),
    ],
)
def test_success_with_unstorable_resource_is_an_invalid_answer(
    resource: dict[str, Any], field_name: str, detail: str
) -> None:
    client, rec = make_client(ok_escaped(success_with(**resource)))
    with pytest.raises(InvalidAnswerError) as info:
        client.get_task("task-abc123")
    exc = info.value
    assert isinstance(exc, PermanentError)
    assert exc.error_code is ErrorCode.UPSTREAM_INVALID_RESPONSE
    assert exc.status == 200
    assert exc.throttle is False
    assert str(exc).startswith(f"upstream answer: result.resources.1.{field_name} ")
    assert detail in str(exc)
    assert len(str(exc)) < 300
    assert len(rec.requests) == 1


def test_invalid_answer_message_is_masked() -> None:
    client, _ = make_client(ok(success_with(url=f"gopher://{KEY}.example.test/a.png")))
    with pytest.raises(InvalidAnswerError) as info:
        client.get_task("task-abc123")
    assert_no_secret(info.value)
    assert key_runs(str(info.value)) == []
    assert "result.resources.1.url 'gopher://***" in str(info.value)


def test_error_message_names_the_format_as_in_the_brief() -> None:
    client, _ = make_client(ok(success_with(format="exe")))
    with pytest.raises(InvalidAnswerError) as info:
        client.get_task("task-abc123")
    assert (
        str(info.value) == "upstream answer: result.resources.1.format 'exe' is not an image format"
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [("PNG", "png"), ("Jpeg", "jpeg"), ("jpg", "jpg"), ("WEBP", "webp"), ("png", "png")],
)
def test_success_formats_are_normalized_to_lowercase(given: str, stored: str) -> None:
    client, _ = make_client(ok(success_with(format=given)))
    assert client.get_task("task-abc123").resources[1].format == stored


def test_success_resource_url_carrying_the_key_is_masked() -> None:
    url = f"https://file.modellix.ai/a.png?token={KEY}"
    client, _ = make_client(ok(success_with(url=url)))
    assert client.get_task("task-abc123").resources[1].url == (
        "https://file.modellix.ai/a.png?token=***"
    )


def test_only_image_resources_of_a_success_are_checked() -> None:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data["result"]["resources"].append(
        {"url": "s3:/not a url", "type": "video", "format": "mp4", "width": -5}
    )
    client, _ = make_client(ok(data))
    assert len(client.get_task("task-abc123").resources) == 2


def test_resources_of_a_task_still_running_are_not_stored_or_checked() -> None:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data["status"] = "processing"
    data["result"]["resources"][0]["format"] = "exe"
    client, _ = make_client(ok(data))
    state = client.get_task("task-abc123")
    assert state.status == "processing"
    assert state.resources == []


def test_success_with_too_many_images_is_an_invalid_answer() -> None:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data["result"]["resources"] = [SUCCESS_DATA["result"]["resources"][0]] * 65
    client, _ = make_client(ok(data))
    with pytest.raises(InvalidAnswerError, match="more than 64 images"):
        client.get_task("task-abc123")


@pytest.mark.parametrize(
    ("answered", "status"),
    [("task-other", "success"), ("task-other", "pending"), ("../../x", "failed")],
)
def test_answer_about_another_task_is_an_invalid_answer(answered: str, status: str) -> None:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data.update(task_id=answered, status=status)
    client, _ = make_client(ok(data))
    with pytest.raises(InvalidAnswerError) as info:
        client.get_task("task-abc123")
    assert info.value.error_code is ErrorCode.UPSTREAM_INVALID_RESPONSE
    assert str(info.value).startswith(f"upstream answer: task_id {answered!r} ")


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [
        pytest.param("req-123456", "req-123456", id="plain"),
        pytest.param("r" * 128, "r" * 128, id="128-chars"),
        pytest.param("r" * 129, None, id="129-chars"),
        pytest.param("r" * 100_000, None, id="huge"),
        pytest.param("req-é", None, id="non-ascii"),
        pytest.param("req\n1", None, id="control"),
        pytest.param("req\x00", None, id="nul"),
        pytest.param("", None, id="empty"),
        pytest.param(f"req-{KEY}", "req-***", id="key"),
        pytest.param(["req-1"], None, id="list"),
    ],
)
def test_request_id_is_kept_only_when_storable(request_id: Any, expected: str | None) -> None:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data["result"]["metadata"]["request_id"] = request_id
    client, _ = make_client(ok(data))
    assert client.get_task("task-abc123").request_id == expected


@pytest.mark.parametrize(
    ("fields", "duration", "amount", "expires"),
    [
        pytest.param({"duration": 2**31}, None, Decimal("0.0350"), True, id="duration-int32"),
        pytest.param({"duration": -1}, None, Decimal("0.0350"), True, id="duration-negative"),
        pytest.param({"duration": "3s"}, None, Decimal("0.0350"), True, id="duration-text"),
        pytest.param({"duration": 12.0}, 12, Decimal("0.0350"), True, id="duration-float"),
        pytest.param({"result_expires_at": 10**20}, 3500, Decimal("0.0350"), False, id="exp-big"),
        pytest.param({"result_expires_at": "soon"}, 3500, Decimal("0.0350"), False, id="exp-str"),
        pytest.param({"billing": {"amount": "1e9"}}, 3500, None, True, id="amount-huge"),
        pytest.param({"billing": {"amount": "NaN"}}, 3500, None, True, id="amount-nan"),
        pytest.param({"billing": {"amount": 0.5}}, 3500, Decimal("0.5"), True, id="amount-float"),
        pytest.param({"billing": {"amount": True}}, 3500, None, True, id="amount-bool"),
    ],
)
def test_informational_values_that_cannot_be_stored_are_dropped(
    fields: dict[str, Any], duration: int | None, amount: Decimal | None, expires: bool
) -> None:
    data = json.loads(json.dumps(SUCCESS_DATA))
    data.update(fields)
    client, _ = make_client(ok(data))
    state = client.get_task("task-abc123")
    assert state.duration_ms == duration
    assert state.billing_amount == amount
    assert (state.result_expires_at is not None) is expires
    assert len(state.resources) == 2
