"""Signed webhooks for job results (Standard Webhooks): URL checks, one attempt, backoff.

Plain code, no Celery: the delivery task owns the outbox row, counts attempts and sleeps; this
module says whether a URL may be called, makes one signed POST and classifies what came back.

One outbox row, from acceptance to the end::

    url_problem(url, allow_hosts)        when the request is accepted: static, no DNS
    send(client, url, msg_id=..., ...)   on each attempt:
        resolve_problem(...)             DNS again: every address must be public
        POST, signed with every active secret, redirects not followed
        -> Attempt(outcome, status, error)
    backoff(n, schedule, rng)            attempt n (from 0) failed: delay before the next;
                                         None: the delivery is dead

Signing (https://www.standardwebhooks.com/): ``webhook-id`` is the outbox row's id, the same
on every retry so receivers can deduplicate; ``webhook-timestamp`` is the attempt's time in
whole seconds; ``webhook-signature`` holds one ``v1,<base64>`` per active secret, separated by
spaces (two while a secret is being rotated), each computed by the ``standardwebhooks``
library over ``{id}.{timestamp}.{body}``. Receivers verify with the same library (Python,
Node.js and others) and accept the message if any one signature matches.

The request carries only the headers built here: the client must have no auth, no default
headers of its own and no request hooks, and the Modellix API key is checked to appear in no
header value. The response body is read only for an error excerpt: at most 4 KiB, of which
200 characters are kept.

Known gap: the address check resolves the host, then the HTTP client resolves it again to
connect, so a DNS answer that changes between the two (rebinding) is not caught here. Closing
it takes the check inside the client's connect step, or an egress firewall.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
import socket
import time
import unicodedata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from secrets import token_bytes
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``socket.getaddrinfo`` or a stand-in: ``(host, port) -> [(family, type, proto, name, sockaddr)]``
Resolver = Callable[[str, int], Sequence[tuple[Any, ...]]]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the prefix, not a secret
#: Standard Webhooks: symmetric secrets are 24 to 64 random bytes.
SECRET_BYTES: Final = (24, 64)
MAX_URL_LENGTH: Final = 2048
#: The most of a response body ever read (for the error excerpt).
MAX_BODY_READ: Final = 4096
#: The most characters of a response body or exception message kept in ``Attempt.error``.
MAX_EXCERPT: Final = 200
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_USER_AGENT: Final = "imagegen-worker-webhooks/0.1"
#: Each backoff delay is its schedule step times a factor drawn from [1 - JITTER, 1 + JITTER].
JITTER: Final = 0.2

# 5 s doubling up to 2,560 s (10 steps, 5,115 s), then 29 steps of 1 h (104,400 s):
# 39 retries after the first attempt, 40 attempts in all, 109,515 s = 30 h 25 min 15 s
# nominal. Even with every step jittered down by 20 % the total is 87,612 s = 24 h 20 min 12 s,
# so a receiver that is down for a whole day still gets its results.
DEFAULT_SCHEDULE: Final[tuple[float, ...]] = (
    *(5.0 * 2**step for step in range(10)),
    *(3600.0,) * 29,
)

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_MSG_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
# WHATWG URL: a host whose last label is numeric is an IPv4 address (127.1, 0x7f.1, 2130706433).
_NUMERIC_LABEL: Final = re.compile(r"0x[0-9a-f]*|[0-9]+")
_BAD_CHAR_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_NAT64_WELL_KNOWN: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
# What httpx puts on a client by default; anything else on the client is refused.
_CLIENT_DEFAULT_HEADERS: Final = frozenset(
    {"accept", "accept-encoding", "connection", "user-agent"}
)
_REQUEST_HEADERS: Final = _CLIENT_DEFAULT_HEADERS | {
    "host",
    "content-length",
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
}
_API_KEY_VARIABLES: Final = ("MODELLIX_API_KEY", "IMAGEGEN_MODELLIX_API_KEY")


class Outcome(StrEnum):
    """What the delivery task does after one attempt."""

    DELIVERED = "delivered"  # 2xx: done
    RETRY = "retry"  # try again after backoff(); dead when the schedule runs out
    PERMANENT = "permanent"  # will not work however often it is tried: stop, keep the error
    GONE = "gone"  # 410: the receiver asked never to be called again


@dataclass(frozen=True)
class Attempt:
    """The result of one attempt. ``error`` is short and safe to store and log."""

    outcome: Outcome
    status: int | None  # the HTTP status, None when no response came
    error: str | None  # None when delivered


@dataclass(frozen=True)
class AddressProblem:
    """Why an attempt may not be made now.

    ``retryable``: the host could not be resolved (ask again on the next attempt). Otherwise
    the URL or one of the host's addresses is one this worker never calls.
    """

    message: str
    retryable: bool

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class WebhookConfig:
    """How webhooks are signed and sent. ``repr`` leaves the secrets out."""

    #: One or two ``whsec_<base64>`` secrets; two while rotating (every attempt is signed
    #: with each, so receivers holding either one verify).
    secrets: tuple[str, ...] = field(repr=False)
    #: Host names or IP literals exempt from the https-only and public-address rules
    #: (tests and local receivers). Normalized: lower case, no trailing dot, no brackets.
    allow_hosts: frozenset[str] = frozenset()
    timeout: float = DEFAULT_TIMEOUT
    user_agent: str = DEFAULT_USER_AGENT

    def __post_init__(self) -> None:
        if isinstance(self.secrets, str):
            raise TypeError("secrets is a tuple of whsec_ strings, not one string")
        secrets = tuple(self.secrets)
        if not 1 <= len(secrets) <= 2:
            raise ValueError(f"one or two webhook secrets, not {len(secrets)}")
        if len(set(secrets)) != len(secrets):
            raise ValueError("the two webhook secrets are the same")
        for index, secret in enumerate(secrets):
            problem = secret_problem(secret)
            if problem is not None:
                raise ValueError(f"webhook secret #{index + 1} {problem}")
        if isinstance(self.allow_hosts, str):
            raise TypeError("allow_hosts is a set of host names, not one string")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        if not self.user_agent or not all(" " <= ch <= "~" for ch in self.user_agent):
            raise ValueError("user_agent must be non-empty printable ASCII")
        object.__setattr__(self, "secrets", secrets)
        object.__setattr__(self, "allow_hosts", frozenset(_host_key(h) for h in self.allow_hosts))


def secret_problem(secret: str) -> str | None:
    """What is wrong with a ``whsec_`` secret (never quoting it), or None."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        return f"must start with {SECRET_PREFIX}"
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return f"must be padded base64 after {SECRET_PREFIX}"
    low, high = SECRET_BYTES
    if not low <= len(raw) <= high:
        return f"must decode to {low} to {high} bytes, not {len(raw)}"
    return None


def generate_secret(nbytes: int = 32) -> str:
    """A new random ``whsec_`` secret."""
    low, high = SECRET_BYTES
    if not low <= nbytes <= high:
        raise ValueError(f"nbytes must be {low} to {high}")
    return SECRET_PREFIX + base64.b64encode(token_bytes(nbytes)).decode("ascii")


def signature_headers(
    secrets: Sequence[str], *, msg_id: str, timestamp: int, payload: str
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one attempt."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    signatures = [Webhook(secret).sign(msg_id, when, payload) for secret in secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }


# --------------------------------------------------------------------------------------
# URL and address checks


def _host_key(host: str) -> str:
    """A host as compared with the allow-list: lower case, no brackets or trailing dot."""
    key = host.strip().lower()
    if key.startswith("[") and key.endswith("]"):
        key = key[1:-1]
    key = key.rstrip(".")
    try:
        return str(ipaddress.ip_address(key))
    except ValueError:
        return key


def _ip_literal(host_key: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host_key)
    except ValueError:
        return None


def _allowed(host_key: str, allow_hosts: Collection[str]) -> bool:
    return host_key in {_host_key(h) for h in allow_hosts}


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``"a private address (10.0.0.1)"``), or None.

    IPv6 addresses that carry an IPv4 address (IPv4-mapped, 6to4, NAT64) are judged by it.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64_WELL_KNOWN:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        if embedded is not None:
            problem = address_problem(embedded)
            return None if problem is None else f"{problem} inside {ip}"
        if ip in _NAT64_LOCAL_USE:
            return f"a local-use NAT64 address ({ip})"
    if ip.is_unspecified:
        kind = "an unspecified"
    elif ip.is_loopback:
        kind = "a loopback"
    elif ip.is_link_local:
        kind = "a link-local"
    elif ip.is_multicast:
        kind = "a multicast"
    elif ip.is_private:
        kind = "a private"
    elif ip.is_reserved:
        kind = "a reserved"
    elif not ip.is_global:
        kind = "a non-public"
    else:
        return None
    return f"{kind} address ({ip})"


def url_problem(url: str, allow_hosts: Collection[str] = frozenset()) -> str | None:
    """What is wrong with a webhook URL, checked when a request is accepted; None if fine.

    The text names the problem; the caller prefixes the field (``webhook.url: ...``). No DNS
    here: :func:`resolve_problem` looks at the host's addresses before each attempt.
    """
    if not isinstance(url, str) or not url:
        return "must be a non-empty string"
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or unicodedata.category(ch) in _BAD_CHAR_CATEGORIES for ch in url):
        return "must not contain whitespace or control characters"
    if "\\" in url:
        return "must not contain a backslash"
    if "#" in url:
        return "must not have a fragment (#...)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not url[len(scheme) :].startswith("://"):
        return "must be an absolute https:// URL"
    if "@" in parts.netloc:
        return "must not contain user info (user:password@)"
    host_key = _host_key(parts.hostname or "")
    if not host_key:
        return "must have a host"
    allowed = _allowed(host_key, allow_hosts)
    if scheme != "https" and not allowed:
        return "must use https://"
    if port == 0:
        return "must not use port 0"
    # httpx parses the URL again to send it: both parsers must agree on where it goes.
    try:
        sent = httpx.URL(url)
    except httpx.InvalidURL:
        return "is not a valid URL (host name or encoding refused)"
    effective_port = port or _DEFAULT_PORTS[scheme]
    if (
        sent.scheme != scheme
        or _host_key(sent.host) != host_key
        or (sent.port or _DEFAULT_PORTS[scheme]) != effective_port
    ):
        return "is not a valid URL (ambiguous host or port)"
    if allowed:
        return None
    ip = _ip_literal(host_key)
    if ip is not None:
        problem = address_problem(ip)
        return None if problem is None else f"must not point to {problem}"
    if host_key == "localhost" or host_key.endswith(".localhost"):
        return "must not point to localhost"
    labels = host_key.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return "must not use a numeric host that is not a plain IP address"
    if len(labels) < 2:
        return "must use a fully qualified host name"
    return None


def resolve_problem(
    url: str,
    allow_hosts: Collection[str] = frozenset(),
    resolver: Resolver = socket.getaddrinfo,
) -> AddressProblem | None:
    """Checks made before each attempt: :func:`url_problem`, then every address of the host.

    A refusal (bad URL, any resolved address not public) is ``retryable=False``; a failed or
    empty resolution is ``retryable=True``. Allow-listed hosts and IP literals are not resolved.
    """
    static = url_problem(url, allow_hosts)
    if static is not None:
        return AddressProblem(static, retryable=False)
    target = httpx.URL(url)
    host_key = _host_key(target.host)
    if _allowed(host_key, allow_hosts) or _ip_literal(host_key) is not None:
        return None
    host = target.raw_host.decode("ascii")  # IDNA-encoded, as httpx will look it up
    port = target.port or _DEFAULT_PORTS[target.scheme]
    try:
        answers = resolver(host, port)
    except UnicodeError:
        return AddressProblem(f"host {host} cannot be looked up", retryable=False)
    except OSError as exc:
        return AddressProblem(f"cannot resolve {host}: {_describe(exc)}", retryable=True)
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            addresses.append(ipaddress.ip_address(str(answer[4][0])))
        except (IndexError, TypeError, ValueError):
            return AddressProblem(f"{host} resolves to something not an IP address", False)
    if not addresses:
        return AddressProblem(f"{host} resolves to no address", retryable=True)
    for ip in addresses:
        problem = address_problem(ip)
        if problem is not None:
            return AddressProblem(f"{host} resolves to {problem}", retryable=False)
    return None


# --------------------------------------------------------------------------------------
# one attempt


def _clean(text: str) -> str:
    """Whitespace collapsed, other unprintable characters replaced, cut to MAX_EXCERPT."""
    text = "".join(ch if ch.isprintable() else "?" for ch in " ".join(text.split()))
    return text if len(text) <= MAX_EXCERPT else text[: MAX_EXCERPT - 1] + "…"


def _describe(exc: BaseException) -> str:
    message = _clean(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _check_client(client: httpx.Client) -> None:
    if client.auth is not None:
        raise ValueError("the webhook client must not carry auth")
    extra = sorted({name.lower() for name in client.headers} - _CLIENT_DEFAULT_HEADERS)
    if extra:
        raise ValueError(f"the webhook client must not carry default headers: {extra}")
    if client.event_hooks["request"]:
        raise ValueError("the webhook client must not have request hooks")


def _check_request(request: httpx.Request) -> None:
    """Only the headers built here go out, and the Modellix API key is in none of them."""
    extra = sorted({name.lower() for name in request.headers} - _REQUEST_HEADERS)
    if extra:
        raise ValueError(f"webhook request would carry unexpected headers: {extra}")
    keys = [v for v in (os.environ.get(n, "").strip() for n in _API_KEY_VARIABLES) if len(v) >= 8]
    if any(key in value for key in keys for value in request.headers.values()):
        raise ValueError("webhook request headers contain the Modellix API key")


def _excerpt(response: httpx.Response, budget: float) -> str:
    """At most MAX_EXCERPT characters of the first MAX_BODY_READ bytes, within ``budget`` s."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return _clean(f"({encoding} body not shown)")
    deadline = time.monotonic() + budget
    body = bytearray()
    try:
        # identity only (checked above), so iter_bytes decodes nothing
        for chunk in response.iter_bytes(MAX_BODY_READ):
            body += chunk
            if len(body) >= MAX_BODY_READ or time.monotonic() > deadline:
                break
    except (httpx.HTTPError, httpx.StreamError):
        pass  # the status is the answer; keep whatever part of the body arrived
    return _clean(bytes(body[:MAX_BODY_READ]).decode("utf-8", errors="replace"))


def classify(status: int) -> Outcome:
    """The outcome of a response with this status (redirects are never followed)."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    if 400 <= status < 500 and status not in (408, 429):
        return Outcome.PERMANENT
    return Outcome.RETRY  # 3xx, 408, 429, 5xx, anything unexpected


def send(
    client: httpx.Client,
    url: str,
    *,
    msg_id: str,
    payload: bytes,
    config: WebhookConfig,
    now: float | None = None,
    resolver: Resolver = socket.getaddrinfo,
) -> Attempt:
    """One signed POST of ``payload`` (UTF-8 JSON) to ``url``; never raises for the network.

    ``msg_id`` is the outbox row's stable id (``webhook-id``). Raises ``ValueError`` for
    caller bugs: a client with auth, default headers or hooks; a bad ``msg_id``; a payload that
    is not UTF-8.
    """
    _check_client(client)
    if not _MSG_ID.fullmatch(msg_id):
        raise ValueError("msg_id must be 1 to 255 characters of [A-Za-z0-9_.:-]")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("payload must be UTF-8 JSON") from None

    problem = resolve_problem(url, config.allow_hosts, resolver)
    if problem is not None:
        outcome = Outcome.RETRY if problem.retryable else Outcome.PERMANENT
        return Attempt(outcome, None, _clean(problem.message))

    timestamp = math.floor(time.time() if now is None else now)
    headers = signature_headers(config.secrets, msg_id=msg_id, timestamp=timestamp, payload=text)
    headers.update(
        {
            "content-type": "application/json",
            "user-agent": config.user_agent,
            "accept": "*/*",
            "accept-encoding": "identity",  # the excerpt is read raw: nothing to decompress
        }
    )
    request = client.build_request(
        "POST", url, content=payload, headers=headers, timeout=httpx.Timeout(config.timeout)
    )
    if "cookie" in request.headers:  # set by an earlier receiver: never sent on
        del request.headers["cookie"]
    _check_request(request)

    try:
        response = client.send(request, stream=True, auth=None, follow_redirects=False)
    except (
        httpx.TimeoutException,
        httpx.NetworkError,
        httpx.RemoteProtocolError,
        httpx.ProxyError,
    ) as exc:
        return Attempt(Outcome.RETRY, None, _describe(exc))
    except httpx.HTTPError as exc:  # UnsupportedProtocol, LocalProtocolError: ours, lasting
        return Attempt(Outcome.PERMANENT, None, _describe(exc))
    try:
        status = response.status_code
        outcome = classify(status)
        if outcome is Outcome.DELIVERED:
            return Attempt(outcome, status, None)
        if 300 <= status < 400:
            return Attempt(outcome, status, f"HTTP {status}: redirect not followed")
        excerpt = _excerpt(response, config.timeout)
        return Attempt(
            outcome, status, f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
        )
    finally:
        response.close()
        client.cookies.clear()  # receivers' cookies are never kept for the next attempt


# --------------------------------------------------------------------------------------
# retries


class Uniform(Protocol):
    """What :func:`backoff` needs of its random source (``random.Random`` fits)."""

    def uniform(self, a: float, b: float, /) -> float: ...


def backoff(attempt: int, schedule: Sequence[float], rng: Uniform) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, now that attempt ``attempt`` failed.

    Attempts count from 0 (the first). ``schedule[n]`` is the delay after failed attempt
    ``n``, jittered by up to ``JITTER`` either way; None once the schedule is used up (the
    delivery is dead), so a schedule of k steps allows k + 1 attempts.
    """
    if attempt < 0:
        raise ValueError("attempt counts from 0 (the first attempt)")
    if attempt >= len(schedule):
        return None
    return schedule[attempt] * rng.uniform(1.0 - JITTER, 1.0 + JITTER)
