"""Every worker-side series, defined once: names, HELP texts, labels, histogram buckets.

Workers add their observations into one Redis hash (``store``); the exporter renders the
same definitions at scrape time. A value that is not a known label value is recorded as
``other``, so no text from a message or the upstream can reach a label.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

PREFIX: Final = "imagegen_"


@dataclass(frozen=True)
class Series:
    """A counter (``buckets`` None) or a histogram aggregated across every process."""

    name: str  # full Prometheus name, without _total / _bucket suffixes
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    @property
    def histogram(self) -> bool:
        """True for a histogram."""
        return self.buckets is not None


class Endpoint(StrEnum):
    """The upstream's two endpoints the workers call."""

    SUBMIT = "submit"
    TASK = "task"


class Outcome(StrEnum):
    """How an upstream request ended, by class."""

    OK = "2xx"
    CLIENT_ERROR = "4xx"
    THROTTLED = "429"
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    NETWORK = "network"
    OTHER = "other"  # 1xx/3xx: never expected (redirects are not followed)


class ThrottleKind(StrEnum):
    """Why the upstream answered 429 (its message's category, see the upstream contract)."""

    RATE = "rate"  # "Rate limit exceeded": the team's requests per minute
    CONCURRENCY = "concurrency"  # "Concurrent limit exceeded": the team's running tasks
    UNKNOWN = "unknown"


class DropReason(StrEnum):
    """Why the broker boundary dropped a queue entry (classes of ``broker.Drop`` reasons)."""

    OVERSIZED = "oversized"
    NOT_AN_ENVELOPE = "not_an_envelope"
    PROTOCOL = "protocol"
    WRONG_TASK = "wrong_task"
    NO_TASK_ID = "no_task_id"
    CONTENT_TYPE = "content_type"
    BODY = "body"
    LINKED_TASKS = "linked_tasks"
    SIGNATURE = "signature"
    HEADERS = "headers"
    UNSCREENABLE = "unscreenable"
    FANOUT = "fanout"  # a malformed remote-control or event message
    OTHER = "other"


UPSTREAM_LATENCY: Final = Series(
    f"{PREFIX}upstream_request_duration_seconds",
    "Upstream HTTP request latency, by endpoint (submit, task) and outcome class.",
    ("endpoint", "outcome"),
    (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
UPSTREAM_429: Final = Series(
    f"{PREFIX}upstream_throttled",
    "Upstream 429 answers, by endpoint and kind (rate: requests per minute; "
    "concurrency: running tasks).",
    ("endpoint", "kind"),
)
POLLS_PER_JOB: Final = Series(
    f"{PREFIX}job_polls",
    "Task queries made for a job whose upstream task ended (observed when it is stored).",
    (),
    (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0),
)
DETECTION_LAG: Final = Series(
    f"{PREFIX}detection_lag_seconds",
    "From the upstream task's end (submitted_at + duration) to its results stored.",
    (),
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0),
)
SWEEPER_ACTIONS: Final = Series(
    f"{PREFIX}sweeper_actions",
    "What the sweeper did, by kind (expired, republished, outcome_unknown, admitted, deliveries).",
    ("action",),
)
MESSAGES_DROPPED: Final = Series(
    f"{PREFIX}messages_dropped",
    "Broker entries dropped as malformed or forged (no job to record them on), by reason.",
    ("reason",),
)
JOBS_ENDED: Final = Series(
    f"{PREFIX}jobs_ended",
    "Jobs that reached a terminal status, by status and error code (none when succeeded).",
    ("status", "error_code"),
)
#: Every series the workers write, by name.
ALL: Final = {
    s.name: s
    for s in (
        UPSTREAM_LATENCY,
        UPSTREAM_429,
        POLLS_PER_JOB,
        DETECTION_LAG,
        SWEEPER_ACTIONS,
        MESSAGES_DROPPED,
        JOBS_ENDED,
    )
}
