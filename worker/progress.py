"""Watch jobs until they end, with a live Rich display."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from api_schema import JobStatus, JobView

from . import jobs
from .db import session_scope

#: How far along each status is, for the progress bars.
STEPS = {
    JobStatus.QUEUED: 1,
    JobStatus.SUBMITTING: 2,
    JobStatus.PENDING: 3,
    JobStatus.PROCESSING: 4,
    JobStatus.SUCCEEDED: 5,
    JobStatus.FAILED: 5,
    JobStatus.CANCELLED: 5,
}


def fetch(job_ids: Sequence[str]) -> dict[str, JobView | None]:
    """The current view of each job (None for one not recorded yet)."""
    with session_scope() as session:
        return {job_id: jobs.view(session, job_id) for job_id in job_ids}


def watch(
    job_ids: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    timeout: float = 300.0,
    interval: float = 0.25,
    console: Console | None = None,
) -> dict[str, JobView | None]:
    """Show one bar per job until every job has ended or ``timeout`` passed."""
    console = console or Console(stderr=True)
    names = list(labels) if labels else [j[:8] for j in job_ids]
    views: dict[str, JobView | None] = {}
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bars = {
            job_id: progress.add_task(name, total=5, status="waiting")
            for job_id, name in zip(job_ids, names, strict=True)
        }
        started = time.monotonic()
        while True:
            views = fetch(job_ids)
            for job_id, job in views.items():
                status = job.status.value if job else "not yet accepted"
                progress.update(
                    bars[job_id], completed=STEPS[job.status] if job else 0, status=status
                )
            if all(j is not None and j.status.is_terminal for j in views.values()):
                break
            if time.monotonic() - started > timeout:
                break
            time.sleep(interval)
    return views


def summary_table(views: dict[str, JobView | None], labels: dict[str, str] | None = None) -> Table:
    """One row per job: status, images (stored paths or URLs), cost, error."""
    table = Table(title="jobs", show_lines=True)
    for column in ("job", "status", "images", "billed", "error"):
        table.add_column(column, overflow="fold")
    for job_id, job in views.items():
        label = (labels or {}).get(job_id, "")
        name = f"{label}\n{job_id}" if label else job_id
        if job is None:
            table.add_row(name, "not accepted yet", "", "", "")
            continue
        sizes = sorted({f"{i.width}x{i.height} {i.format}" for i in job.images})
        stored = sum(1 for i in job.images if i.storage_key)
        images = f"{len(job.images)} ({', '.join(sizes)}; {stored} stored)" if job.images else ""
        error = f"{job.error_code.value}: {job.error_message}" if job.error_code else ""
        billed = str(job.billing_amount) if job.billing_amount is not None else ""
        table.add_row(name, job.status.value, images, billed, error)
    return table
