"""When to look at a running upstream task next."""

from __future__ import annotations

import random

from worker.config import Settings


def poll_delay(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before poll number ``attempt`` (0 = the first poll after submit).

    The first poll waits about as long as the upstream usually takes; later ones start
    short and grow geometrically up to the cap. Jitter keeps a burst of jobs submitted
    together from polling in lockstep.
    """
    if attempt <= 0:
        base = settings.poll_initial_seconds
    else:
        base = min(
            settings.poll_max_interval_seconds,
            # (the exponent is capped: a poll chain may run for days)
            settings.poll_interval_seconds * settings.poll_backoff ** min(attempt - 1, 64),
        )
    spread = base * settings.poll_jitter
    return max(0.05, base + (rng or random).uniform(-spread, spread))


def retry_delay(attempt: int, settings: Settings, floor: float | None = None) -> float:
    """Seconds before retrying a call that failed transiently for the ``attempt``-th time."""
    delay = min(settings.retry_max_interval_seconds, 0.5 * 2 ** min(max(0, attempt), 30))
    delay = random.uniform(delay / 2, delay)
    return max(delay, floor or 0.0)
