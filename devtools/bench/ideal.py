"""The ideal schedule of a run and where its slots stood idle: pure arithmetic on the
simulator's task records, so a benchmark's efficiency can be checked by hand."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


def ideal_makespan(tasks: Sequence[tuple[float, float]], slots: int) -> float:
    """Seconds the same upstream work takes on ``slots`` slots with zero detection lag.

    ``tasks`` are (created_at, duration) of the accepted upstream tasks. They are taken in
    the order they were created and list-scheduled greedily from t0 (the first creation):
    each starts the moment the earliest slot frees, as if a backlog were waiting and every
    end were seen at once. The answer is the last end minus t0.
    """
    if slots < 1:
        raise ValueError("slots must be at least 1")
    if not tasks:
        return 0.0
    ordered = sorted(tasks, key=lambda task: task[0])
    t0 = ordered[0][0]
    free_at = [t0] * slots  # a heap of the times each slot frees
    last = t0
    for _, duration in ordered:
        end = heapq.heappop(free_at) + duration
        heapq.heappush(free_at, end)
        last = max(last, end)
    return last - t0


@dataclass(frozen=True)
class Gap:
    """One stretch a slot stood idle between two tasks: ``start`` and ``end`` in seconds
    from t0 (the upstream end of one task, the creation of the task that took its slot)."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        """Length of the gap."""
        return self.end - self.start


@dataclass(frozen=True)
class IdleBreakdown:
    """Where ``limit x makespan - busy`` went: before the first tasks, between one task's end
    and the next task on its slot (handoffs), and after the last ends until the run's end."""

    total: float
    start: float
    handoffs: list[Gap]
    tail: float

    @property
    def handoff_total(self) -> float:
        """Idle slot-seconds spent in handoffs."""
        return sum(gap.seconds for gap in self.handoffs)

    def largest(self, count: int) -> list[Gap]:
        """The ``count`` longest handoff gaps, longest first."""
        return sorted(self.handoffs, key=lambda gap: gap.seconds, reverse=True)[:count]


def idle_breakdown(
    intervals: Sequence[tuple[float, float]], slots: int, t0: float, end: float
) -> IdleBreakdown:
    """Split the slots' idle time over [t0, end] given the tasks' (created_at, ends_at).

    With at most ``slots`` tasks at once, the k-th creation (k >= slots) needs the
    (k - slots)-th end (both in time order) to have happened: pairing them chains the tasks
    into ``slots`` valid slot histories, whose gaps add up to the total idle time exactly.
    """
    starts = sorted(created for created, _ in intervals)
    ends = sorted(ended for _, ended in intervals)
    busy = sum(ended - created for created, ended in intervals)
    first = sum(start - t0 for start in starts[:slots]) + (slots - len(starts[:slots])) * (end - t0)
    handoffs = [
        Gap(ends[k - slots] - t0, starts[k] - t0) for k in range(slots, len(starts))
    ]  # fmt: skip
    tail = sum(end - ended for ended in ends[len(ends) - min(slots, len(ends)) :])
    return IdleBreakdown(total=slots * (end - t0) - busy, start=first, handoffs=handoffs, tail=tail)
