"""How long the upstream takes: learned from the tasks every worker finishes.

Each finished job adds the upstream's own ``duration`` (milliseconds from its POST to its
end) to one Redis list, shared by every worker process and host, capped at the last
:data:`KEEP` tasks so the model follows the upstream as it speeds up or slows down. Each
process reads the list at most every :data:`REFRESH_SECONDS`. When the list is missing (Redis
restarted: it keeps nothing on disk), the first reader fills it again from the durations
PostgreSQL keeps for every succeeded job, so what was learned survives restarts of workers
and of Redis.

Until :data:`MIN_SAMPLES` durations are known, :class:`Durations` is ``None`` and polls follow
the configured schedule (``IMAGEGEN_POLL_*``).

One distribution serves every request: the upstream's durations did not depend on the
request's size in anything measured so far (the simulator can scale them by ``n`` and pixels;
a size class per key is the place to add if a real upstream does).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import text

from worker.db import autocommit
from worker.logs import get_logger

log = get_logger("imagegen.jobs")

KEY: Final = "imagegen:upstream:durations"
#: How many of the latest durations the model holds.
KEEP: Final = 500
#: How many it needs before it replaces the configured schedule.
MIN_SAMPLES: Final = 3
#: How stale a process's copy may be...
REFRESH_SECONDS: Final = 5.0
#: ...or, while it holds too little to be used, how often it is read again.
UNLEARNED_REFRESH_SECONDS: Final = 1.0

_RECENT: Final = text(
    "SELECT duration_ms FROM jobs WHERE status = 'succeeded' AND duration_ms > 0 "
    "ORDER BY finished_at DESC LIMIT :keep"
)


@dataclass(frozen=True)
class Durations:
    """An empirical distribution of upstream task durations, in seconds (sorted)."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Durations:
        """The distribution of these durations (any order)."""
        return cls(tuple(sorted(seconds)))

    def survival(self, t: float) -> float:
        """P(duration > t): the sorted samples are the 0, 1/(n-1), ..., 1 points of the
        distribution function, linear between them (the inverse of :meth:`quantile`)."""
        s = self.samples
        n = len(s)
        if n == 1:
            return 1.0 if t < s[0] else 0.0
        if t < s[0]:
            return 1.0
        if t >= s[-1]:
            return 0.0
        i = bisect.bisect_right(s, t) - 1  # s[i] <= t < s[i + 1]
        span = s[i + 1] - s[i]
        frac = (t - s[i]) / span if span > 0 else 1.0
        return 1.0 - (i + frac) / (n - 1)

    def quantile(self, p: float) -> float:
        """The duration below which a share ``p`` of tasks end (interpolated)."""
        s = self.samples
        pos = min(max(p, 0.0), 1.0) * (len(s) - 1)
        i = int(pos)
        if i >= len(s) - 1:
            return s[-1]
        return s[i] + (s[i + 1] - s[i]) * (pos - i)

    def after(self, age: float, p: float) -> float | None:
        """When a task still running at ``age`` ends with probability ``p`` (seconds from
        its start), or None when every known duration is shorter than ``age``."""
        left = self.survival(age)
        if left <= 0.0:
            return None
        # P(D <= t | D > age) = p  <=>  S(t) = S(age) * (1 - p)  <=>  F(t) = 1 - S(age)(1-p)
        return max(age, self.quantile(1.0 - left * (1.0 - p)))

    def first_end(self, ages: Sequence[float], p: float, horizon: float) -> float | None:
        """Seconds from now until, with probability ``p``, at least one of the tasks running
        at ``ages`` has ended (they are independent draws); None if that is past
        ``horizon`` or nothing known says they will end."""
        # A task already past every known duration says nothing the samples can model (the
        # model keeps finished tasks only, so its tail is cut): plan from the others.
        alive = [(a, s) for a in ages if (s := self.survival(a)) > 0.0]
        if not alive:
            return None

        def ended_by(t: float) -> float:
            none = 1.0
            for age, s in alive:
                none *= self.survival(age + t) / s
            return 1.0 - none

        if ended_by(horizon) < p:
            return None
        lo, hi = 0.0, horizon
        for _ in range(30):  # bisection to ~horizon / 1e9
            mid = (lo + hi) / 2
            if ended_by(mid) >= p:
                hi = mid
            else:
                lo = mid
        return hi


class Learned:
    """This process's view of the shared durations, refreshed every few seconds."""

    def __init__(
        self,
        redis: Redis,
        *,
        clock: Callable[[], float] = time.monotonic,
        seed: Callable[[int], list[int]] | None = None,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._seed = seed or _from_database
        self._lock = threading.Lock()
        self._read_at = -REFRESH_SECONDS
        self._current: Durations | None = None
        self._known_since: float | None = None  # (this process's clock)
        self._refilled_at = -REFRESH_SECONDS

    def record(self, duration_ms: int | None) -> None:
        """Add one finished task's duration (shared at once with every worker)."""
        if duration_ms is None or duration_ms <= 0:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.lpush(KEY, int(duration_ms))
            pipe.ltrim(KEY, 0, KEEP - 1)
            pipe.execute()
        except RedisError as exc:  # a lost sample costs nothing
            log.warning("durations.record_failed", error=str(exc))

    def current(self) -> Durations | None:
        """The learned distribution, or None while too little is known."""
        with self._lock:
            now = self._clock()
            # (while too little is known, the first durations are wanted as soon as they come)
            stale = REFRESH_SECONDS if self._current is not None else UNLEARNED_REFRESH_SECONDS
            if now - self._read_at >= stale:
                self._read_at = now
                self._current = self._read()
                if self._current is None:
                    self._known_since = None
                elif self._known_since is None:
                    self._known_since = now
            return self._current

    def known_for(self) -> float:
        """Seconds this process has had a usable model without a break (0: none now)."""
        with self._lock:
            since = self._known_since
            return 0.0 if since is None else self._clock() - since

    def _read(self) -> Durations | None:
        try:
            raw = cast(list[bytes], self._redis.lrange(KEY, 0, KEEP - 1))
            # (after a Redis restart, a finish may come first; PostgreSQL is asked no more
            # often than a learned copy is refreshed)
            now = self._clock()
            if len(raw) < MIN_SAMPLES and now - self._refilled_at >= REFRESH_SECONDS:
                self._refilled_at = now
                raw = self._refill() or raw
        except RedisError as exc:
            log.warning("durations.read_failed", error=str(exc))
            return self._current  # keep what this process knew
        values = [int(v) / 1000.0 for v in raw]
        return Durations.of(values) if len(values) >= MIN_SAMPLES else None

    def _refill(self) -> list[bytes]:
        """Fill the shared list again from PostgreSQL (after Redis lost it)."""
        values = self._seed(KEEP)
        if values:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(KEY)
            pipe.rpush(KEY, *values)  # newest first, as LPUSH leaves them
            pipe.ltrim(KEY, 0, KEEP - 1)
            pipe.execute()
        return [str(v).encode() for v in values]


def _from_database(keep: int) -> list[int]:
    with autocommit() as connection:
        return [int(r[0]) for r in connection.execute(_RECENT, {"keep": keep})]


_process: tuple[int, Learned] | None = None


def for_process(redis: Redis) -> Learned:
    """This process's :class:`Learned` (built on first use, again after a fork)."""
    global _process
    if _process is None or _process[0] != os.getpid():
        _process = (os.getpid(), Learned(redis))
    return _process[1]
