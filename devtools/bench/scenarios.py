"""The benchmark scenarios behind ``python -m devtools bench``. Each starts its own simulator,
database and worker processes, measures, prints a table and writes JSON."""

from __future__ import annotations

import math
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api_schema import MAINTENANCE_QUEUE, REQUESTS_QUEUE, UPSTREAM_QUEUE
from api_schema.producer import producer_app

from .baseline import NOOP_QUEUE, NOOP_QUEUE_ENTITY, NOOP_TASK
from .report import emit, percentile, rss_bytes
from .stack import LocalStack

API_KEY = "bench-key-0123456789"
REFERENCE = "https://example.com/reference.jpg"
#: The simulator shares these two cores with the workers: its result files are served like
#: a CDN's (one image per size, rendered once), so its drawing does not take the workers'
#: CPU; each job still downloads, hashes and stores its own copy.
STOCK_IMAGES = {"SIM_IMAGES": "stock"}


@contextmanager
def local_stack(console: Console, redis_db: int, **worker_env: str) -> Iterator[LocalStack]:
    """A fresh stack in a temporary folder, torn down afterwards."""
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as tmp:
        stack = LocalStack.create(
            Path(tmp), prefix="imagegen_bench", redis_db=redis_db, api_key=API_KEY, **worker_env
        )
        console.print(
            f"[dim]database {stack.database_url.rsplit('/', 1)[1]}, redis {stack.broker_url}[/]"
        )
        stack.prepare()
        try:
            yield stack
        finally:
            stack.close()


def wait_progress(
    console: Console, what: str, total: int, done: Callable[[], int], timeout: float
) -> float:
    """Show a bar until ``done()`` reaches ``total``; return the seconds it took."""
    start = time.perf_counter()
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task(what, total=total)
        while True:
            count = done()
            progress.update(bar, completed=count)
            if count >= total:
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{what}: {count}/{total} after {timeout:.0f}s")
            time.sleep(0.05)


class RssSampler:
    """Samples the peak resident memory of some processes (and their children)."""

    def __init__(self, pids: list[int], every: float = 0.5) -> None:
        self.pids = pids
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss_bytes(pid) for pid in self.pids))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _pair(values: list[float]) -> str:
    return f"{percentile(values, 50) * 1000:.0f} / {percentile(values, 99) * 1000:.0f} ms"


def _mb(value: float) -> str:
    return f"{value / 2**20:.0f} MB"


def _jobs_by_status(stack: LocalStack) -> dict[str, int]:
    """Jobs per status; a failed one is counted under ``failed:<error code>``."""
    rows = stack.sql("SELECT status, error_code, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2")
    return {(str(s) if code is None else f"{s}:{code}"): int(n) for s, code, n in rows}


def _succeeded_row(statuses: dict[str, int], jobs: int) -> tuple[str, str, str]:
    others = ", ".join(f"{n} {s}" for s, n in statuses.items() if s != "succeeded")
    done = str(statuses.get("succeeded", 0)) + (f" ({others})" if others else "")
    return ("jobs succeeded", done, str(jobs))


# --- throughput ----------------------------------------------------------------------


def throughput(
    console: Console, output: Path, *, jobs: int = 2000, workers: int = 2, threads: int = 16
) -> dict[str, Any]:
    """Jobs/s end to end against a zero-latency, unlimited upstream, and a no-op baseline."""
    env = {
        "IMAGEGEN_UPSTREAM_CONCURRENCY": "100000",
        "IMAGEGEN_UPSTREAM_RPM": "0",
        "IMAGEGEN_POLL_INITIAL_SECONDS": "0.05",
        "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.05",
        "IMAGEGEN_POLL_JITTER": "0",
    }
    with local_stack(console, 10, **env) as stack:
        stack.start_sim(
            SIM_CONCURRENCY="0",
            SIM_RPM="0",
            SIM_PENDING_SECONDS="0",
            SIM_PROCESSING_SECONDS="0",
            **STOCK_IMAGES,
        )
        console.print(f"{workers} worker processes x {threads} threads; {jobs} jobs")
        # The baseline runs in workers of its own (production workers register no bench
        # task), on the same Celery settings, and they stop before the pipeline starts.
        for i in range(workers):
            stack.start_worker(
                f"noop{i}",
                argv=[
                    sys.executable, "-m", "devtools.bench.baseline",
                    "--hostname", f"noop{i}@%h", "--concurrency", str(threads),
                ],
            )  # fmt: skip
        app = producer_app(stack.broker_url)
        # producers may only name the contract's queues: the bench's own is added here
        app.conf.task_queues = [*app.conf.task_queues, NOOP_QUEUE_ENTITY]
        counter = f"bench:noop:{uuid.uuid4().hex}"
        start = time.perf_counter()
        for _ in range(jobs):
            app.send_task(NOOP_TASK, kwargs={"counter": counter}, queue=NOOP_QUEUE)
        noop_publish = time.perf_counter() - start
        wait_progress(console, "no-op tasks", jobs, lambda: stack.counter(counter), 600)
        noop_seconds = time.perf_counter() - start
        stack.stop_workers()
        for i in range(workers):
            stack.start_worker(f"bench{i}", concurrency=threads)

        body = {"subject_reference_images": [REFERENCE]}
        start = time.perf_counter()
        for i in range(jobs):
            stack.send({**body, "prompt": f"throughput {i}"})
        publish = time.perf_counter() - start
        wait_progress(console, "pipeline jobs", jobs, stack.count_ended, 1800)
        seconds = time.perf_counter() - start
        statuses = _jobs_by_status(stack)
        stats = stack.sim_stats()

    noop_rate, rate = jobs / noop_seconds, jobs / seconds
    ratio = rate / noop_rate
    data = {
        "parameters": {"jobs": jobs, "workers": workers, "threads": threads},
        "noop": {"seconds": noop_seconds, "per_second": noop_rate, "publish_seconds": noop_publish},
        "pipeline": {
            "seconds": seconds,
            "per_second": rate,
            "publish_seconds": publish,
            "statuses": statuses,
            "upstream_submits": stats["submits_accepted"],
            "upstream_polls": stats["polls"],
        },
        "ratio": ratio,
        "targets": {"ratio": 0.25},
    }
    rows = [
        ("jobs", str(jobs), ""),
        ("no-op Celery tasks/s", f"{noop_rate:.0f}", ""),
        ("pipeline jobs/s (accept, submit, poll, store)", f"{rate:.0f}", ""),
        ("ratio pipeline / no-op", f"{ratio:.2f}", ">= 0.25"),
        _succeeded_row(statuses, jobs),
        ("upstream polls per job", f"{stats['polls'] / jobs:.2f}", ""),
    ]
    emit(console, "throughput", rows, data, output)
    return data


# --- in flight -----------------------------------------------------------------------


def inflight(
    console: Console,
    output: Path,
    *,
    jobs: int = 5000,
    duration: float = 30.0,
    naive_jobs: int = 64,
    workers: int = 2,
    threads: int = 16,
    split_queues: bool = False,
) -> dict[str, Any]:
    """How many upstream tasks the host keeps in flight, and how fast it sees them end.

    ``split_queues`` gives the upstream queue (submits, polls) worker processes of its own,
    so polls never share threads with a backlog of new requests.
    """
    env = {
        "IMAGEGEN_UPSTREAM_CONCURRENCY": "100000",
        "IMAGEGEN_UPSTREAM_RPM": "0",
        "IMAGEGEN_POLL_INITIAL_SECONDS": str(duration),
        "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.5",
        "IMAGEGEN_POLL_BACKOFF": "1.0",
        "IMAGEGEN_POLL_MAX_INTERVAL_SECONDS": "0.5",
        "IMAGEGEN_POLL_JITTER": "0.02",
        "IMAGEGEN_DEFAULT_DEADLINE_SECONDS": str(int(duration * 10 + 600)),
    }
    sim_env = {
        "SIM_CONCURRENCY": "0",
        "SIM_RPM": "0",
        "SIM_PENDING_SECONDS": "1",
        "SIM_PROCESSING_SECONDS": str(duration - 1),
        **STOCK_IMAGES,
    }
    with local_stack(console, 11, **env) as stack:
        stack.start_sim(**sim_env)
        for i in range(workers):
            queues = None
            if split_queues:  # odd workers take submits and polls, even ones new requests
                upstream = i % 2 == 1
                queues = UPSTREAM_QUEUE if upstream else f"{REQUESTS_QUEUE},{MAINTENANCE_QUEUE}"
            stack.start_worker(f"bench{i}", concurrency=threads, queues=queues)
        console.print(
            f"ours: {jobs} jobs of {duration:.0f} s, {workers} workers x {threads} threads"
            + (" (requests and upstream queues on separate workers)" if split_queues else "")
        )
        with RssSampler([w.popen.pid for w in stack.workers]) as rss:
            start = time.perf_counter()
            for i in range(jobs):
                stack.send({"prompt": f"inflight {i}", "subject_reference_images": [REFERENCE]})
            publish = time.perf_counter() - start
            wait_progress(console, "jobs ended", jobs, stack.count_ended, duration * 10 + 600)
        ours = _detection(stack, "SELECT upstream_task_id, finished_at, poll_count FROM jobs")
        ours |= {
            "peak_in_flight": stack.sim_stats()["max_concurrency"],
            "worker_rss_peak_bytes": rss.peak,
            "publish_seconds": publish,
            "statuses": _jobs_by_status(stack),
        }

        stack.stop_workers()
        stack.http.post(f"{stack.sim_url}/_sim/reset")
        console.print(f"naive: {naive_jobs} jobs, same workers and threads, GET every 1.5 s")
        from devtools.bench import naive

        results_key = f"bench:naive:{uuid.uuid4().hex}"
        for i in range(workers):
            argv = [
                *_celery("devtools.bench.naive"),
                "worker", "--pool=threads", f"--concurrency={threads}", "--queues=naive",
                f"--hostname=naive{i}@%h", "--without-gossip", "--without-mingle",
            ]  # fmt: skip
            stack.start_worker(f"naive{i}", argv=argv)
        with RssSampler([w.popen.pid for w in stack.workers]) as naive_rss:
            for i in range(naive_jobs):
                body = {"prompt": f"naive {i}", "subject_reference_images": [REFERENCE]}
                naive.app.send_task(naive.NAIVE_TASK, args=(body, results_key), queue="naive")
            wait_progress(
                console, "naive jobs ended", naive_jobs, lambda: len(stack.hash_items(results_key)),
                duration * naive_jobs + 600,
            )  # fmt: skip
        ends = {t["task_id"]: float(t["ends_at"]) for t in stack.sim_tasks()}
        lags, polls = [], []
        for task_id, value in stack.hash_items(results_key).items():
            seen, count = value.split(":")
            lags.append(float(seen) - ends[task_id])
            polls.append(int(count))
        naive_result = {
            "peak_in_flight": stack.sim_stats()["max_concurrency"],
            "lag_p50": percentile(lags, 50),
            "lag_p99": percentile(lags, 99),
            "polls_per_job": sum(polls) / len(polls),
            "worker_rss_peak_bytes": naive_rss.peak,
        }

    factor = ours["peak_in_flight"] / max(1, naive_result["peak_in_flight"])
    data = {
        "parameters": {
            "jobs": jobs, "duration": duration, "naive_jobs": naive_jobs,
            "workers": workers, "threads": threads, "split_queues": split_queues,
        },
        "ours": ours,
        "naive": naive_result,
        "in_flight_factor": factor,
        "targets": {
            "peak_in_flight": 3000, "lag_p99": 2.0, "rss_bytes": 500 * 2**20, "factor": 100,
        },
    }  # fmt: skip
    rows = [
        ("peak upstream tasks in flight", f"{ours['peak_in_flight']}", ">= 3000"),
        ("  naive design", f"{naive_result['peak_in_flight']}", ""),
        ("  ours / naive", f"{factor:.0f}x", ">= 100x"),
        ("detection lag p50", f"{ours['lag_p50']:.2f} s", ""),
        ("detection lag p99", f"{ours['lag_p99']:.2f} s", "<= 2 s"),
        (
            "  naive p50 / p99",
            f"{naive_result['lag_p50']:.2f} / {naive_result['lag_p99']:.2f} s",
            "",
        ),
        ("polls per job", f"{ours['polls_per_job']:.2f}", ""),
        ("  naive", f"{naive_result['polls_per_job']:.2f}", ""),
        ("worker RSS peak (all processes)", _mb(ours["worker_rss_peak_bytes"]), "<= 500 MB"),
        ("  naive", _mb(naive_result["worker_rss_peak_bytes"]), ""),
        _succeeded_row(ours["statuses"], jobs),
    ]
    emit(console, "inflight", rows, data, output)
    return data


def _celery(module: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "celery", "-A", module]


def _detection(stack: LocalStack, query: str) -> dict[str, Any]:
    ends = {t["task_id"]: float(t["ends_at"]) for t in stack.sim_tasks()}
    lags: list[float] = []
    polls: list[int] = []
    for task_id, finished_at, poll_count in stack.sql(query):
        if task_id in ends and isinstance(finished_at, datetime):
            lags.append(finished_at.timestamp() - ends[task_id])
            polls.append(int(poll_count))
    return {
        "lag_p50": percentile(lags, 50),
        "lag_p99": percentile(lags, 99),
        "lag_max": max(lags, default=0.0),
        "polls_per_job": sum(polls) / max(1, len(polls)),
    }


# --- utilization ---------------------------------------------------------------------


def utilization(
    console: Console,
    output: Path,
    *,
    jobs: int = 60,
    limit: int = 3,
    duration: float = 2.0,
    workers: int = 3,
    rpm: int = 1000,
) -> dict[str, Any]:
    """How busy a backlog keeps the team's paid slots."""
    env = {
        "IMAGEGEN_UPSTREAM_CONCURRENCY": str(limit),
        "IMAGEGEN_UPSTREAM_RPM": str(rpm),
        "IMAGEGEN_POLL_INITIAL_SECONDS": str(duration),
        "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.05",
        "IMAGEGEN_POLL_MAX_INTERVAL_SECONDS": "0.2",
        "IMAGEGEN_POLL_JITTER": "0",
    }
    with local_stack(console, 12, **env) as stack:
        stack.start_sim(
            SIM_CONCURRENCY=str(limit),
            SIM_RPM=str(rpm),
            SIM_PENDING_SECONDS=str(duration / 4),
            SIM_PROCESSING_SECONDS=str(duration * 3 / 4),
            **STOCK_IMAGES,
        )
        for i in range(workers):
            stack.start_worker(f"bench{i}", concurrency=4)
        console.print(f"{jobs} jobs, limit {limit}, {duration:.1f} s each, {workers} workers")
        for i in range(jobs):
            stack.send({"prompt": f"utilization {i}", "subject_reference_images": [REFERENCE]})
        wait_progress(console, "jobs ended", jobs, stack.count_ended, duration * jobs + 300)
        ((first, last),) = stack.sql("SELECT min(created_at), max(finished_at) FROM jobs")
        tasks = stack.sim_tasks()
        finished = {
            task_id: at.timestamp()
            for task_id, at in stack.sql("SELECT upstream_task_id, finished_at FROM jobs")
        }
        stats = stack.sim_stats()
        statuses = _jobs_by_status(stack)

    makespan = (last - first).total_seconds()
    busy = sum(float(t["ends_at"]) - float(t["created_at"]) for t in tasks)
    # A handoff: the upstream ends a task, we see it (detection), the next POST lands (refill).
    detection = [finished[t["task_id"]] - float(t["ends_at"]) for t in tasks]
    ends = sorted(finished.values())
    starts = sorted(float(t["created_at"]) for t in tasks)[limit:]
    refill = [start - max(e for e in ends if e <= start) for start in starts if ends[0] <= start]
    ideal = math.ceil(jobs / limit) * duration
    rejected = sum(stats["submits_rejected"].values())
    data = {
        "parameters": {"jobs": jobs, "limit": limit, "duration": duration, "workers": workers},
        "makespan_seconds": makespan,
        "ideal_seconds": ideal,
        "utilization": busy / (limit * makespan),
        "slot_idle_seconds": limit * makespan - busy,
        "upstream_429s": rejected,
        "max_concurrency": stats["max_concurrency"],
        "detection_lag": {"p50": percentile(detection, 50), "p99": percentile(detection, 99)},
        "refill_latency": {"p50": percentile(refill, 50), "p99": percentile(refill, 99)},
        "statuses": statuses,
        "targets": {"utilization": 0.97, "upstream_429s": 0},
    }
    rows = [
        ("makespan", f"{makespan:.2f} s", ""),
        ("ideal (ceil(jobs/limit) x duration)", f"{ideal:.2f} s", ""),
        (
            "utilization (busy slot-time / limit x makespan)",
            f"{data['utilization']:.3f}",
            ">= 0.97",
        ),
        ("slot idle time", f"{data['slot_idle_seconds']:.2f} s", ""),
        ("  detection lag p50 / p99 (upstream end -> stored)", _pair(detection), ""),
        ("  refill latency p50 / p99 (stored -> next POST)", _pair(refill), ""),
        ("upstream 429s", str(rejected), "0"),
        ("max upstream concurrency", str(stats["max_concurrency"]), f"<= {limit}"),
        _succeeded_row(statuses, jobs),
    ]
    emit(console, "utilization", rows, data, output)
    return data
