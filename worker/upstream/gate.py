"""The upstream's team-wide request budget, shared by every worker through Redis.

Concurrency slots live in PostgreSQL (``jobs.admit``): a slot is a job row in
``submitting``, ``pending`` or ``processing``, so a crashed worker's slot comes back when
its job ends, and nothing has to be "released" by hand. The request rate and the upstream's
"back off" signals live here, in Redis, because they are short-lived and must be shared.
"""

from __future__ import annotations

import uuid
from typing import Final

from redis import Redis

# A sliding log: at most ``limit`` requests in any ``window`` ms, exactly like a rolling
# per-minute quota (a token bucket would allow a burst the upstream then rejects).
# Redis' own clock is used, so workers on hosts with skewed clocks agree.
_ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return paused - now end
local limit = tonumber(ARGV[1])
if limit <= 0 then return 0 end
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""
_PAUSE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
end
return until_ms
"""
_PAUSED_FOR: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return math.max(0, tonumber(redis.call('GET', KEYS[1]) or '0') - now)
"""
_USED: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
"""
# The upstream's window is 60 s; a second of margin absorbs network delay between the two.
WINDOW_MS: Final = 61_000


class UpstreamGate:
    """Every worker's permission to send one request to the upstream now."""

    def __init__(self, redis: Redis, *, rpm: int, prefix: str = "imagegen:upstream") -> None:
        self._rpm = rpm
        self._keys = [f"{prefix}:requests", f"{prefix}:paused_until"]
        self._acquire = redis.register_script(_ACQUIRE)
        self._pause = redis.register_script(_PAUSE)
        self._paused_for = redis.register_script(_PAUSED_FOR)
        self._used = redis.register_script(_USED)

    @property
    def budget(self) -> int:
        """Requests allowed in any window (0: the limiter is off)."""
        return self._rpm

    def acquire(self) -> float:
        """Take one request from the budget: 0.0 to go now, else seconds to wait first."""
        wait_ms = self._acquire(keys=self._keys, args=[self._rpm, WINDOW_MS, uuid.uuid4().hex])
        return int(wait_ms) / 1000.0

    def pause(self, seconds: float) -> None:
        """Hold every worker's requests for ``seconds`` (the upstream said back off)."""
        self._pause(keys=self._keys[1:], args=[max(1, int(seconds * 1000))])

    def paused_for(self) -> float:
        """Seconds left of a pause, 0.0 when none."""
        return int(self._paused_for(keys=self._keys[1:])) / 1000.0

    def used(self) -> int:
        """Requests counted against the budget in the current window; takes no token.

        Read-only: counts the entries ``acquire`` would still see (newer than the window),
        without trimming the log.
        """
        return int(self._used(keys=self._keys[:1], args=[WINDOW_MS]))
