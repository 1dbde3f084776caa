"""Where polls and slot probes go: the learned durations and the schedule built on them."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import httpx
import pytest

from worker.config import Settings
from worker.jobs import decisions
from worker.jobs.durations import Durations
from worker.jobs.schedule import (
    COLD_POLL_SPLIT,
    COLD_PROBE_SPLIT,
    POLL_HIT,
    POLL_HIT_BACKLOG,
    PROBE_MIN_SHARE,
    PROBE_SHARE,
    Pressure,
    next_poll,
    poll_delay,
    probe_delay,
    put_off,
)
from worker.upstream.client import RetryableError, UpstreamError
from worker.upstream.gate import WINDOW_MS

RNG_SEED = 20261202


def lognormal(median: float, sigma: float, n: int = 500) -> Durations:
    rng = random.Random(RNG_SEED)
    return Durations.of([rng.lognormvariate(math.log(median), sigma) for _ in range(n)])


#: The shipped values, given explicitly: the environment of a test run may set others.
SHIPPED: dict[str, object] = {
    name: Settings.model_fields[name].default
    for name in (
        "poll_initial_seconds", "poll_interval_seconds", "poll_backoff",
        "poll_max_interval_seconds", "poll_adaptive", "slot_probes", "upstream_rpm",
        "upstream_concurrency", "visibility_timeout_seconds", "retry_max_interval_seconds",
        "stale_after_seconds", "read_timeout",
    )
}  # fmt: skip


def settings(**overrides: object) -> Settings:
    values = {**SHIPPED, "poll_jitter": 0, **overrides}
    return Settings(modellix_api_key="k", **values)  # type: ignore[arg-type]


# --- the learned distribution -------------------------------------------------------------


def test_survival_and_quantile_are_inverse_and_interpolated() -> None:
    d = Durations.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert d.samples == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert d.quantile(0.5) == 3.0
    assert d.quantile(0.125) == pytest.approx(1.5)
    assert d.survival(0.5) == 1.0
    assert d.survival(1.5) == pytest.approx(0.875)
    assert d.survival(5.0) == 0.0
    for p in (0.1, 0.3, 0.5, 0.9):
        assert d.survival(d.quantile(p)) == pytest.approx(1 - p)


def test_after_conditions_on_the_task_still_running() -> None:
    d = Durations.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d.after(0.0, 0.5) == pytest.approx(3.0)
    # still running at 3 s: half of what is left ends by 4 s
    assert d.after(3.0, 0.5) == pytest.approx(4.0)
    assert d.after(5.0, 0.5) is None  # older than every known task


def test_first_end_of_several_tasks_comes_sooner_than_of_one() -> None:
    d = lognormal(8, 0.5)
    one = d.first_end([0.0], 0.5, 120)
    three = d.first_end([0.0, 0.0, 0.0], 0.5, 120)
    assert one is not None and three is not None
    assert one == pytest.approx(d.quantile(0.5), rel=0.01)
    assert three < one
    # P(min of three <= t) = 1 - S(t)^3 = 0.5
    assert d.survival(three) ** 3 == pytest.approx(0.5, abs=0.01)
    # a task past every known duration is left out: the others plan the probe
    assert d.first_end([100.0], 0.5, 120) is None
    assert d.first_end([100.0, 0.0, 0.0], 0.5, 120) == pytest.approx(
        d.first_end([0.0, 0.0], 0.5, 120)
    )
    assert d.first_end([], 0.5, 120) is None
    assert Durations.of([50.0] * 8).first_end([0.0], 0.5, 10) is None  # past the horizon


# --- polls ----------------------------------------------------------------------------------


def test_without_learned_durations_the_configured_schedule_holds() -> None:
    s = settings()
    assert next_poll(0, 0.0, s, None) == poll_delay(0, s)
    assert next_poll(3, 5.0, s, None) == poll_delay(3, s)
    off = settings(poll_adaptive=False)
    assert next_poll(0, 0.0, off, lognormal(8, 0.5)) == poll_delay(0, off)


def test_the_first_poll_goes_where_most_tasks_have_ended() -> None:
    d = lognormal(8, 0.5)
    first = next_poll(0, 0.0, settings(), d)
    assert first == pytest.approx(d.quantile(POLL_HIT), rel=0.01)
    assert 8.0 < first < 10.5  # the 60th percentile of a median of 8 s


def test_learned_jitter_only_ever_places_a_poll_later() -> None:
    # Where durations barely vary, a poll a moment before the usual end finds the task
    # running and the next look is an interval later; one a moment after costs the moment.
    d = Durations.of([2.0] * 50)
    s = settings(poll_jitter=0.2)
    rng = random.Random(RNG_SEED)
    firsts = [next_poll(0, 0.0, s, d, Pressure(0, 3), rng) for _ in range(500)]
    assert min(firsts) >= 2.0
    assert max(firsts) <= 2.0 + 2.0 * 0.2 / 4 + 1e-9  # a quarter of the jitter, at most
    assert len({round(f, 6) for f in firsts}) > 100  # still spread: no lockstep
    # (the configured schedule's jitter stays both ways: it is the user's setting)
    assert min(poll_delay(0, s, rng) for _ in range(500)) < s.poll_initial_seconds


def test_later_polls_follow_the_learned_spread() -> None:
    d = lognormal(8, 0.5)
    s = settings()
    age, times = 0.0, []
    for attempt in range(6):
        age += next_poll(attempt, age, s, d)
        times.append(age)
    # each poll finds the task ended with probability ~0.6 given it was running before
    for before, at in itertools.pairwise(times):
        hit = 1 - d.survival(at) / d.survival(before)
        assert hit == pytest.approx(POLL_HIT, abs=0.1) or at - before in (
            s.poll_interval_seconds,
            s.poll_max_interval_seconds,
        )
    # expected polls per task when tasks follow the learned distribution
    rng = random.Random(1)
    polls = []
    for _ in range(2000):
        true = d.quantile(rng.random())
        n, age, attempt = 0, 0.0, 0
        while True:
            age += next_poll(attempt, age, s, d)
            n, attempt = n + 1, attempt + 1
            if age >= true:
                break
        polls.append(n)
    assert statistics.mean(polls) < 2.2


def test_learned_gaps_keep_the_configured_bounds() -> None:
    s = settings(poll_interval_seconds=2.0, poll_max_interval_seconds=4.0)
    tight = Durations.of([10.0 + i / 100 for i in range(20)])  # all within 0.2 s
    gap = next_poll(1, 10.05, s, tight)
    assert gap == 2.0  # never shorter than poll_interval_seconds
    wide = lognormal(30, 1.0)
    assert next_poll(3, 30.0, s, wide) <= 4.0  # later gaps capped by poll_max_interval
    # the first poll may wait as long as tasks take, inside the broker's visibility window
    assert next_poll(0, 0.0, s, Durations.of([60.0] * 10)) == pytest.approx(60.0)
    assert next_poll(0, 0.0, s, Durations.of([900.0] * 10)) == s.visibility_timeout_seconds / 4


def test_a_task_older_than_every_known_one_is_looked_at_as_long_as_it_overran() -> None:
    s = settings()
    d = Durations.of([5.0] * 10)
    # a poll placed at the usual end came a moment early: the next one soon, not after the
    # configured backoff of a fifth poll
    assert next_poll(4, 5.05, s, d) == s.poll_interval_seconds
    assert next_poll(4, 5.05, s, d) < poll_delay(4, s)
    # the gaps grow with the overrun, up to the configured cap
    assert next_poll(4, 8.0, s, d) == pytest.approx(3.0)
    assert next_poll(9, 500.0, s, d) == s.poll_max_interval_seconds


def test_with_nothing_queued_a_late_gap_is_at_most_the_fair_share_of_the_budget() -> None:
    s = settings(upstream_rpm=100)
    d = lognormal(60, 0.8)
    idle = next_poll(1, 70.0, s, d, Pressure(queued=0, holding=3))
    share = WINDOW_MS / 1000 * 3 / 100
    assert idle == pytest.approx(max(s.poll_interval_seconds, share))
    # the first poll still waits for the likely end
    assert next_poll(0, 0.0, s, d, Pressure(0, 3)) == pytest.approx(d.quantile(POLL_HIT))
    unlimited = next_poll(1, 70.0, settings(upstream_rpm=0), d, Pressure(0, 3))
    assert unlimited > idle


def test_with_a_backlog_and_probes_polls_only_fetch_results() -> None:
    d = lognormal(8, 0.5)
    s = settings()
    backlog = next_poll(0, 0.0, s, d, Pressure(queued=5, holding=3))
    assert backlog == pytest.approx(d.quantile(POLL_HIT_BACKLOG))
    assert backlog > next_poll(0, 0.0, s, d, Pressure(queued=0, holding=3))
    no_probes = settings(slot_probes=False)
    assert next_poll(0, 0.0, no_probes, d, Pressure(5, 3)) == pytest.approx(d.quantile(POLL_HIT))


# --- slot probes ---------------------------------------------------------------------------


def test_probes_never_outpace_their_share_of_the_budget() -> None:
    d = lognormal(8, 0.5)
    s = settings(upstream_rpm=100, upstream_concurrency=3)
    floor = WINDOW_MS / 1000 / (100 * PROBE_SHARE)
    # three tasks deep in their likely end: as soon as the budget allows
    assert probe_delay([9.0, 9.5, 10.0], s, d) == pytest.approx(floor)
    # three fresh tasks: when one of them has likely ended, but a backlog keeps at least a
    # quarter of the budget looking (an early end is otherwise found late)
    likely = d.first_end([0.0, 0.0, 0.0], 0.2, 120)
    ceiling = WINDOW_MS / 1000 / (100 * PROBE_MIN_SHARE)
    assert likely is not None and likely > ceiling
    assert probe_delay([0.0, 0.0, 0.0], s, d) == pytest.approx(ceiling)
    unlimited = settings(upstream_rpm=0, upstream_concurrency=3)
    assert probe_delay([0.0, 0.0, 0.0], unlimited, d) == pytest.approx(likely)
    # nothing learned: fresh tasks are probed as often as the budget allows...
    assert probe_delay([0.0, 0.0, 0.0], s, None) == pytest.approx(floor)
    # ...and less often as they run without one ending, up to the ceiling a backlog keeps
    assert probe_delay([8.0, 5.0, 4.0], s, None) == pytest.approx(8.0 / COLD_PROBE_SPLIT)
    assert probe_delay([600.0, 590.0, 580.0], s, None) == pytest.approx(ceiling)
    long_ago = probe_delay([600.0, 590.0, 580.0], unlimited, None)
    assert long_ago == unlimited.poll_max_interval_seconds
    # no budget configured: the configured interval is the floor
    assert probe_delay([0.0, 0.0, 0.0], unlimited, None) == s.poll_interval_seconds


def test_a_probe_counts_the_oldest_extra_tasks_as_ended() -> None:
    d = lognormal(8, 0.5)
    s = settings(upstream_rpm=0, upstream_concurrency=3)
    # a fourth task's slot was already found free by an accepted probe: the oldest (30 s,
    # past every likely duration) is taken as that one, not as a task about to end
    assert probe_delay([30.0, 1.0, 1.0, 1.0], s, d) == probe_delay([1.0, 1.0, 1.0], s, d)
    assert probe_delay([1.0, 1.0, 1.0], s, d) > 1.0


def test_before_learning_an_accepted_probe_hurries_the_next_for_tasks_as_old() -> None:
    s = settings(upstream_rpm=1000, upstream_concurrency=3)
    floor = WINDOW_MS / 1000 / (1000 * PROBE_SHARE)
    # three tasks submitted together; a probe was accepted, so one of them (taken as the
    # oldest, 2.27 s) ended: the other two, about as old, are probed again at once
    assert probe_delay([0.01, 2.14, 2.26, 2.27], s, None) == pytest.approx(floor)
    # without an accepted probe the cold pacing holds (a quarter of the oldest's age, capped)
    assert probe_delay([2.14, 2.26, 2.27], s, None) > 2 * floor
    # busy tasks much younger than the one that ended: no hurry beyond the cold pacing
    young = probe_delay([0.5, 0.6, 0.8, 10.0], s, None)
    assert young == probe_delay([0.5, 0.6, 0.8], s, None)
    # ...and within it, the next probe comes when the oldest busy one reaches that age
    assert probe_delay([0.5, 0.6, 3.0, 3.1], s, None) == pytest.approx(max(floor, 0.1))


def _concurrency_429() -> UpstreamError:
    response = httpx.Response(
        429,
        json={"code": 429, "message": "Concurrent limit exceeded: 3 tasks pending or processing"},
        headers={"Retry-After": "7"},
    )
    return RetryableError.from_response(response)


def test_a_refused_probe_pauses_nobody() -> None:
    error = _concurrency_429()
    assert error.concurrency
    probing = decisions.after_submit(error, resubmit_unknown=False, cap=30, probing=True)
    assert probing.answer is decisions.SubmitAnswer.NOT_ACCEPTED
    assert probing.pause is None
    # without probes a concurrency 429 means another client holds the team's slots: wait
    exact = decisions.after_submit(error, resubmit_unknown=False, cap=30)
    assert exact.pause == 7


def test_a_rate_429_still_pauses_everyone_when_probing() -> None:
    response = httpx.Response(
        429, json={"code": 429, "message": "Rate limit exceeded: 100 per minute"}
    )
    error = RetryableError.from_response(response)
    assert not error.concurrency
    decision = decisions.after_submit(error, resubmit_unknown=False, cap=30, probing=True)
    assert decision.pause is not None


def test_before_anything_is_learned_no_task_is_looked_at_younger_than_the_oldest() -> None:
    s = settings()
    # the oldest task still runs at 25 s: a task of 2 s is looked at no sooner than 23 s on
    fresh = next_poll(0, 2.0, s, None, Pressure(queued=0, holding=500, oldest=25.0))
    assert fresh == pytest.approx(23.0)
    # the oldest itself follows the configured schedule while the budget is tight...
    assert next_poll(4, 25.0, s, None, Pressure(0, 500, 25.0)) == poll_delay(4, s)
    # ...and where it is not, no gap is longer than an eighth of its age: the first ends
    # (and the model) are found promptly
    unlimited = settings(upstream_rpm=0)
    assert poll_delay(6, unlimited) > 30.0 / COLD_POLL_SPLIT
    assert next_poll(6, 30.0, unlimited, None, Pressure(0, 500, 30.0)) == 30.0 / COLD_POLL_SPLIT
    # (at least the configured interval apart)
    assert next_poll(2, 3.0, unlimited, None, Pressure(0, 500, 3.0)) == 1.0
    # a task less than an interval younger than the oldest is among the oldest
    assert next_poll(6, 29.5, unlimited, None, Pressure(0, 500, 30.0)) < poll_delay(6, unlimited)
    # nothing at the upstream yet (the first submit): the configured first poll
    assert next_poll(0, 0.0, s, None, Pressure(0, 1, None)) == poll_delay(0, s)
    # bounded by the broker's visibility window
    long_ago = next_poll(0, 0.0, s, None, Pressure(0, 1, 10_000.0))
    assert long_ago == s.visibility_timeout_seconds / 4
    # a later poll's next check is its claim's hold: within the sweeper's patience
    assert next_poll(3, 5.0, s, None, Pressure(0, 1, 10_000.0)) == s.stale_after_seconds


def test_a_poll_placed_on_less_than_is_known_now_is_put_off_without_a_request() -> None:
    s = settings(upstream_rpm=0)
    # nothing learned: a task younger than the oldest still running waits to be as old...
    assert put_off(2.0, s, None, Pressure(0, 500, 25.0)) == pytest.approx(23.0)
    assert put_off(24.5, s, None, Pressure(0, 500, 25.0)) == 0.0  # ...unless within an interval
    assert put_off(2.0, s, None, None) == 0.0
    assert put_off(2.0, s, None, Pressure(0, 1, None)) == 0.0
    # learned since the poll was placed: to where a first poll would go now
    d = lognormal(8, 0.5)
    assert put_off(2.0, s, d, Pressure(0, 3)) == pytest.approx(d.quantile(POLL_HIT) - 2.0)
    assert put_off(2.0, s, d, Pressure(9, 3)) == pytest.approx(d.quantile(POLL_HIT_BACKLOG) - 2.0)
    assert put_off(d.quantile(POLL_HIT) - 0.5, s, d, Pressure(0, 3)) == 0.0  # close enough
    assert put_off(2.0, settings(upstream_rpm=0, poll_adaptive=False), d, Pressure(0, 3)) == 0.0


def test_polls_the_learned_schedule_places_are_never_put_off() -> None:
    s = settings(upstream_rpm=0, poll_jitter=0.2)
    d = lognormal(8, 0.5)
    rng = random.Random(RNG_SEED)
    for pressure in (Pressure(0, 3), Pressure(9, 3)):
        for attempt, age in itertools.product(range(4), (0.0, 3.0, 8.0, 12.0, 40.0)):
            if attempt == 0 and age:
                continue
            at = age + next_poll(attempt, age, s, d, pressure, rng)
            assert put_off(at, s, d, pressure) == 0.0, (attempt, age, pressure)
