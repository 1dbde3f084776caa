"""Unit tests of the webhook sender (``worker/delivery/webhooks.py``).

Requests go through ``httpx.MockTransport`` and DNS through a stand-in resolver: no network,
no sleeps. Signatures are checked with the ``standardwebhooks`` library's own ``verify``.
"""

from __future__ import annotations

import base64
import inspect
import itertools
import json
import random
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from worker.delivery import webhooks
from worker.delivery.webhooks import (
    DEFAULT_SCHEDULE,
    MAX_BODY_READ,
    MAX_EXCERPT,
    AddressProblem,
    Attempt,
    Outcome,
    WebhookConfig,
    backoff,
    generate_secret,
    resolve_problem,
    send,
    url_problem,
)

SECRET_A = "whsec_" + base64.b64encode(bytes(range(32))).decode()
SECRET_B = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
WRONG = "whsec_" + base64.b64encode(b"w" * 32).decode()
URL = "https://hooks.example.com/imagegen?tenant=7"
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
MSG_ID = "dlv_0123456789abcdef"
PAYLOAD = json.dumps(
    {"type": "job.succeeded", "timestamp": "2026-12-01T15:00:00+00:00", "data": {"id": "j1"}},
    separators=(",", ":"),
).encode()
API_KEY = "mdlx-live-SECRET-key-0123456789"

Handler = Callable[[httpx.Request], httpx.Response]


# --------------------------------------------------------------------------------------
# helpers


def answers(*addresses: str) -> webhooks.Resolver:
    """A resolver that answers every name with ``addresses``."""

    def resolve(host: str, port: int) -> Sequence[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for address in addresses:
            if ":" in address:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return out

    return resolve


def failing(exc: BaseException) -> webhooks.Resolver:
    def resolve(host: str, port: int) -> Sequence[tuple[Any, ...]]:
        raise exc

    return resolve


def never(host: str, port: int) -> Sequence[tuple[Any, ...]]:
    raise AssertionError(f"{host} must not be resolved")


PUBLIC = answers(PUBLIC_V4, PUBLIC_V6)


class Recorder:
    """A MockTransport handler that records requests and answers with ``respond``."""

    def __init__(self, respond: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.respond = respond or (lambda request: httpx.Response(200, text="ok"))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.respond(request)

    @property
    def last(self) -> httpx.Request:
        assert self.requests, "no request was sent"
        return self.requests[-1]


@pytest.fixture
def config() -> WebhookConfig:
    return WebhookConfig(secrets=(SECRET_A, SECRET_B), allow_hosts=frozenset({"127.0.0.1"}))


def client_for(recorder: Recorder, **kwargs: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(recorder), **kwargs)


def deliver(
    recorder: Recorder,
    config: WebhookConfig,
    *,
    url: str = URL,
    msg_id: str = MSG_ID,
    now: float | None = None,
    resolver: webhooks.Resolver = PUBLIC,
) -> Attempt:
    with client_for(recorder) as client:
        return send(
            client,
            url,
            msg_id=msg_id,
            payload=PAYLOAD,
            config=config,
            now=now,
            resolver=resolver,
        )


# --------------------------------------------------------------------------------------
# signing


def test_every_active_secret_verifies_with_the_library(config: WebhookConfig) -> None:
    recorder = Recorder()
    result = deliver(recorder, config)
    assert result == Attempt(Outcome.DELIVERED, 200, None)
    request = recorder.last
    headers = dict(request.headers)
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(sig.startswith("v1,") for sig in signatures)
    for secret in (SECRET_A, SECRET_B):  # old and new secret during a rotation
        assert Webhook(secret).verify(request.content, headers) == json.loads(PAYLOAD)
    with pytest.raises(WebhookVerificationError):
        Webhook(WRONG).verify(request.content, headers)


def test_one_secret_one_signature() -> None:
    recorder = Recorder()
    deliver(recorder, WebhookConfig(secrets=(SECRET_B,)))
    headers = dict(recorder.last.headers)
    assert " " not in headers["webhook-signature"]
    assert Webhook(SECRET_B).verify(recorder.last.content, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(recorder.last.content, headers)


def test_tampered_body_or_id_fails_verification(config: WebhookConfig) -> None:
    recorder = Recorder()
    deliver(recorder, config)
    headers = dict(recorder.last.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(recorder.last.content.replace(b"j1", b"j2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(recorder.last.content, {**headers, "webhook-id": "dlv_other"})


def test_signature_is_the_spec_hmac(config: WebhookConfig) -> None:
    """Standard Webhooks: base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))."""
    import hashlib
    import hmac

    recorder = Recorder()
    deliver(recorder, config, now=1_700_000_000.0, resolver=PUBLIC)
    key = base64.b64decode(SECRET_A.removeprefix("whsec_"))
    signed = f"{MSG_ID}.1700000000.".encode() + PAYLOAD
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert recorder.last.headers["webhook-signature"].split(" ")[0] == f"v1,{expected}"


# --------------------------------------------------------------------------------------
# headers


def test_headers(config: WebhookConfig) -> None:
    recorder = Recorder()
    deliver(recorder, config, now=1_700_000_123.987)
    request = recorder.last
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.content == PAYLOAD
    assert request.headers["webhook-id"] == MSG_ID
    assert request.headers["webhook-timestamp"] == "1700000123"  # whole seconds
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == config.user_agent
    assert request.headers["accept-encoding"] == "identity"
    assert set(request.headers) <= {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "user-agent",
        "content-length",
        "content-type",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }


def test_webhook_id_is_stable_across_retries(config: WebhookConfig) -> None:
    recorder = Recorder(lambda request: httpx.Response(503))
    first = deliver(recorder, config, now=1_700_000_000.0)
    second = deliver(recorder, config, now=1_700_000_300.0)
    assert first.outcome is second.outcome is Outcome.RETRY
    one, two = recorder.requests
    assert one.headers["webhook-id"] == two.headers["webhook-id"] == MSG_ID
    assert one.headers["webhook-timestamp"] != two.headers["webhook-timestamp"]
    assert one.headers["webhook-signature"] != two.headers["webhook-signature"]
    assert one.content == two.content


def test_the_api_key_in_the_environment_is_never_sent(
    config: WebhookConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELLIX_API_KEY", API_KEY)
    monkeypatch.setenv("IMAGEGEN_MODELLIX_API_KEY", API_KEY)
    recorder = Recorder()
    assert deliver(recorder, config).outcome is Outcome.DELIVERED
    request = recorder.last
    assert "authorization" not in request.headers
    assert "cookie" not in request.headers
    everything = " ".join(f"{k}: {v}" for k, v in request.headers.items()) + str(request.url)
    assert API_KEY not in everything
    assert API_KEY.encode() not in request.content


def test_a_key_that_reaches_the_headers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELLIX_API_KEY", API_KEY)
    config = WebhookConfig(secrets=(SECRET_A,), user_agent=f"imagegen {API_KEY}")
    recorder = Recorder()
    with pytest.raises(ValueError, match="API key") as caught:
        deliver(recorder, config)
    assert API_KEY not in str(caught.value)
    assert recorder.requests == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"headers": {"Authorization": f"Bearer {API_KEY}"}},
        {"headers": {"x-api-key": API_KEY}},
        {"auth": ("user", "password")},
        {"event_hooks": {"request": [lambda request: None]}},
    ],
    ids=["authorization", "custom-header", "auth", "request-hook"],
)
def test_a_client_carrying_credentials_is_refused(
    config: WebhookConfig, kwargs: dict[str, Any]
) -> None:
    recorder = Recorder()
    with client_for(recorder, **kwargs) as client, pytest.raises(ValueError, match="client"):
        send(client, URL, msg_id=MSG_ID, payload=PAYLOAD, config=config, resolver=PUBLIC)
    assert recorder.requests == []


def test_receiver_cookies_are_not_sent_back(config: WebhookConfig) -> None:
    recorder = Recorder(
        lambda request: httpx.Response(503, headers={"set-cookie": "session=abc; Path=/"})
    )
    with client_for(recorder) as client:
        for _ in range(2):
            send(client, URL, msg_id=MSG_ID, payload=PAYLOAD, config=config, resolver=PUBLIC)
        assert not client.cookies
    assert all("cookie" not in request.headers for request in recorder.requests)


@pytest.mark.parametrize("msg_id", ["", "has space", "new\nline", "x" * 256, "ü"])
def test_bad_message_ids_are_caller_bugs(config: WebhookConfig, msg_id: str) -> None:
    with pytest.raises(ValueError, match="msg_id"):
        deliver(Recorder(), config, msg_id=msg_id)


def test_payload_must_be_utf8(config: WebhookConfig) -> None:
    with client_for(Recorder()) as client, pytest.raises(ValueError, match="UTF-8"):
        send(client, URL, msg_id=MSG_ID, payload=b"\xff\xfe", config=config, resolver=PUBLIC)


# --------------------------------------------------------------------------------------
# outcomes


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (301, Outcome.RETRY),
        (302, Outcome.RETRY),
        (307, Outcome.RETRY),
        (400, Outcome.PERMANENT),
        (401, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (408, Outcome.RETRY),
        (410, Outcome.GONE),
        (413, Outcome.PERMANENT),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
def test_status_classification(config: WebhookConfig, status: int, outcome: Outcome) -> None:
    recorder = Recorder(lambda request: httpx.Response(status, text=f"answer {status}"))
    result = deliver(recorder, config)
    assert result.outcome is outcome
    assert result.status == status
    assert len(recorder.requests) == 1
    if outcome is Outcome.DELIVERED:
        assert result.error is None
    else:
        assert result.error is not None
        assert result.error.startswith(f"HTTP {status}")


def test_redirects_are_not_followed(config: WebhookConfig) -> None:
    recorder = Recorder(
        lambda request: httpx.Response(301, headers={"location": "http://169.254.169.254/"})
    )
    with client_for(recorder, follow_redirects=True) as client:  # even when the client would
        result = send(client, URL, msg_id=MSG_ID, payload=PAYLOAD, config=config, resolver=PUBLIC)
    assert result == Attempt(Outcome.RETRY, 301, "HTTP 301: redirect not followed")
    assert len(recorder.requests) == 1


def _raise(exc_type: type[httpx.TransportError], message: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(message, request=request)

    return handler


@pytest.mark.parametrize(
    ("exc_type", "message", "outcome"),
    [
        (httpx.ReadTimeout, "timed out", Outcome.RETRY),
        (httpx.ConnectTimeout, "timed out", Outcome.RETRY),
        (httpx.ConnectError, "[Errno 111] Connection refused", Outcome.RETRY),
        (httpx.ReadError, "connection reset by peer", Outcome.RETRY),
        (httpx.RemoteProtocolError, "Server disconnected without response", Outcome.RETRY),
        (httpx.UnsupportedProtocol, "Request URL has an unsupported protocol", Outcome.PERMANENT),
    ],
)
def test_transport_errors(
    config: WebhookConfig, exc_type: type[httpx.TransportError], message: str, outcome: Outcome
) -> None:
    result = deliver(Recorder(_raise(exc_type, message)), config)
    assert result == Attempt(outcome, None, f"{exc_type.__name__}: {message}")


def test_long_exception_messages_are_cut(config: WebhookConfig) -> None:
    result = deliver(Recorder(_raise(httpx.ConnectError, "boom\n" * 500)), config)
    assert result.error is not None
    assert result.error.startswith("ConnectError: boom boom")
    assert len(result.error) <= len("ConnectError: ") + MAX_EXCERPT
    assert "\n" not in result.error


def test_response_excerpt_is_short_and_clean(config: WebhookConfig) -> None:
    body = "Internal\n\n   error:\t" + "detail " * 2000 + "\x1b[31mred\x00"
    recorder = Recorder(lambda request: httpx.Response(500, text=body))
    result = deliver(recorder, config)
    assert result.status == 500
    assert result.error is not None
    assert result.error.startswith("HTTP 500: Internal error: detail detail")
    assert len(result.error) <= len("HTTP 500: ") + MAX_EXCERPT
    assert result.error.endswith("…")
    assert all(ch.isprintable() for ch in result.error)


def test_response_excerpt_has_control_characters_replaced(config: WebhookConfig) -> None:
    recorder = Recorder(lambda request: httpx.Response(400, text="bad\x1b[31m\x00 input"))
    assert deliver(recorder, config).error == "HTTP 400: bad?[31m? input"


def test_empty_error_body(config: WebhookConfig) -> None:
    assert deliver(Recorder(lambda r: httpx.Response(404)), config).error == "HTTP 404"


class Endless(httpx.SyncByteStream):
    """A body that never ends; counts what was read of it."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.read += 1024
            yield b"y" * 1024


def test_at_most_4_kib_of_the_body_is_read(config: WebhookConfig) -> None:
    stream = Endless()
    recorder = Recorder(lambda request: httpx.Response(502, stream=stream))
    result = deliver(recorder, config)
    assert result.outcome is Outcome.RETRY
    assert MAX_BODY_READ <= stream.read <= MAX_BODY_READ + 1024
    assert result.error == "HTTP 502: " + "y" * (MAX_EXCERPT - 1) + "…"


def test_compressed_error_bodies_are_not_decoded(config: WebhookConfig) -> None:
    recorder = Recorder(
        lambda request: httpx.Response(
            500, content=b"\x1f\x8b\x08\x00garbage", headers={"content-encoding": "gzip"}
        )
    )
    assert deliver(recorder, config).error == "HTTP 500: (gzip body not shown)"


# --------------------------------------------------------------------------------------
# address checks inside send


def test_private_resolution_is_permanent_and_sends_nothing(config: WebhookConfig) -> None:
    recorder = Recorder()
    result = deliver(recorder, config, resolver=answers(PUBLIC_V4, "10.0.0.7"))
    assert result.outcome is Outcome.PERMANENT
    assert result.status is None
    assert result.error == "hooks.example.com resolves to a private address (10.0.0.7)"
    assert recorder.requests == []


def test_dns_failure_is_retried_and_sends_nothing(config: WebhookConfig) -> None:
    recorder = Recorder()
    result = deliver(
        recorder,
        config,
        resolver=failing(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")),
    )
    assert result.outcome is Outcome.RETRY
    assert result.status is None
    assert result.error is not None
    assert result.error.startswith("cannot resolve hooks.example.com: gaierror")
    assert recorder.requests == []


def test_a_bad_url_is_permanent(config: WebhookConfig) -> None:
    recorder = Recorder()
    result = deliver(recorder, config, url="http://hooks.example.com/", resolver=never)
    assert result == Attempt(Outcome.PERMANENT, None, "must use https://")
    assert recorder.requests == []


def test_allow_listed_http_receiver(config: WebhookConfig) -> None:
    recorder = Recorder()
    result = deliver(recorder, config, url="http://127.0.0.1:8099/hook", resolver=never)
    assert result.outcome is Outcome.DELIVERED
    assert str(recorder.last.url) == "http://127.0.0.1:8099/hook"


# --------------------------------------------------------------------------------------
# url_problem


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/x", None),
        ("https://hooks.example.com:8443/x?a=1&b=2", None),
        ("https://HOOKS.Example.COM./x", None),
        ("https://bücher.example/hook", None),
        ("https://8.8.8.8/hook", None),
        ("https://[2606:4700:4700::1111]/hook", None),
        ("https://[::ffff:8.8.8.8]/hook", None),
        ("http://hooks.example.com/x", "must use https://"),
        ("ftp://hooks.example.com/x", "must be an absolute https:// URL"),
        ("/relative/path", "must be an absolute https:// URL"),
        ("hooks.example.com/x", "must be an absolute https:// URL"),
        ("https:hooks.example.com/x", "must be an absolute https:// URL"),
        ("https:///x", "must have a host"),
        ("https://user:pw@hooks.example.com/", "must not contain user info (user:password@)"),
        ("https://token@hooks.example.com/", "must not contain user info (user:password@)"),
        ("https://hooks.example.com/#frag", "must not have a fragment (#...)"),
        ("https://hooks.example.com/x#", "must not have a fragment (#...)"),
        ("https://hooks.example.com/a b", "must not contain whitespace or control characters"),
        (" https://hooks.example.com/", "must not contain whitespace or control characters"),
        ("https://hooks.example.com/\t", "must not contain whitespace or control characters"),
        ("https://hooks.example.com/\x00", "must not contain whitespace or control characters"),
        ("https://hooks.example.com/\u202e", "must not contain whitespace or control characters"),
        ("https://hooks.example.com\\@10.0.0.1/", "must not contain a backslash"),
        ("https://hooks.example.com/" + "a" * 2048, "must be at most 2048 characters"),
        ("https://hooks.example.com:0/", "must not use port 0"),
        ("https://hooks.example.com:99999/", "is not a valid URL"),
        ("https://[::1/", "is not a valid URL"),
        ("https://127.0.0.1/", "must not point to a loopback address (127.0.0.1)"),
        ("https://127.8.9.10:8443/", "must not point to a loopback address (127.8.9.10)"),
        ("https://10.1.2.3/", "must not point to a private address (10.1.2.3)"),
        ("https://172.16.0.1/", "must not point to a private address (172.16.0.1)"),
        ("https://192.168.1.1/", "must not point to a private address (192.168.1.1)"),
        (
            "https://169.254.169.254/latest",
            "must not point to a link-local address (169.254.169.254)",
        ),
        ("https://0.0.0.0/", "must not point to an unspecified address (0.0.0.0)"),
        ("https://224.0.0.1/", "must not point to a multicast address (224.0.0.1)"),
        ("https://100.64.0.1/", "must not point to a non-public address (100.64.0.1)"),
        ("https://[::1]/", "must not point to a loopback address (::1)"),
        ("https://[::]/", "must not point to an unspecified address (::)"),
        ("https://[fe80::1]/", "must not point to a link-local address (fe80::1)"),
        ("https://[fc00::5]/", "must not point to a private address (fc00::5)"),
        ("https://[ff02::1]/", "must not point to a multicast address (ff02::1)"),
        (
            "https://[::ffff:127.0.0.1]/",
            "must not point to a loopback address (127.0.0.1) inside ::ffff:7f00:1",
        ),
        (
            "https://[::ffff:169.254.169.254]/",
            "must not point to a link-local address (169.254.169.254) inside ::ffff:a9fe:a9fe",
        ),
        (
            "https://[2002:a00:1::]/",
            "must not point to a private address (10.0.0.1) inside 2002:a00:1::",
        ),
        (
            "https://[64:ff9b::a00:1]/",
            "must not point to a private address (10.0.0.1) inside 64:ff9b::a00:1",
        ),
        ("https://localhost/", "must not point to localhost"),
        ("https://LOCALHOST./", "must not point to localhost"),
        ("https://api.localhost:8443/", "must not point to localhost"),
        ("https://127.1/", "must not use a numeric host that is not a plain IP address"),
        ("https://2130706433/", "must not use a numeric host that is not a plain IP address"),
        ("https://0x7f.0.0.1/", "must not use a numeric host that is not a plain IP address"),
        ("https://intranet/hook", "must use a fully qualified host name"),
    ],
)
def test_url_problem(url: str, expected: str | None) -> None:
    assert url_problem(url, frozenset()) == expected


@pytest.mark.parametrize(
    ("url", "allow", "expected"),
    [
        ("http://127.0.0.1:8099/hook", {"127.0.0.1"}, None),
        ("https://127.0.0.1:8099/hook", {"127.0.0.1"}, None),
        ("http://127.0.0.2:8099/hook", {"127.0.0.1"}, "must use https://"),
        (
            "https://127.0.0.2/hook",
            {"127.0.0.1"},
            "must not point to a loopback address (127.0.0.2)",
        ),
        ("http://localhost:8099/", {"localhost"}, None),
        ("http://receiver:8099/", {"Receiver."}, None),
        ("http://[::1]:8099/", {"[::1]"}, None),
        ("http://[0:0::1]:8099/", {"::1"}, None),
        (
            "http://u:p@127.0.0.1:8099/",
            {"127.0.0.1"},
            "must not contain user info (user:password@)",
        ),
        ("http://127.0.0.1:8099/#x", {"127.0.0.1"}, "must not have a fragment (#...)"),
        ("ftp://127.0.0.1/", {"127.0.0.1"}, "must be an absolute https:// URL"),
    ],
)
def test_url_problem_allow_list(url: str, allow: set[str], expected: str | None) -> None:
    assert url_problem(url, frozenset(allow)) == expected


# --------------------------------------------------------------------------------------
# resolve_problem


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        ((PUBLIC_V4,), None),
        ((PUBLIC_V4, PUBLIC_V6), None),
        ((PUBLIC_V4, "10.0.0.7"), "a private address (10.0.0.7)"),
        (("192.168.0.10",), "a private address (192.168.0.10)"),
        ((PUBLIC_V6, "::1"), "a loopback address (::1)"),
        (("127.0.0.53",), "a loopback address (127.0.0.53)"),
        (("169.254.169.254",), "a link-local address (169.254.169.254)"),
        (("fe80::1%eth0",), "a link-local address (fe80::1%eth0)"),
        (("::ffff:10.0.0.1",), "a private address (10.0.0.1) inside ::ffff:a00:1"),
        (("0.0.0.0",), "an unspecified address (0.0.0.0)"),
        (("100.64.1.1",), "a non-public address (100.64.1.1)"),
    ],
)
def test_resolve_problem(addresses: tuple[str, ...], expected: str | None) -> None:
    problem = resolve_problem(URL, frozenset(), answers(*addresses))
    if expected is None:
        assert problem is None
    else:
        assert problem == AddressProblem(f"hooks.example.com resolves to {expected}", False)


@pytest.mark.parametrize(
    "exc",
    [
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        TimeoutError("timed out"),
    ],
)
def test_resolution_failures_are_retryable(exc: OSError) -> None:
    problem = resolve_problem(URL, frozenset(), failing(exc))
    assert problem is not None
    assert problem.retryable
    assert problem.message.startswith("cannot resolve hooks.example.com: ")
    assert str(problem) == problem.message


def test_no_answer_is_retryable() -> None:
    assert resolve_problem(URL, frozenset(), answers()) == AddressProblem(
        "hooks.example.com resolves to no address", True
    )


def test_static_problems_are_permanent_and_not_resolved() -> None:
    problem = resolve_problem("https://user@hooks.example.com/", frozenset(), never)
    assert problem == AddressProblem("must not contain user info (user:password@)", False)


def test_allow_listed_hosts_and_ip_literals_are_not_resolved() -> None:
    assert (
        resolve_problem("http://receiver.test:8099/", frozenset({"receiver.test"}), never) is None
    )
    assert resolve_problem("https://8.8.8.8/hook", frozenset(), never) is None
    assert resolve_problem("http://127.0.0.1:1/", frozenset({"127.0.0.1"}), never) is None


def test_names_are_resolved_as_sent() -> None:
    seen: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> Sequence[tuple[Any, ...]]:
        seen.append((host, port))
        return answers(PUBLIC_V4)(host, port)

    assert resolve_problem("https://Bücher.Example:8443/x", frozenset(), resolve) is None
    assert resolve_problem("https://hooks.example.com/x", frozenset(), resolve) is None
    assert seen == [("xn--bcher-kva.example", 8443), ("hooks.example.com", 443)]


def test_the_default_resolver_is_getaddrinfo() -> None:
    for function in (resolve_problem, send):
        default = inspect.signature(function).parameters["resolver"].default
        assert default is socket.getaddrinfo


# --------------------------------------------------------------------------------------
# backoff


def test_default_schedule_spans_a_day_even_with_jitter() -> None:
    total = sum(DEFAULT_SCHEDULE)
    assert total == 109_515  # 30 h 25 min 15 s nominal, as the comment says
    assert total * (1 - webhooks.JITTER) >= 24 * 3600  # 24 h 20 min 12 s at the least
    assert len(DEFAULT_SCHEDULE) == 39  # 40 attempts in all


def test_default_schedule_doubles_from_5_s_and_caps_at_an_hour() -> None:
    assert DEFAULT_SCHEDULE[0] == 5
    assert max(DEFAULT_SCHEDULE) == 3600
    assert list(DEFAULT_SCHEDULE[:10]) == [5 * 2**n for n in range(10)]
    for before, after in itertools.pairwise(DEFAULT_SCHEDULE):
        assert after == min(2 * before, 3600)


class Fixed:
    def __init__(self, pick: Callable[[float, float], float]) -> None:
        self.pick = pick

    def uniform(self, a: float, b: float, /) -> float:
        return self.pick(a, b)


def test_backoff_jitter_bounds() -> None:
    low = Fixed(lambda a, b: a)
    high = Fixed(lambda a, b: b)
    for attempt, step in enumerate(DEFAULT_SCHEDULE):
        assert backoff(attempt, DEFAULT_SCHEDULE, low) == pytest.approx(step * 0.8)
        assert backoff(attempt, DEFAULT_SCHEDULE, high) == pytest.approx(step * 1.2)
    rng = random.Random(1234)
    for attempt in range(len(DEFAULT_SCHEDULE)):
        for _ in range(50):
            delay = backoff(attempt, DEFAULT_SCHEDULE, rng)
            assert delay is not None
            assert 0.8 * DEFAULT_SCHEDULE[attempt] <= delay <= 1.2 * DEFAULT_SCHEDULE[attempt]


def test_backoff_spreads_retries() -> None:
    rng = random.Random(7)
    delays = {backoff(0, DEFAULT_SCHEDULE, rng) for _ in range(20)}
    assert len(delays) == 20


def test_backoff_ends_with_the_schedule() -> None:
    rng = random.Random(0)
    assert backoff(0, (10.0, 20.0), rng) is not None  # first attempt failed
    assert backoff(1, (10.0, 20.0), rng) is not None
    assert backoff(2, (10.0, 20.0), rng) is None  # third failed: dead
    assert backoff(len(DEFAULT_SCHEDULE), DEFAULT_SCHEDULE, rng) is None
    assert backoff(0, (), rng) is None
    with pytest.raises(ValueError, match="from 0"):
        backoff(-1, DEFAULT_SCHEDULE, rng)


# --------------------------------------------------------------------------------------
# configuration


def test_config_hides_secrets_and_normalizes_hosts() -> None:
    config = WebhookConfig(
        secrets=[SECRET_A],  # type: ignore[arg-type]
        allow_hosts=frozenset({"Receiver.Test.", "[::1]", "127.0.0.1"}),
    )
    assert config.secrets == (SECRET_A,)
    assert config.allow_hosts == {"receiver.test", "::1", "127.0.0.1"}
    assert SECRET_A not in repr(config)
    assert SECRET_A.removeprefix("whsec_") not in repr(config)
    assert config.timeout == 10.0


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ((), "one or two"),
        ((SECRET_A, SECRET_B, WRONG), "one or two"),
        ((SECRET_A, SECRET_A), "the same"),
        (("not-a-secret-0123456789abcdef",), "must start with whsec_"),
        (("whsec_***not*base64***",), "padded base64"),
        (("whsec_" + base64.b64encode(bytes(16)).decode(),), "24 to 64 bytes, not 16"),
        (("whsec_" + base64.b64encode(bytes(32)).decode().rstrip("="),), "padded base64"),
    ],
)
def test_bad_secrets_are_refused_without_being_quoted(
    secrets: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        WebhookConfig(secrets=secrets)
    for secret in secrets:
        assert secret.removeprefix("whsec_") not in str(caught.value)


def test_config_refuses_a_bare_string_and_bad_settings() -> None:
    with pytest.raises(TypeError):
        WebhookConfig(secrets=SECRET_A)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        WebhookConfig(secrets=(SECRET_A,), timeout=0)
    with pytest.raises(ValueError, match="user_agent"):
        WebhookConfig(secrets=(SECRET_A,), user_agent="bad\r\nx-injected: 1")


def test_generated_secrets_are_valid_and_sign() -> None:
    secret = generate_secret()
    assert webhooks.secret_problem(secret) is None
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert generate_secret() != secret
    recorder = Recorder()
    deliver(recorder, WebhookConfig(secrets=(secret,)))
    assert Webhook(secret).verify(recorder.last.content, dict(recorder.last.headers))
