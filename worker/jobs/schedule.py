"""When to look at a running upstream task next, and when to probe for a freed slot.

Plain functions of what is known (the learned durations, the job's age, the queue); the
service asks them and schedules the message. Two kinds of request find out that a task ended:

- a **poll** (GET) of one task, placed where that task has likely ended: each poll at the
  time by which it ends with probability :data:`POLL_HIT`, given it was still running at the
  last look. About half the tasks are seen at the first poll, and the gaps follow the
  learned spread instead of a fixed backoff.
- a **slot probe** (``jobs/probes`` in the admission): when a backlog waits and every slot is
  taken, the next queued job is POSTed when at least one running task has ended with
  probability :data:`PROBE_HIT`. The upstream frees a slot the moment a task ends, so an
  accepted probe refills it without waiting for our poll of that task, and a refused one
  ("Concurrent limit exceeded", never charged) costs one request, like a poll.

The configured ``IMAGEGEN_POLL_*`` settings stay in force: they are the whole schedule until
enough durations are learned (and with ``IMAGEGEN_POLL_ADAPTIVE=false``), and bound the
learned one (no gap shorter than ``poll_interval_seconds`` or longer than
``poll_max_interval_seconds``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from worker.config import Settings
from worker.upstream.gate import WINDOW_MS

from .durations import Durations

#: Each learned poll is placed where the task has ended with this probability...
POLL_HIT: Final = 0.6
#: ...or this one while a backlog waits and slot probes find the freed slots: polls then
#: only fetch results, and the requests they save go to the probes.
POLL_HIT_BACKLOG: Final = 0.7
#: A probe is sent when at least one running task has ended with this probability.
PROBE_HIT: Final = 0.2
#: Probes may use this share of the request budget's rate; the rest is for submits and polls.
#: (Pacing them by the window's spare requests instead was measured: fewer refused probes,
#: but slots stood idle longer, efficiency 0.876 against 0.931 on the same seed.)
PROBE_SHARE: Final = 0.8
#: ...and keep looking at this share of it at least, however unlikely an end.
PROBE_MIN_SHARE: Final = 0.25
#: Our books may count this many times the limit of jobs holding slots: accepted probes
#: mean tasks the upstream ended that our polls have not seen yet.
PROBE_BOOKS: Final = 3
#: Before anything is learned, the oldest tasks' polls are at most this fraction of their
#: age apart...
COLD_POLL_SPLIT: Final = 8
#: ...and a probe follows the last one after this fraction of the
#: oldest busy task's age.
COLD_PROBE_SPLIT: Final = 4
#: How far ahead a probe is planned at most (it is planned again after each answer).
PROBE_HORIZON: Final = 120.0


@dataclass(frozen=True)
class Pressure:
    """What waits for the upstream: jobs queued for a slot, jobs holding one."""

    queued: int
    holding: int
    oldest: float | None = None  # age of the oldest task still at the upstream (s)


def poll_delay(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before poll number ``attempt`` (0 = the first poll after submit), on the
    configured schedule.

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


def next_poll(
    attempt: int,
    age: float | None,
    settings: Settings,
    durations: Durations | None,
    pressure: Pressure | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before poll number ``attempt`` of a task started ``age`` seconds ago.

    Learned placement when durations are known (see the module's docstring), else the
    configured schedule. When nothing waits for a slot, no gap after the first poll is
    longer than each holding job's fair share of the request budget: a producer waiting on
    a lone job gets it promptly once it is due, at a cost the budget has spare.
    """
    if not settings.poll_adaptive or age is None:
        return poll_delay(attempt, settings, rng)
    if durations is None:
        return _before_learning(attempt, age, settings, pressure, rng)
    # A backlog that outlasts the running tasks: each of their slots will be taken again
    # (by a probe), so their polls only fetch results. A smaller one drains before they end:
    # their ends are the run's last, and are looked for as when nothing waits.
    backlog = pressure is not None and pressure.queued >= max(1, pressure.holding)
    at = durations.after(age, POLL_HIT_BACKLOG if backlog and settings.slot_probes else POLL_HIT)
    # Older than every known task (at is None): the model holds finished tasks only, so its
    # tail is cut, and where durations barely vary a poll placed at the usual end often lands
    # a moment early. The end is likely near: look again after as long as the task has
    # overrun, so the gaps grow with the overrun (within the bounds below).
    gap = age - durations.samples[-1] if at is None else at - age
    if pressure is not None and not backlog and attempt > 0 and settings.upstream_rpm > 0:
        # a task past its likely end, nothing queued: look as often as its share allows
        share = WINDOW_MS / 1000 * max(1, pressure.holding) / settings.upstream_rpm
        gap = min(gap, max(settings.poll_interval_seconds, share))
    # The first poll may wait as long as tasks take (a countdown must stay well inside the
    # broker's visibility timeout); later gaps keep the configured cap.
    cap = (
        settings.visibility_timeout_seconds / 4
        if attempt <= 0
        else max(settings.poll_max_interval_seconds, settings.poll_initial_seconds)
    )
    gap = min(max(gap, settings.poll_interval_seconds), cap)
    # a little jitter, so that jobs submitted together do not poll in the same millisecond
    # (no more: the placement already follows the spread of the durations, and where they
    # barely vary, a wide jitter would only move polls off the likely end). Only later: a
    # poll a moment late costs that moment, one a moment early finds the task still running
    # and costs a whole interval (measured: the last task of a backlog of 2 s tasks, polled
    # 18 ms before its end, was seen 1.0 s late).
    spread = min(gap * settings.poll_jitter / 4, settings.poll_interval_seconds / 2)
    return gap + (rng or random).uniform(0.0, spread)


def put_off(
    age: float,
    settings: Settings,
    durations: Durations | None,
    pressure: Pressure | None,
) -> float:
    """Seconds to put off the request of a poll that came for a task ``age`` seconds old
    (0: ask now).

    A poll's countdown is fixed when it is sent, on what was known then; by the time it
    comes, more may be known (the first durations of a new deployment, a backlog). A poll
    that comes well before where the first poll of a task would go now is put off to there,
    without a request. Before anything is learned, that is the age of the oldest task still
    running: every task so far took at least that long.
    """
    if not settings.poll_adaptive:
        return 0.0
    if durations is None:
        if pressure is None or pressure.oldest is None:
            return 0.0
        due, slack = pressure.oldest, settings.poll_interval_seconds
    else:
        backlog = pressure is not None and pressure.queued >= max(1, pressure.holding)
        hit = POLL_HIT_BACKLOG if backlog and settings.slot_probes else POLL_HIT
        due = min(durations.quantile(hit), settings.visibility_timeout_seconds / 4)
        # (the model may move a little between a poll's placing and its coming: no message
        # for less than an interval)
        slack = settings.poll_interval_seconds
    wait = due - age
    return wait if wait > slack else 0.0


def _before_learning(
    attempt: int,
    age: float,
    settings: Settings,
    pressure: Pressure | None,
    rng: random.Random | None,
) -> float:
    """Nothing finished yet (a new deployment): the configured schedule, but no task is
    looked at before it reaches the age of the oldest one still running, which says every
    task so far took at least that long. Without it, a first burst of long tasks would be
    polled on the short configured schedule until one of them ends: thousands of polls for
    nothing when thousands are in flight."""
    configured = poll_delay(attempt, settings, rng)
    if pressure is None or pressure.oldest is None:
        return configured
    behind = pressure.oldest - age
    if behind > settings.poll_interval_seconds:
        # (when this poll comes the oldest may still run: put_off then waits again, without
        # a request). A later poll's next check is its claim's hold, so its countdown stays
        # within stale_after_seconds, or the sweeper would send a second chain for it.
        cap = settings.visibility_timeout_seconds / 4
        if attempt > 0:
            cap = min(cap, settings.stale_after_seconds)
        return min(max(configured, behind), cap)
    if attempt <= 0:
        return configured
    # Among the oldest: the first ends are found by these polls, and the model with them.
    # The configured backoff's long gaps would find them late: a gap is at most an eighth of
    # the task's age, as far as each holding job's share of the budget allows (and never
    # longer than the configured one).
    rpm = settings.upstream_rpm
    share = WINDOW_MS / 1000 * max(1, pressure.holding) / rpm if rpm > 0 else 0.0
    return min(configured, max(settings.poll_interval_seconds, share, age / COLD_POLL_SPLIT))


def probe_delay(ages: list[float], settings: Settings, durations: Durations | None) -> float:
    """Seconds before POSTing a slot probe while tasks of these ``ages`` hold every slot.

    ``ages`` may hold more tasks than the limit (some ended unseen: an earlier probe was
    accepted); the oldest are taken as the ended ones. However likely an end, probes are
    spaced to use at most :data:`PROBE_SHARE` of the request budget; the gate still refuses
    any request over it.
    """
    rpm = settings.upstream_rpm
    # (no budget configured: no faster than the configured schedule looks at a task)
    floor = WINDOW_MS / 1000 / (rpm * PROBE_SHARE) if rpm > 0 else settings.poll_interval_seconds
    # However unlikely an end, a backlog keeps a share of the budget looking for one: a
    # task that ends early is otherwise found late.
    ceiling = (
        WINDOW_MS / 1000 / (rpm * PROBE_MIN_SHARE)
        if rpm > 0
        else settings.poll_max_interval_seconds
    )
    busy = sorted(ages)[: settings.upstream_concurrency]
    if durations is None or not busy:
        # Nothing learned yet (the model waits for the longest of the first tasks): the
        # longer the busy tasks have run without one ending, the longer they are likely to
        # take, so probes thin out as they age (each a quarter of the oldest's age after the
        # last: an end is found within a quarter of its duration), up to the ceiling.
        wait = max(busy, default=0.0) / COLD_PROBE_SPLIT
        ended = sorted(ages)[settings.upstream_concurrency :]
        if ended and busy:
            # An accepted probe whose slot's task is not polled yet: some task ended by the
            # youngest of these ages. Busy tasks about as old (submitted with it) are likely
            # ending too: the next probe comes when the oldest of them reaches that age
            # (measured: a brand-new deployment's three 2 s tasks, submitted within 0.13 s,
            # had their second and third slots refilled 0.3 and 0.44 s late, one cold
            # probe gap after the other).
            wait = min(wait, max(0.0, min(ended) - max(busy)))
    else:
        likely = durations.first_end(busy, PROBE_HIT, PROBE_HORIZON)
        wait = ceiling if likely is None else likely
    return max(floor, min(wait, ceiling, settings.poll_max_interval_seconds))


def retry_delay(attempt: int, settings: Settings, floor: float | None = None) -> float:
    """Seconds before retrying a call that failed transiently for the ``attempt``-th time."""
    delay = min(settings.retry_max_interval_seconds, 0.5 * 2 ** min(max(0, attempt), 30))
    delay = random.uniform(delay / 2, delay)
    return max(delay, floor or 0.0)
