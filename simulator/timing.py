"""Task durations: fixed (exact knobs) or lognormal, drawn from a dedicated, seedable RNG.

A task's life is a pending phase followed by a processing phase. Under ``timing=fixed`` they
last ``pending_seconds`` and ``processing_seconds`` exactly (the historic behaviour). Under
``timing=lognormal`` the whole task duration is drawn around ``duration_median_seconds``
with log-spread ``duration_sigma``, and the pending phase, drawn on its own around
``pending_median_seconds`` with ``pending_sigma``, is carved out of it (capped at the whole
duration, so a task never ends before it starts processing).

Both modes scale the work by ``n ** n_exponent`` and by
``(width * height / 1024**2) ** pixel_exponent``; the exponents default to 0 (no scaling).
A drawn duration is clamped to ``max_seconds`` so a lognormal tail cannot stall a benchmark
(fixed durations are what was asked for, however long).
"""

import math
import random

from simulator.config import SimConfig

REFERENCE_PIXELS = 1024 * 1024


def work_scale(config: SimConfig, n: int, width: int, height: int) -> float:
    """Factor for a task of n images of width x height relative to one 1024 x 1024 image."""
    scale = 1.0
    if config.n_exponent:
        scale *= max(1, n) ** config.n_exponent
    if config.pixel_exponent:
        scale *= (max(1, width * height) / REFERENCE_PIXELS) ** config.pixel_exponent
    return scale


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    # sigma 0 returns the median exactly (exp(log(m)) may be off by an ulp) and draws
    # nothing, so a degenerate distribution does not advance the RNG.
    if sigma == 0:
        return median
    return rng.lognormvariate(math.log(median), sigma)


def draw_durations(
    config: SimConfig, rng: random.Random, n: int, width: int, height: int
) -> tuple[float, float]:
    """(pending, processing) seconds for one new task under the current config."""
    scale = work_scale(config, n, width, height)
    cap = config.max_seconds
    if config.timing == "fixed":  # exactly what was asked (the cap is for random tails)
        return config.pending_seconds, config.processing_seconds * scale
    # Draw order is fixed (total, then pending) so one seed gives one sequence.
    total = min(_lognormal(rng, config.duration_median_seconds * scale, config.duration_sigma), cap)
    pending = min(_lognormal(rng, config.pending_median_seconds, config.pending_sigma), total)
    return pending, total - pending
