"""Unit tests of the benchmarks' ideal schedule and idle breakdown (devtools/bench/ideal.py)."""

from __future__ import annotations

import pytest

from devtools.bench.ideal import Gap, ideal_makespan, idle_breakdown


def test_ideal_makespan_hand_checked() -> None:
    # Two slots from t0 = 100, tasks taken in creation order, each on the slot that frees
    # first: 4 s -> [100, 104]; 2 s -> [100, 102]; 3 s starts at 102 -> 105; 1 s starts at
    # 104 -> 105. The last end is 105, so 5 s.
    tasks = [(100.0, 4.0), (100.5, 2.0), (101.0, 3.0), (103.0, 1.0)]
    assert ideal_makespan(tasks, 2) == pytest.approx(5.0)


def test_ideal_makespan_takes_tasks_in_creation_order() -> None:
    tasks = [(103.0, 1.0), (101.0, 3.0), (100.0, 4.0), (100.5, 2.0)]
    assert ideal_makespan(tasks, 2) == pytest.approx(5.0)
    # Creation times only order the tasks: a late first-created one still starts at t0's
    # slot, with zero gap, like a backlog that waits.
    assert ideal_makespan([(0.0, 2.0), (50.0, 2.0)], 1) == pytest.approx(4.0)


def test_ideal_makespan_edge_cases() -> None:
    assert ideal_makespan([], 3) == 0.0
    assert ideal_makespan([(5.0, 1.5), (6.0, 2.5), (7.0, 3.0)], 1) == pytest.approx(7.0)
    # More slots than tasks: the longest task decides.
    assert ideal_makespan([(0.0, 1.0), (0.0, 6.0)], 3) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="slots"):
        ideal_makespan([(0.0, 1.0)], 0)


def test_idle_breakdown_hand_checked() -> None:
    # Two slots over [0, 7]: busy 4 + 2 + 3 + 0.5 = 9.5 of 14 slot-seconds, 4.5 idle.
    # Starts 0, 0.5 | 3, 4.5; ends 2.5, 4 | 5, 6. Start idle 0 + 0.5; the creation at 3
    # takes the slot freed at 2.5 and the one at 4.5 the slot freed at 4 (0.5 each); the
    # tail is (7 - 5) + (7 - 6) = 3.
    intervals = [(0.0, 4.0), (0.5, 2.5), (3.0, 6.0), (4.5, 5.0)]
    idle = idle_breakdown(intervals, 2, t0=0.0, end=7.0)
    assert idle.total == pytest.approx(4.5)
    assert idle.start == pytest.approx(0.5)
    assert idle.handoffs == [Gap(2.5, 3.0), Gap(4.0, 4.5)]
    assert idle.handoff_total == pytest.approx(1.0)
    assert idle.tail == pytest.approx(3.0)
    assert idle.start + idle.handoff_total + idle.tail == pytest.approx(idle.total)


def test_idle_breakdown_largest_and_unused_slots() -> None:
    intervals = [(10.0, 12.0), (12.5, 14.0), (17.0, 18.0)]
    idle = idle_breakdown(intervals, 1, t0=10.0, end=18.0)
    assert [gap.seconds for gap in idle.largest(1)] == pytest.approx([3.0])
    assert idle.largest(1)[0].start == pytest.approx(4.0)
    # A slot that never ran a task is idle for the whole run.
    idle = idle_breakdown([(0.0, 2.0)], 3, t0=0.0, end=2.0)
    assert idle.total == pytest.approx(4.0)
    assert idle.start + idle.handoff_total + idle.tail == pytest.approx(4.0)
