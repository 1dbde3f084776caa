"""Worker-side series aggregated in Redis: every process adds into shared hashes, the
exporter reads them at scrape time.

Why Redis: workers run as many processes on many hosts, each living for hours or seconds;
counters kept in process memory would need every process to be scraped (or a push gateway)
and would vanish with the process. Redis is already shared by every worker, and a
``HINCRBY`` is atomic, so a sum over all processes is simply the hash's value.

Layout (all under ``imagegen:metrics:``)::

    series              HASH  "<name>\\t<k=v,...>\\t<part>" -> number
                              part: "" for a counter; "b<i>" a histogram bucket (not
                              cumulative; i = len(buckets) is +Inf), "sum", "count"
    ended:<unix minute> HASH  "<status>\\t<error_code>" -> jobs that ended in that minute
                              (expires after two hours: ``imagegen top``'s last hour)

The workers' writer collects observations in memory and a thread of its own writes them
every ``FLUSH_EVERY_SECONDS`` in one pipelined round trip (and at exit): a job never waits
for a metrics write (the round trip per call cost a tenth of the workers' throughput). A
killed process loses at most that last second of observations. Writes never break a job: a
short socket timeout, every error swallowed, writes skipped for a few seconds after a
failure, and one warning a minute at most.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from redis import Redis

from .series import Series

log = logging.getLogger("imagegen.metrics")

KEY: Final = "imagegen:metrics:series"
ENDED_KEY: Final = "imagegen:metrics:ended:{minute}"
ENDED_TTL_SECONDS: Final = 2 * 3600
#: Socket timeout of a metrics write: a Redis that hangs costs a job at most this, once.
WRITE_TIMEOUT_SECONDS: Final = 0.25
#: After a failed write, writes are skipped this long (an outage costs jobs nothing).
HOLD_OFF_SECONDS: Final = 5.0
WARN_EVERY_SECONDS: Final = 60.0
#: How often a buffering writer sends what it collected.
FLUSH_EVERY_SECONDS: Final = 1.0
#: Observations a buffering writer keeps at most between flushes (a Redis outage drops them).
MAX_PENDING: Final = 100_000
_LABEL_VALUE: Final = re.compile(r"[a-z0-9_]{1,40}")
OTHER: Final = "other"

Pipe = Any  # redis.client.Pipeline (generic in the stubs, untyped at run time)


def label_value(value: object) -> str:
    """``value`` as a label value: known enum values pass, anything else is ``other``."""
    text = str(value)
    return text if _LABEL_VALUE.fullmatch(text) else OTHER


def _field(series: Series, labels: tuple[str, ...], part: str) -> str:
    pairs = ",".join(f"{k}={label_value(v)}" for k, v in zip(series.labels, labels, strict=True))
    return f"{series.name}\t{pairs}\t{part}"


def add(pipe: Pipe, series: Series, labels: tuple[str, ...] = (), amount: int = 1) -> None:
    """Queue ``amount`` added to a counter."""
    pipe.hincrby(KEY, _field(series, labels, ""), amount)


def observe(pipe: Pipe, series: Series, value: float, labels: tuple[str, ...] = ()) -> None:
    """Queue one observation of a histogram."""
    assert series.buckets is not None
    index = bisect.bisect_left(series.buckets, value)  # the first bound >= value ("le")
    pipe.hincrby(KEY, _field(series, labels, f"b{index}"), 1)
    pipe.hincrby(KEY, _field(series, labels, "count"), 1)
    pipe.hincrbyfloat(KEY, _field(series, labels, "sum"), value)


def ended(pipe: Pipe, status: str, error_code: str, at: float) -> None:
    """Queue one job's end in its minute's hash."""
    key = ENDED_KEY.format(minute=int(at // 60))
    pipe.hincrby(key, f"{label_value(status)}\t{label_value(error_code)}", 1)
    pipe.expire(key, ENDED_TTL_SECONDS)


class Writer:
    """A process's metrics writes: one Redis client per process, failures swallowed.

    With ``flush_every``, :meth:`send` only collects, and a daemon thread of this process
    writes what was collected that often (and once more at exit); without, each
    :meth:`send` is a round trip of its own.
    """

    def __init__(
        self,
        url: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
        *,
        flush_every: float | None = None,
    ):
        self._url = url
        self._clock = clock
        self._client: tuple[int, Redis] | None = None
        self._skip_until = 0.0
        self._warned_at: float | None = None
        self._lock = threading.Lock()
        self._flush_every = flush_every
        self._pending: list[Callable[[Pipe], None]] = []
        self._flusher_pid: int | None = None

    def _redis(self) -> Redis:
        current = self._client
        if current is None or current[0] != os.getpid():  # a prefork child opens its own
            with self._lock:
                current = self._client
                if current is None or current[0] != os.getpid():
                    client = Redis.from_url(
                        self._url(),
                        socket_timeout=WRITE_TIMEOUT_SECONDS,
                        socket_connect_timeout=WRITE_TIMEOUT_SECONDS,
                    )
                    current = self._client = (os.getpid(), client)
        return current[1]

    def send(self, build: Callable[[Pipe], None]) -> None:
        """Run the commands ``build`` queues (now, or at the next flush); never raises."""
        if self._flush_every is None:
            self._write([build])
            return
        with self._lock:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(build)
            if self._flusher_pid != os.getpid():  # a prefork child starts its own
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_forever, daemon=True).start()
                atexit.register(self.flush)

    def flush(self) -> None:
        """Write what was collected, in one round trip."""
        with self._lock:
            builds, self._pending = self._pending, []
        if builds:
            self._write(builds)

    def _flush_forever(self) -> None:
        assert self._flush_every is not None
        while True:
            time.sleep(self._flush_every)
            self.flush()

    def _write(self, builds: list[Callable[[Pipe], None]]) -> None:
        now = self._clock()
        if now < self._skip_until:
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            for build in builds:
                build(pipe)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - a metric must never break a job
            self._skip_until = now + HOLD_OFF_SECONDS
            if self._warned_at is None or now - self._warned_at >= WARN_EVERY_SECONDS:
                self._warned_at = now
                log.warning(
                    "metrics not recorded (%s); skipping writes for %.0f s",
                    type(exc).__name__,
                    HOLD_OFF_SECONDS,
                )

    def reset(self) -> None:
        """Forget the client (tests; settings changed)."""
        self._client = None
        self._skip_until = 0.0


# --- reading (the exporter, imagegen top) ----------------------------------------------------


@dataclass
class Histogram:
    """One label set of a histogram, summed over every process."""

    buckets: list[int]  # not cumulative; the last one is +Inf
    sum: float = 0.0
    count: int = 0


@dataclass
class Stored:
    """Every worker-side series as Redis holds it now."""

    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    histograms: dict[str, dict[tuple[str, ...], Histogram]] = field(default_factory=dict)


def read(redis: Redis, known: Mapping[str, Series]) -> Stored:
    """Every value of the ``known`` series (fields of unknown series are ignored)."""
    stored = Stored()
    raw: dict[bytes, bytes] = redis.hgetall(KEY)  # type: ignore[assignment]
    for key, value in raw.items():
        try:
            name, pairs, part = key.decode().split("\t")
        except ValueError:
            continue
        series = known.get(name)
        if series is None:
            continue
        labels = tuple(p.split("=", 1)[1] for p in pairs.split(",")) if pairs else ()
        if len(labels) != len(series.labels):
            continue
        number = float(value)
        if series.buckets is None:
            if part == "":
                stored.counters.setdefault(name, {})[labels] = number
            continue
        one = stored.histograms.setdefault(name, {}).setdefault(
            labels, Histogram([0] * (len(series.buckets) + 1))
        )
        if part == "sum":
            one.sum = number
        elif part == "count":
            one.count = int(number)
        elif part.startswith("b") and part[1:].isdigit() and int(part[1:]) < len(one.buckets):
            one.buckets[int(part[1:])] = int(number)
    return stored


def ended_since(redis: Redis, minutes: int, now: float) -> dict[tuple[str, str], int]:
    """Jobs that ended in the last ``minutes`` minutes (the current one included), by status
    and code."""
    current = int(now // 60)
    pipe = redis.pipeline(transaction=False)
    for minute in range(current - minutes + 1, current + 1):
        pipe.hgetall(ENDED_KEY.format(minute=minute))
    totals: dict[tuple[str, str], int] = {}
    for one in pipe.execute():
        for key, value in one.items():
            status, _, code = key.decode().partition("\t")
            totals[(status, code)] = totals.get((status, code), 0) + int(value)
    return totals
