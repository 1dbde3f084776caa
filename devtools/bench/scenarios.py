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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api_schema import MAINTENANCE_QUEUE, REQUESTS_QUEUE, UPSTREAM_QUEUE
from api_schema.producer import producer_app

from .baseline import NOOP_QUEUE, NOOP_QUEUE_ENTITY, NOOP_TASK
from .ideal import ideal_makespan, idle_breakdown
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


def _mb(value: float) -> str:
    return f"{value / 2**20:.0f} MB"


def _jobs_by_status(stack: LocalStack, since: datetime | None = None) -> dict[str, int]:
    """Jobs per status (those created at ``since`` or later); a failed one is counted under
    ``failed:<error code>``."""
    rows = stack.sql(
        "SELECT status, error_code, count(*) FROM jobs WHERE created_at >= :since "
        "GROUP BY 1, 2 ORDER BY 1, 2",
        since=since or datetime.fromtimestamp(0, UTC),
    )
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
    tuned: bool = False,
    redis_db: int = 11,
) -> dict[str, Any]:
    """How many upstream tasks the host keeps in flight, and how fast it sees them end, on
    the shipped poll settings (and, with ``tuned``, also on poll settings set to the duration
    every task is known to take); then the naive design on the same workers.

    ``split_queues`` gives the upstream queue (submits, polls) worker processes of its own,
    so polls never share threads with a backlog of new requests.
    """
    # The workload: no upstream limits, and a deadline that a 5,000-job backlog of 30 s
    # tasks cannot reach. None of it is a poll setting.
    env = {
        "IMAGEGEN_UPSTREAM_CONCURRENCY": "100000",
        "IMAGEGEN_UPSTREAM_RPM": "0",
        "IMAGEGEN_DEFAULT_DEADLINE_SECONDS": str(int(duration * 10 + 600)),
    }
    tuned_env = {
        "IMAGEGEN_POLL_INITIAL_SECONDS": str(duration),
        "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.5",
        "IMAGEGEN_POLL_BACKOFF": "1.0",
        "IMAGEGEN_POLL_MAX_INTERVAL_SECONDS": "0.5",
        "IMAGEGEN_POLL_JITTER": "0.02",
    }
    shape: dict[str, Any] = {
        "jobs": jobs, "duration": duration, "workers": workers, "threads": threads,
    }  # fmt: skip
    with local_stack(console, redis_db, **env) as stack:
        stack.start_sim(**_inflight_sim_env(duration))
        ours = _inflight_ours(console, stack, "shipped defaults", split_queues, **shape)
        stack.stop_workers()
        stack.http.post(f"{stack.sim_url}/_sim/reset")
        # The same deployment's next burst, on new worker processes: what the first burst
        # taught (the shared durations) is kept, as it is by any deployment that has run.
        warm = _inflight_ours(console, stack, SECOND_BURST, split_queues, **shape)
        stack.stop_workers()
        stack.http.post(f"{stack.sim_url}/_sim/reset")
        naive_result = _inflight_naive(console, stack, naive_jobs, duration, workers, threads)
    runs = [ours, warm]
    ours_tuned = None
    if tuned:
        with local_stack(console, redis_db, **env, **tuned_env) as stack:
            stack.start_sim(**_inflight_sim_env(duration))
            ours_tuned = _inflight_ours(console, stack, TUNED, split_queues, **shape)
        ours_tuned["env"] = tuned_env
        runs.append(ours_tuned)

    def factor(run: dict[str, Any]) -> float:
        return float(run["peak_in_flight"]) / max(1, int(naive_result["peak_in_flight"]))

    data = {
        "parameters": {
            "jobs": jobs, "duration": duration, "naive_jobs": naive_jobs,
            "workers": workers, "threads": threads, "split_queues": split_queues,
        },
        "ours": ours,
        "ours_second_burst": warm,
        "naive": naive_result,
        "in_flight_factor": factor(ours),
        "in_flight_factor_second_burst": factor(warm),
        "targets": {
            "peak_in_flight": 3000, "lag_p99": 2.0, "rss_bytes": 500 * 2**20, "factor": 100,
        },
    }  # fmt: skip
    if ours_tuned is not None:
        data["ours_tuned"] = ours_tuned
        data["in_flight_factor_tuned"] = factor(ours_tuned)

    def line(
        metric: str, fmt: Callable[[dict[str, Any]], str], naive: str, target: str
    ) -> tuple[str, ...]:
        return (metric, *(fmt(run) for run in runs), naive, target)

    rows = [
        line("peak upstream tasks in flight", lambda r: str(r["peak_in_flight"]),
             str(naive_result["peak_in_flight"]), ">= 3000"),
        line("  ours / naive", lambda r: f"{factor(r):.0f}x", "", ">= 100x"),
        line("detection lag p50", lambda r: f"{r['lag_p50']:.2f} s",
             f"{naive_result['lag_p50']:.2f} s", ""),
        line("detection lag p99", lambda r: f"{r['lag_p99']:.2f} s",
             f"{naive_result['lag_p99']:.2f} s", "<= 2 s"),
        line("polls per job", lambda r: f"{r['polls_per_job']:.2f}",
             f"{naive_result['polls_per_job']:.2f}", ""),
        line("worker RSS peak (all processes)", lambda r: _mb(r["worker_rss_peak_bytes"]),
             _mb(naive_result["worker_rss_peak_bytes"]), "<= 500 MB"),
        line("jobs succeeded", lambda r: _succeeded_row(r["statuses"], jobs)[1],
             f"({naive_jobs} jobs)", str(jobs)),
    ]  # fmt: skip
    columns = [
        "metric",
        "ours, shipped defaults, first burst",
        f"ours, shipped defaults, {SECOND_BURST}",
        *([f"ours, {TUNED}"] if tuned else []),
        "naive (GET every 1.5 s)",
        "target",
    ]
    emit(console, "inflight", rows, data, output, columns=columns)
    return data


def _inflight_sim_env(duration: float) -> dict[str, str]:
    return {
        "SIM_CONCURRENCY": "0",
        "SIM_RPM": "0",
        "SIM_PENDING_SECONDS": "1",
        "SIM_PROCESSING_SECONDS": str(duration - 1),
        **STOCK_IMAGES,
    }


def _inflight_ours(
    console: Console,
    stack: LocalStack,
    label: str,
    split_queues: bool,
    *,
    jobs: int,
    duration: float,
    workers: int,
    threads: int,
) -> dict[str, Any]:
    """Our workers on ``jobs`` tasks of ``duration`` seconds submitted at once."""
    for i in range(workers):
        queues = None
        if split_queues:  # odd workers take submits and polls, even ones new requests
            upstream = i % 2 == 1
            queues = UPSTREAM_QUEUE if upstream else f"{REQUESTS_QUEUE},{MAINTENANCE_QUEUE}"
        stack.start_worker(f"bench{i}", concurrency=threads, queues=queues)
    console.print(
        f"[bold]ours, {label}[/]: {jobs} jobs of {duration:.0f} s, {workers} workers x "
        f"{threads} threads"
        + (" (requests and upstream queues on separate workers)" if split_queues else "")
    )
    before = stack.count_ended()  # (a first burst's jobs, on a second one)
    ((since,),) = stack.sql("SELECT now()")
    with RssSampler([w.popen.pid for w in stack.workers]) as rss:
        start = time.perf_counter()
        for i in range(jobs):
            stack.send({"prompt": f"inflight {i}", "subject_reference_images": [REFERENCE]})
        publish = time.perf_counter() - start
        wait_progress(
            console, f"ours, {label}: jobs ended", jobs,
            lambda: stack.count_ended() - before, duration * 10 + 600,
        )  # fmt: skip
    ours = _detection(stack, "SELECT upstream_task_id, finished_at, poll_count FROM jobs")
    return ours | {
        "peak_in_flight": stack.sim_stats()["max_concurrency"],
        "worker_rss_peak_bytes": rss.peak,
        "publish_seconds": publish,
        "statuses": _jobs_by_status(stack, since),
    }


def _inflight_naive(
    console: Console, stack: LocalStack, naive_jobs: int, duration: float, workers: int,
    threads: int,
) -> dict[str, Any]:  # fmt: skip
    """The naive design (POST, then GET + sleep in a loop) on the same workers and threads."""
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
    return {
        "peak_in_flight": stack.sim_stats()["max_concurrency"],
        "lag_p50": percentile(lags, 50),
        "lag_p99": percentile(lags, 99),
        "polls_per_job": sum(polls) / len(polls),
        "worker_rss_peak_bytes": naive_rss.peak,
    }


def _celery(module: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "celery", "-A", module]


def _detection(stack: LocalStack, query: str) -> dict[str, Any]:
    tasks = {t["task_id"]: t for t in stack.sim_tasks()}
    lags: list[tuple[float, float]] = []  # (created at, lag)
    polls: list[int] = []
    for task_id, finished_at, poll_count in stack.sql(query):
        if task_id in tasks and isinstance(finished_at, datetime):
            task = tasks[task_id]
            lags.append((float(task["created_at"]), finished_at.timestamp() - task["ends_at"]))
            polls.append(int(poll_count))
    lags.sort()
    only = [lag for _, lag in lags]
    # where the slow detections are: the lag's p99 among each tenth of the tasks, in the
    # order the upstream created them (the first tenth ran before anything was learned)
    tenths = [only[len(only) * i // 10 : len(only) * (i + 1) // 10] for i in range(10)]
    return {
        "lag_p50": percentile(only, 50),
        "lag_p99": percentile(only, 99),
        "lag_max": max(only, default=0.0),
        "lag_p99_by_creation_tenth": [percentile(t, 99) if t else None for t in tenths],
        "creation_span_seconds": lags[-1][0] - lags[0][0] if lags else 0.0,
        "polls_per_job": sum(polls) / max(1, len(polls)),
    }


# --- utilization ---------------------------------------------------------------------


#: Column label of the runs whose poll settings are set to the duration the bench configured.
TUNED = "tuned to the known duration"
#: Column label of a deployment's second burst of the same workload (the durations its first
#: burst taught are kept).
SECOND_BURST = "second burst"


def _429s(stats: dict[str, Any]) -> dict[str, int]:
    """Upstream 429 answers by kind: over the requests per minute (submits and polls) or over
    the concurrency limit (submits). Slot probes cause the latter by design; only the
    former means the request budget was overrun."""
    rejected: dict[str, int] = stats["submits_rejected"]
    by_status: dict[str, int] = stats["polls_by_status"]
    return {
        "rate": rejected.get("rate_limit", 0) + by_status.get("rate_limit", 0),
        "concurrency": rejected.get("concurrency_limit", 0),
        "submit_rate": rejected.get("rate_limit", 0),
        "poll_rate": by_status.get("rate_limit", 0),
    }


def utilization(
    console: Console,
    output: Path,
    *,
    jobs: int = 60,
    limit: int = 3,
    duration: float = 2.0,
    workers: int = 3,
    rpm: int = 1000,
    tuned: bool = False,
    redis_db: int = 12,
) -> dict[str, Any]:
    """How busy a backlog keeps the team's paid slots, on the shipped poll settings (and,
    with ``tuned``, also on poll settings set to the duration every task is known to take)."""
    workload: dict[str, Any] = {
        "jobs": jobs, "limit": limit, "duration": duration, "workers": workers, "rpm": rpm,
        "redis_db": redis_db,
    }  # fmt: skip
    # The same deployment's second backlog: what the first taught (the shared durations) is
    # kept, as it is by any deployment that has run.
    shipped, warm = _utilization_run(console, "shipped defaults", {}, **workload, bursts=2)
    runs = [shipped, warm]
    data: dict[str, Any] = {
        "parameters": {k: v for k, v in workload.items() if k != "redis_db"},
        **shipped,
        "second_burst": warm,
        "targets": {"utilization": 0.97, "rate_429s": 0},
    }
    if tuned:
        tuned_env = {
            "IMAGEGEN_POLL_INITIAL_SECONDS": str(duration),
            "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.05",
            "IMAGEGEN_POLL_MAX_INTERVAL_SECONDS": "0.2",
            "IMAGEGEN_POLL_JITTER": "0",
        }
        (data["tuned"],) = _utilization_run(console, TUNED, tuned_env, **workload)
        data["tuned"]["env"] = tuned_env
        runs.append(data["tuned"])

    def cells(fmt: Callable[[dict[str, Any]], str]) -> list[str]:
        return [fmt(run) for run in runs]

    lines: list[tuple[str, list[str], str]] = [
        ("makespan", cells(lambda r: f"{r['makespan_seconds']:.2f} s"), ""),
        (
            "ideal (ceil(jobs/limit) x duration)",
            cells(lambda r: f"{r['ideal_seconds']:.2f} s"),
            "",
        ),
        (
            "utilization (busy slot-time / limit x makespan)",
            cells(lambda r: f"{r['utilization']:.3f}"),
            ">= 0.97",
        ),
        ("slot idle time", cells(lambda r: f"{r['slot_idle_seconds']:.2f} s"), ""),
        (
            "  detection lag p50 / p99 (upstream end -> stored)",
            cells(lambda r: _ms_pair(r["detection_lag"])),
            "",
        ),
        (
            "  refill latency p50 / p99 (stored -> next POST)",
            cells(lambda r: _ms_pair(r["refill_latency"])),
            "",
        ),
        ("polls per job", cells(lambda r: f"{r['polls_per_job']:.2f}"), ""),
        ("429s, rate limit", cells(lambda r: str(r["http_429"]["rate"])), "0"),
        ("429s, concurrency limit", cells(lambda r: str(r["http_429"]["concurrency"])), ""),
        ("max upstream concurrency", cells(lambda r: str(r["max_concurrency"])), f"<= {limit}"),
        ("jobs succeeded", cells(lambda r: _succeeded_row(r["statuses"], jobs)[1]), str(jobs)),
    ]
    columns = [
        "metric",
        "shipped defaults, first burst",
        f"shipped defaults, {SECOND_BURST}",
        *([TUNED] if tuned else []),
        "target",
    ]
    rows = [(metric, *values, target) for metric, values, target in lines]
    emit(console, "utilization", rows, data, output, columns=columns)
    return data


def _ms_pair(pair: dict[str, float]) -> str:
    return f"{pair['p50'] * 1000:.0f} / {pair['p99'] * 1000:.0f} ms"


def _utilization_run(
    console: Console,
    label: str,
    poll_env: dict[str, str],
    *,
    jobs: int,
    limit: int,
    duration: float,
    workers: int,
    rpm: int,
    redis_db: int,
    bursts: int = 1,
) -> list[dict[str, Any]]:
    """Utilization runs with ``poll_env`` on top of the limits (a fresh stack): ``bursts``
    backlogs one after another on the same deployment (what the first taught is kept)."""
    env = {"IMAGEGEN_UPSTREAM_CONCURRENCY": str(limit), "IMAGEGEN_UPSTREAM_RPM": str(rpm)}
    results = []
    with local_stack(console, redis_db, **env, **poll_env) as stack:
        stack.start_sim(
            SIM_CONCURRENCY=str(limit),
            SIM_RPM=str(rpm),
            SIM_PENDING_SECONDS=str(duration / 4),
            SIM_PROCESSING_SECONDS=str(duration * 3 / 4),
            **STOCK_IMAGES,
        )
        for i in range(workers):
            stack.start_worker(f"bench{i}", concurrency=4)
        for burst in range(bursts):
            if burst:
                stack.http.post(f"{stack.sim_url}/_sim/reset")  # its tasks and counts
            name = label if not burst else f"{label}, {SECOND_BURST}"
            console.print(
                f"[bold]{name}[/]: {jobs} jobs, limit {limit}, {duration:.1f} s each, "
                f"{workers} workers"
                + (f"; {', '.join(f'{k}={v}' for k, v in poll_env.items())}" if poll_env else "")
            )
            results.append(_utilization_burst(console, stack, name, jobs, limit, duration))
    return results


def _utilization_burst(
    console: Console, stack: LocalStack, label: str, jobs: int, limit: int, duration: float
) -> dict[str, Any]:
    """One backlog of ``jobs`` sent at once; measured on its own jobs and upstream tasks."""
    before = stack.count_ended()
    ((since,),) = stack.sql("SELECT now()")
    for i in range(jobs):
        stack.send({"prompt": f"utilization {i}", "subject_reference_images": [REFERENCE]})
    wait_progress(
        console, f"{label}: jobs ended", jobs, lambda: stack.count_ended() - before,
        duration * jobs + 300,
    )  # fmt: skip
    ((first, last),) = stack.sql(
        "SELECT min(created_at), max(finished_at) FROM jobs WHERE created_at >= :since",
        since=since,
    )
    tasks = stack.sim_tasks()
    finished = {
        task_id: at.timestamp()
        for task_id, at in stack.sql(
            "SELECT upstream_task_id, finished_at FROM jobs WHERE created_at >= :since",
            since=since,
        )
    }
    stats = stack.sim_stats()
    statuses = _jobs_by_status(stack, since)

    makespan = (last - first).total_seconds()
    busy = sum(float(t["ends_at"]) - float(t["created_at"]) for t in tasks)
    # A handoff: the upstream ends a task, we see it (detection), the next POST lands (refill).
    detection = [finished[t["task_id"]] - float(t["ends_at"]) for t in tasks]
    ends = sorted(finished.values())
    starts = sorted(float(t["created_at"]) for t in tasks)[limit:]
    refill = [start - max(e for e in ends if e <= start) for start in starts if ends[0] <= start]
    ideal = math.ceil(jobs / limit) * duration
    http_429 = _429s(stats)
    return {
        "makespan_seconds": makespan,
        "ideal_seconds": ideal,
        "utilization": busy / (limit * makespan),
        "slot_idle_seconds": limit * makespan - busy,
        "upstream_429s": http_429["rate"] + http_429["concurrency"],
        "http_429": http_429,
        "polls_per_job": stats["polls"] / jobs,
        "max_concurrency": stats["max_concurrency"],
        "detection_lag": {"p50": percentile(detection, 50), "p99": percentile(detection, 99)},
        "refill_latency": {"p50": percentile(refill, 50), "p99": percentile(refill, 99)},
        "statuses": statuses,
    }


# --- realistic -----------------------------------------------------------------------

#: The same workload polled every second, as the upstream's docs suggest: every poll knob
#: pinned to 1 s, and the adaptive placement and slot probes switched off.
POLL_EVERY_SECOND = {
    "IMAGEGEN_POLL_ADAPTIVE": "false",
    "IMAGEGEN_SLOT_PROBES": "false",
    "IMAGEGEN_POLL_INITIAL_SECONDS": "1",
    "IMAGEGEN_POLL_INTERVAL_SECONDS": "1",
    "IMAGEGEN_POLL_BACKOFF": "1",
    "IMAGEGEN_POLL_MAX_INTERVAL_SECONDS": "1",
    "IMAGEGEN_POLL_JITTER": "0",
}
REALISTIC_TARGETS = {
    "efficiency": 0.95,
    "rate_429s": 0,
    "polls_per_job": 2.5,
    "efficiency_ratio": 1.6,
}


def realistic(
    console: Console,
    output: Path,
    *,
    jobs: int = 60,
    limit: int = 3,
    rpm: int = 100,
    median: float = 8.0,
    sigma: float = 0.5,
    seed: int = 1,
    workers: int = 3,
    compare: bool = True,
    redis_db: int = 12,
) -> dict[str, Any]:
    """A team's lowest tier on varying durations: how close the shipped defaults come to
    the ideal schedule of the same upstream work, next to the same workload polled every 1 s.

    Each run gets a fresh simulator (same timing seed, so the i-th accepted task lasts as
    long in both), database and Redis db, so nothing learned in one run carries over.
    """
    workload: dict[str, Any] = {
        "jobs": jobs, "limit": limit, "rpm": rpm, "median": median, "sigma": sigma,
        "seed": seed, "workers": workers, "redis_db": redis_db,
    }  # fmt: skip
    runs: dict[str, dict[str, Any]] = {}
    labels = {"shipped_defaults": "shipped defaults", "poll_every_1s": "1 s polling"}
    runs["shipped_defaults"] = _realistic_run(console, labels["shipped_defaults"], {}, **workload)
    if compare:
        runs["poll_every_1s"] = _realistic_run(
            console, labels["poll_every_1s"], POLL_EVERY_SECOND, **workload
        )
    ratio = None
    if compare:
        ratio = runs["shipped_defaults"]["efficiency"] / max(
            1e-9, runs["poll_every_1s"]["efficiency"]
        )
    data = {
        "parameters": {
            **workload,
            "worker_threads": _shipped_worker_threads(),
            "compare": compare,
            "poll_every_1s_env": POLL_EVERY_SECOND,
        },
        "runs": runs,
        "efficiency_ratio": ratio,
        "targets": REALISTIC_TARGETS,
    }
    shown = [runs[key] for key in labels if key in runs]
    targets = {
        "efficiency": ">= 0.95",
        "polls per job": "<= 2.5",
        "429s, rate limit": "0",
        "max upstream concurrency": f"<= {limit}",
        "jobs succeeded": str(jobs),
    }
    rows = [
        (metric, *cells, targets.get(metric.strip(), ""))
        for metric, cells in _realistic_cells(shown, jobs)
    ]
    if ratio is not None:
        rows.insert(3, ("efficiency shipped / 1 s polling", f"{ratio:.2f}", "", ">= 1.6"))
    columns = ["metric", *(labels[key] for key in labels if key in runs), "target"]
    emit(console, "realistic", rows, data, output, columns=columns)
    return data


def _shipped_worker_threads() -> int:
    from worker.config import Settings

    threads = Settings.model_fields["worker_concurrency"].default
    assert isinstance(threads, int)
    return threads


def _realistic_run(
    console: Console,
    label: str,
    poll_env: dict[str, str],
    *,
    jobs: int,
    limit: int,
    rpm: int,
    median: float,
    sigma: float,
    seed: int,
    workers: int,
    redis_db: int,
) -> dict[str, Any]:
    """One run of the realistic workload with ``poll_env`` on top of the team's tier."""
    # The tier's concurrency and requests per minute are the team's configuration, not a
    # tuning: a deployment states them. Nothing else is set, so the shipped defaults run.
    env = {"IMAGEGEN_UPSTREAM_CONCURRENCY": str(limit), "IMAGEGEN_UPSTREAM_RPM": str(rpm)}
    sim_env = {
        "SIM_CONCURRENCY": str(limit),
        "SIM_RPM": str(rpm),
        "SIM_TIMING": "lognormal",
        "SIM_DURATION_MEDIAN_SECONDS": str(median),
        "SIM_DURATION_SIGMA": str(sigma),
        "SIM_TIMING_SEED": str(seed),
        **STOCK_IMAGES,
    }
    threads = _shipped_worker_threads()
    with local_stack(console, redis_db, **env, **poll_env) as stack:
        stack.start_sim(**sim_env)
        for i in range(workers):
            stack.start_worker(f"bench{i}", concurrency=threads)
        console.print(
            f"[bold]{label}[/]: {jobs} jobs at once, limit {limit}, {rpm} requests/min, "
            f"lognormal durations (median {median:g} s, sigma {sigma:g}, seed {seed}), "
            f"{workers} workers x {threads} threads"
            + (f"; {', '.join(f'{k}={v}' for k, v in poll_env.items())}" if poll_env else "")
        )
        for i in range(jobs):
            stack.send({"prompt": f"realistic {i}", "subject_reference_images": [REFERENCE]})
        # Generous: 1 s polling on this budget takes several times the ideal.
        timeout = jobs * median * 2 + 600
        wait_progress(console, f"{label}: jobs ended", jobs, stack.count_ended, timeout)
        tasks = stack.sim_tasks()
        stats = stack.sim_stats()
        statuses = _jobs_by_status(stack)
        finished = [
            (task_id, at.timestamp(), int(polls))
            for task_id, at, polls in stack.sql(
                "SELECT upstream_task_id, finished_at, poll_count FROM jobs"
            )
            if isinstance(at, datetime)
        ]
    result = _realistic_measure(tasks, stats, finished, jobs=jobs, limit=limit, rpm=rpm)
    result["statuses"] = statuses
    console.print(
        f"{label}: efficiency {result['efficiency']:.3f} "
        f"(ideal {result['ideal_makespan_seconds']:.1f} s, "
        f"actual {result['actual_makespan_seconds']:.1f} s)"
    )
    return result


def _realistic_measure(
    tasks: list[dict[str, Any]],
    stats: dict[str, Any],
    finished: list[tuple[str | None, float, int]],
    *,
    jobs: int,
    limit: int,
    rpm: int,
) -> dict[str, Any]:
    """Efficiency, requests, lags, 429s and idle time of one run, from the simulator's task
    records and counters and the jobs' (upstream task id, finished_at, poll_count)."""
    intervals = [(float(t["created_at"]), float(t["ends_at"])) for t in tasks]
    t0 = min((created for created, _ in intervals), default=0.0)
    end = max((at for _, at, _ in finished), default=t0)
    ideal = ideal_makespan([(created, ended - created) for created, ended in intervals], limit)
    actual = end - t0
    ends = {t["task_id"]: float(t["ends_at"]) for t in tasks}
    lags = [at - ends[task_id] for task_id, at, _ in finished if task_id in ends]
    rejected: dict[str, int] = stats["submits_rejected"]
    submits = stats["submits_accepted"] + sum(rejected.values())
    requests = submits + stats["polls"]
    idle = idle_breakdown(intervals, limit, t0, end)
    busy = sum(ended - created for created, ended in intervals)
    return {
        "efficiency": ideal / actual if actual > 0 else 0.0,
        "ideal_makespan_seconds": ideal,
        "actual_makespan_seconds": actual,
        "upstream_tasks": len(tasks),
        "polls": stats["polls"],
        "polls_per_job": stats["polls"] / jobs,
        "submits": submits,
        "requests": requests,
        "requests_per_job": requests / jobs,
        # What the team's budget allowed over the run, against what was sent.
        "request_budget": rpm * actual / 60,
        "worker_poll_count_per_job": sum(p for _, _, p in finished) / max(1, len(finished)),
        "detection_lag": {
            "p50": percentile(lags, 50),
            "p99": percentile(lags, 99),
            "max": max(lags, default=0.0),
        },
        "http_429": _429s(stats),
        "submits_rejected": rejected,
        "polls_by_status": stats["polls_by_status"],
        "max_concurrency": stats["max_concurrency"],
        "busy_slot_seconds": busy,
        "slot_idle": {
            "seconds": idle.total,
            "fraction": idle.total / (limit * actual) if actual > 0 else 0.0,
            "before_first_tasks": idle.start,
            "handoffs": idle.handoff_total,
            "after_last_ends": idle.tail,
            # The longest stretches one slot stood idle between a task's upstream end and
            # the next task created on it, in seconds from the first task's creation.
            "largest_handoff_gaps": [
                {"from": gap.start, "to": gap.end, "seconds": gap.seconds}
                for gap in idle.largest(5)
            ],
        },
    }


def _realistic_cells(runs: list[dict[str, Any]], jobs: int) -> list[tuple[str, list[str]]]:
    """(metric, one cell per run) for the realistic table."""

    def cells(fmt: Callable[[dict[str, Any]], str]) -> list[str]:
        return [fmt(run) for run in runs]

    def gaps(run: dict[str, Any]) -> str:
        top = run["slot_idle"]["largest_handoff_gaps"][:3]
        return ", ".join(f"{g['seconds']:.1f} s @{g['from']:.0f} s" for g in top) or "-"

    def succeeded(run: dict[str, Any]) -> str:
        return _succeeded_row(run["statuses"], jobs)[1]

    return [
        ("efficiency", cells(lambda r: f"{r['efficiency']:.3f}")),
        (
            "  ideal makespan (same tasks, zero lag)",
            cells(lambda r: _s(r["ideal_makespan_seconds"])),
        ),
        ("  actual makespan", cells(lambda r: _s(r["actual_makespan_seconds"]))),
        ("polls per job", cells(lambda r: f"{r['polls_per_job']:.2f}")),
        ("requests per job (submits + polls)", cells(lambda r: f"{r['requests_per_job']:.2f}")),
        (
            "  requests / budget over the makespan",
            cells(lambda r: f"{r['requests']} / {r['request_budget']:.0f}"),
        ),
        (
            "detection lag p50 / p99",
            cells(lambda r: f"{r['detection_lag']['p50']:.2f} / {r['detection_lag']['p99']:.2f} s"),
        ),
        ("429s, rate limit", cells(lambda r: str(r["http_429"]["rate"]))),
        ("429s, concurrency limit", cells(lambda r: str(r["http_429"]["concurrency"]))),
        (
            "slot idle (limit x makespan - busy)",
            cells(lambda r: f"{_s(r['slot_idle']['seconds'])} ({r['slot_idle']['fraction']:.0%})"),
        ),
        (
            "  before first / handoffs / after last ends",
            cells(
                lambda r: (
                    " / ".join(
                        f"{r['slot_idle'][k]:.1f}"
                        for k in ("before_first_tasks", "handoffs", "after_last_ends")
                    )
                    + " s"
                )
            ),
        ),
        ("  largest handoff gaps (@ from t0)", cells(gaps)),
        ("max upstream concurrency", cells(lambda r: str(r["max_concurrency"]))),
        ("jobs succeeded", cells(succeeded)),
    ]


def _s(seconds: float) -> str:
    return f"{seconds:.1f} s"
