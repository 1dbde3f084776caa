"""What workers observe, as one-line calls from the code that sees it.

Each call hands its additions to this process's writer (``store.Writer``), which sends them
into the shared Redis hashes once a second, and never raises: a metric must not break or
slow a job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import httpx

from . import store
from .series import (
    DETECTION_LAG,
    JOBS_ENDED,
    MESSAGES_DROPPED,
    POLLS_PER_JOB,
    SWEEPER_ACTIONS,
    UPSTREAM_429,
    UPSTREAM_LATENCY,
    DropReason,
    Endpoint,
    Outcome,
    ThrottleKind,
)

if TYPE_CHECKING:
    from worker.jobs.ends import Ended
    from worker.jobs.repository import PollTicket


def _metrics_url() -> str:
    from worker.config import get_settings

    return get_settings().limiter_redis_url


writer: Final = store.Writer(_metrics_url, flush_every=store.FLUSH_EVERY_SECONDS)


# --- the upstream -----------------------------------------------------------------------------


def outcome_of(status: int) -> Outcome:
    """The outcome class of an HTTP status."""
    if status == 429:
        return Outcome.THROTTLED
    classes = {2: Outcome.OK, 4: Outcome.CLIENT_ERROR, 5: Outcome.SERVER_ERROR}
    return classes.get(status // 100, Outcome.OTHER)


def throttle_kind(response: httpx.Response) -> ThrottleKind:
    """Which limit a 429 names: its envelope's ``message`` category (upstream contract)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return ThrottleKind.UNKNOWN
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str):
        return ThrottleKind.UNKNOWN
    category = message.split(":", 1)[0].strip().lower()
    if category.startswith("concurrent"):
        return ThrottleKind.CONCURRENCY
    if category.startswith("rate"):
        return ThrottleKind.RATE
    return ThrottleKind.UNKNOWN


def upstream_call(endpoint: Endpoint, call: Callable[[], httpx.Response]) -> httpx.Response:
    """Make one upstream request (``call``) and record its latency and outcome class.

    The response or the exception passes through unchanged.
    """
    started = time.perf_counter()
    try:
        response = call()
    except httpx.TimeoutException:
        _upstream(endpoint, Outcome.TIMEOUT, time.perf_counter() - started, None)
        raise
    except httpx.HTTPError:
        _upstream(endpoint, Outcome.NETWORK, time.perf_counter() - started, None)
        raise
    outcome = outcome_of(response.status_code)
    kind = throttle_kind(response) if outcome is Outcome.THROTTLED else None
    _upstream(endpoint, outcome, time.perf_counter() - started, kind)
    return response


def _upstream(
    endpoint: Endpoint, outcome: Outcome, seconds: float, kind: ThrottleKind | None
) -> None:
    def build(pipe: store.Pipe) -> None:
        store.observe(pipe, UPSTREAM_LATENCY, seconds, (endpoint, outcome))
        if kind is not None:
            store.add(pipe, UPSTREAM_429, (endpoint, kind))

    writer.send(build)


# --- jobs -------------------------------------------------------------------------------------


def job_ended(end: Ended) -> None:
    """A job reached a terminal status (``ends.announce``)."""
    code = end.error_code.value if end.error_code is not None else "none"
    at = time.time()  # the minute it ended, not the minute it is written

    def build(pipe: store.Pipe) -> None:
        store.add(pipe, JOBS_ENDED, (end.status.value, code))
        store.ended(pipe, end.status.value, code, at)

    writer.send(build)


def poll_ended(ticket: PollTicket, duration_ms: int | None) -> None:
    """A poll found the job's upstream task ended and stored it: polls it took, and (for a
    task that said how long it ran) the detection lag.

    The upstream's end is ``submitted_at + duration``: ``submitted_at`` is when the worker
    recorded the POST's answer, so it is at most the answer's transit later than the
    upstream's own start, and the lag is a slight underestimate rather than one inflated by
    a slow POST. Both clocks are PostgreSQL's (``now() - submitted_at`` at the poll's
    claim), plus this process's monotonic time since the claim: no host clocks compared.
    """
    lag: float | None = None
    if duration_ms is not None and ticket.submitted_ago is not None:
        since_claim = time.monotonic() - ticket.claimed_at
        lag = max(0.0, ticket.submitted_ago + since_claim - duration_ms / 1000.0)

    def build(pipe: store.Pipe) -> None:
        store.observe(pipe, POLLS_PER_JOB, float(ticket.seq))
        if lag is not None:
            store.observe(pipe, DETECTION_LAG, lag)

    writer.send(build)


def swept(actions: Mapping[str, int]) -> None:
    """What one sweep did (``jobs.service.sweep``'s counts); nothing is written for zeros."""
    done = {action: n for action, n in actions.items() if n}
    if not done:
        return

    def build(pipe: store.Pipe) -> None:
        for action, n in done.items():
            store.add(pipe, SWEEPER_ACTIONS, (action,), n)

    writer.send(build)


# --- the broker boundary ----------------------------------------------------------------------

#: How ``broker.Drop`` reasons begin or what they contain, in the order they are tried.
_DROP_PATTERNS: Final = (
    ("over the", DropReason.OVERSIZED),
    ("not a message envelope", DropReason.NOT_AN_ENVELOPE),
    ("protocol", DropReason.PROTOCOL),
    ("is not accepted on", DropReason.WRONG_TASK),
    ("task id", DropReason.NO_TASK_ID),
    ("content type", DropReason.CONTENT_TYPE),
    ("linked tasks", DropReason.LINKED_TASKS),
    ("signature", DropReason.SIGNATURE),
    ("could not be screened", DropReason.UNSCREENABLE),
    ("eta or expires", DropReason.HEADERS),
    ("retries", DropReason.HEADERS),
    ("body", DropReason.BODY),
    ("args", DropReason.BODY),
    ("kwargs", DropReason.BODY),
    ("headers", DropReason.HEADERS),
    ("properties", DropReason.HEADERS),
)


def drop_reason(reason: str) -> DropReason:
    """The class of a drop's reason text (the text itself never becomes a label)."""
    text = reason.lower()
    for needle, kind in _DROP_PATTERNS:
        if needle in text:
            return kind
    return DropReason.OTHER


def message_dropped(reason: str | DropReason) -> None:
    """The broker boundary dropped an entry it had no job to record on."""
    kind = reason if isinstance(reason, DropReason) else drop_reason(reason)
    writer.send(lambda pipe: store.add(pipe, MESSAGES_DROPPED, (kind,)))
