"""``imagegen top``: the service now, refreshed every second, from the same snapshot the
exporter serves."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .snapshot import Snapshot


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(snap: Snapshot) -> RenderableType:
    """One frame."""
    jobs = snap.jobs
    table = Table(title=f"imagegen  {snap.taken_at:%H:%M:%S} UTC", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("now")
    table.add_row(
        "backlog", f"{jobs.backlog} queued, oldest {_age(jobs.oldest_queued_age_seconds)}"
    )
    table.add_row("in flight", f"{jobs.in_flight} upstream tasks")
    slots = f"{jobs.slots_used} / {snap.slots_limit}"
    table.add_row("slots", Text(slots, style="red" if jobs.slots_used > snap.slots_limit else ""))
    if snap.requests is None:
        table.add_row("requests", Text("Redis did not answer", style="red"))
    else:
        budget = str(snap.requests.budget) if snap.requests.budget else "unlimited"
        paused = (
            f", paused {snap.requests.paused_seconds:.1f} s" if snap.requests.paused_seconds else ""
        )
        table.add_row("requests", f"{snap.requests.used} / {budget} this minute{paused}")
    oldest = snap.overdue.oldest
    table.add_row(
        "stuck",
        f"{snap.overdue.count} overdue; oldest {oldest.job_id} ({_age(oldest.late_seconds)} late)"
        if oldest
        else "none",
    )
    table.add_row("deliveries", f"{snap.deliveries.pending} pending, {snap.deliveries.dead} dead")
    errors = snap.errors_last_hour
    codes = Table(title="errors, last hour", show_header=True)
    codes.add_column("error code")
    codes.add_column("jobs", justify="right")
    if errors is None:
        codes.add_row(Text("Redis did not answer", style="red"), "")
    elif not errors:
        codes.add_row("none", "0")
    for code, n in (errors or {}).items():
        codes.add_row(code, str(n))
    return Group(table, codes)


def run(
    take: Callable[[], Snapshot],
    *,
    once: bool = False,
    as_json: bool = False,
    interval: float = 1.0,
    console: Console | None = None,
) -> None:
    """Print one frame or one JSON snapshot, or refresh a live view until interrupted."""
    console = console or Console()
    if as_json:
        sys.stdout.write(json.dumps(take().as_json(), sort_keys=True) + "\n")
        return
    if once:
        console.print(render(take()))
        return
    with Live(render(take()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)  # the refresh period, not a synchronisation
                live.update(render(take()), refresh=True)
        except KeyboardInterrupt:
            pass
