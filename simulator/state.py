"""In-memory simulator state: tasks, per-team rate windows and concurrency heaps, stats."""

import heapq
import math
import secrets
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from simulator.validation import SubmitParams

RATE_WINDOW_SECONDS = 60.0
# Sent as X-RateLimit-Limit/Remaining when rpm_limit is 0 (unlimited): a big number, not 0,
# so clients that back off on Remaining == 0 keep going.
UNLIMITED_HEADER = 1_000_000


@dataclass(slots=True)
class Task:
    """One submitted task; its status is derived from the clock on every read."""

    task_id: str
    team: str
    params: SubmitParams
    seed: int
    created_at: float
    processing_at: float
    ends_at: float
    error: str | None
    request_id: str
    amount: str

    def status(self, now: float) -> str:
        """pending -> processing -> success | failed, purely from timestamps."""
        if now < self.processing_at:
            return "pending"
        if now < self.ends_at:
            return "processing"
        return "failed" if self.error is not None else "success"


@dataclass(slots=True)
class TeamState:
    """Per-team quotas: rolling request window, heap of active end times, balance ledger.

    The ledger holds what the team has spent since the balance was last (re)started: a
    task's cost is reserved at submit, and a task that ends failed is refunded when it ends
    (a heap of (end time, amount), settled lazily like active_ends).
    """

    window: deque[float] = field(default_factory=deque)
    active_ends: list[float] = field(default_factory=list)
    spent: Decimal = Decimal(0)
    refunds: list[tuple[float, Decimal]] = field(default_factory=list)

    def reserve(self, now: float, amount: Decimal, refund_at: float | None) -> None:
        """Charge amount at now; refund it at refund_at (a task known to end failed)."""
        self.settle(now)
        self.spent += amount
        if refund_at is not None:
            heapq.heappush(self.refunds, (refund_at, amount))

    def settle(self, now: float) -> None:
        """Apply the refunds due at now (pops them, amortised O(log n))."""
        refunds = self.refunds
        while refunds and refunds[0][0] <= now:
            self.spent -= heapq.heappop(refunds)[1]

    def remaining(self, now: float, balance: Decimal) -> Decimal:
        """Balance left at now after settling the refunds that are due."""
        self.settle(now)
        return balance - self.spent

    def restart_ledger(self) -> None:
        """Forget past spending and pending refunds: the team has the full balance again."""
        self.spent = Decimal(0)
        self.refunds.clear()

    def active(self, now: float) -> int:
        """Tasks still pending or processing at now (pops finished ones, amortised O(log n))."""
        ends = self.active_ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        return len(ends)

    def next_free(self, now: float) -> int:
        """Whole seconds until the earliest active task ends (at least 1)."""
        return max(1, math.ceil(self.active_ends[0] - now)) if self.active_ends else 1

    def try_request(self, now: float, limit: int) -> bool:
        """Record a request in the rolling window unless that would exceed limit."""
        window = self.window
        horizon = now - RATE_WINDOW_SECONDS
        while window and window[0] <= horizon:
            window.popleft()
        if limit and len(window) >= limit:
            return False
        if limit:
            window.append(now)
        return True

    def rate_headers(self, now: float, limit: int) -> dict[str, str]:
        """X-RateLimit-* headers for this team's current window."""
        if not limit:
            return anonymous_headers(now, limit)
        window = self.window
        reset = window[0] + RATE_WINDOW_SECONDS if window else now + RATE_WINDOW_SECONDS
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - len(window))),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }

    def retry_after(self, now: float) -> int:
        """Whole seconds until the oldest request leaves the window (at least 1)."""
        if not self.window:
            return 1
        return max(1, math.ceil(self.window[0] + RATE_WINDOW_SECONDS - now))


def anonymous_headers(now: float, limit: int) -> dict[str, str]:
    """Rate headers for answers that belong to no team (e.g. failed authentication)."""
    shown = str(limit or UNLIMITED_HEADER)
    return {
        "X-RateLimit-Limit": shown,
        "X-RateLimit-Remaining": shown,
        "X-RateLimit-Reset": str(math.ceil(now + RATE_WINDOW_SECONDS)),
    }


@dataclass
class Stats:
    """Counters exposed at /_sim/stats."""

    submits_accepted: int = 0
    submits_rejected: Counter[str] = field(default_factory=Counter)
    polls: int = 0
    polls_by_status: Counter[str] = field(default_factory=Counter)
    file_downloads: int = 0
    max_concurrency: int = 0
    faults_injected: Counter[str] = field(default_factory=Counter)


class Store:
    """Tasks by id plus per-team quota state; expired tasks are purged lazily."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.teams: dict[str, TeamState] = {}
        self.stats = Stats()
        self._order: deque[str] = deque()

    def team(self, team: str) -> TeamState:
        """The quota state of team, created on first use."""
        state = self.teams.get(team)
        if state is None:
            state = self.teams[team] = TeamState()
        return state

    def create(
        self,
        team: str,
        params: SubmitParams,
        now: float,
        pending: float,
        processing: float,
        error: str | None,
        amount: str,
    ) -> Task:
        """Register a new task and count it against the team's concurrency."""
        task_id = "task-" + secrets.token_hex(12)
        seed = params.seed if params.seed is not None else int(task_id[5:13], 16)
        task = Task(
            task_id=task_id,
            team=team,
            params=params,
            seed=seed,
            created_at=now,
            processing_at=now + pending,
            ends_at=now + pending + processing,
            error=error,
            request_id="req-" + secrets.token_hex(8),
            amount=amount,
        )
        self.tasks[task_id] = task
        self._order.append(task_id)
        heapq.heappush(self.team(team).active_ends, task.ends_at)
        return task

    def live(self, task_id: str, now: float, ttl: float) -> Task | None:
        """The task unless unknown or expired (now >= end + ttl)."""
        task = self.tasks.get(task_id)
        if task is None or now >= task.ends_at + ttl:
            return None
        return task

    def purge(self, now: float, ttl: float) -> None:
        """Forget expired tasks from the oldest end; O(1) amortised per task."""
        order, tasks = self._order, self.tasks
        while order:
            task = tasks.get(order[0])
            if task is not None and now < task.ends_at + ttl:
                return
            order.popleft()
            if task is not None:
                del tasks[task.task_id]

    def concurrency_now(self, now: float) -> dict[str, int]:
        """Pending + processing tasks per team."""
        return {name: state.active(now) for name, state in sorted(self.teams.items())}

    def balances(self, now: float, balance: str, teams: Iterable[str]) -> dict[str, str]:
        """Remaining balance per team (teams plus every team seen), 4-decimal strings."""
        full = Decimal(balance)
        rows: dict[str, str] = {}
        for name in sorted(set(teams) | set(self.teams)):
            state = self.teams.get(name)
            rows[name] = f"{full if state is None else state.remaining(now, full):.4f}"
        return rows

    def stats_dict(
        self, now: float, balance: str | None = None, teams: Iterable[str] = ()
    ) -> dict[str, Any]:
        """The /_sim/stats payload; balance_remaining only when a balance is configured."""
        stats = self.stats
        data: dict[str, Any] = {
            "submits_accepted": stats.submits_accepted,
            "submits_rejected": dict(stats.submits_rejected),
            "polls": stats.polls,
            "polls_by_status": dict(stats.polls_by_status),
            "file_downloads": stats.file_downloads,
            "max_concurrency": stats.max_concurrency,
            "concurrency_now": self.concurrency_now(now),
            "tasks_total": len(self.tasks),
            "faults_injected": dict(stats.faults_injected),
        }
        if balance is not None:
            data["balance_remaining"] = self.balances(now, balance, teams)
        return data
