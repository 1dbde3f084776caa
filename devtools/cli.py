"""``python -m devtools``: run the demo and the benchmarks (development only, not shipped)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Development tools for imagegen: the end-to-end demo and the benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(
    help="Benchmarks: each starts its own simulator, database and workers, prints a table "
    "and writes JSON.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")
BenchOutput = Annotated[Path, typer.Option(help="Folder for the JSON results.")]
TunedOption = Annotated[
    bool,
    typer.Option(
        help="Also run with the poll settings tuned to the duration the bench configured "
        "(a second column, for comparison; the targets apply to the shipped defaults)."
    ),
]
out = Console()


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the jobs.")] = 180.0,
    output: Annotated[Path, typer.Option(help="Where images are written.")] = Path("demo-output"),
) -> None:
    """Run the whole pipeline once: simulator (unless MODELLIX_API_KEY is set), worker, Flower."""
    from .demo import run_demo

    raise typer.Exit(run_demo(timeout=timeout, output=output, console=out))


@bench_app.command("throughput")
def bench_throughput(
    jobs: Annotated[int, typer.Option(help="Jobs (and no-op tasks) to run.")] = 2000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    threads: Annotated[int, typer.Option(help="Threads per worker.")] = 16,
    output: BenchOutput = Path("bench-results"),
) -> None:
    """Jobs/s end to end against a zero-latency unlimited upstream, vs a no-op Celery task."""
    from .bench.scenarios import throughput

    throughput(out, output, jobs=jobs, workers=workers, threads=threads)


@bench_app.command("inflight")
def bench_inflight(
    jobs: Annotated[int, typer.Option(help="Jobs submitted at once.")] = 5000,
    duration: Annotated[float, typer.Option(help="Upstream seconds per task.")] = 30.0,
    naive_jobs: Annotated[int, typer.Option(help="Jobs for the naive design.")] = 64,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    threads: Annotated[int, typer.Option(help="Threads per worker.")] = 16,
    split_queues: Annotated[
        bool, typer.Option(help="Separate workers for new requests and for submits/polls.")
    ] = False,
    tuned: TunedOption = False,
    redis_db: Annotated[int, typer.Option(help="Redis db number of the stacks.")] = 11,
    output: BenchOutput = Path("bench-results"),
) -> None:
    """Upstream tasks kept in flight, detection lag, polls and memory; vs GET+sleep loops."""
    from .bench.scenarios import inflight

    inflight(
        out, output, jobs=jobs, duration=duration, naive_jobs=naive_jobs, workers=workers,
        threads=threads, split_queues=split_queues, tuned=tuned, redis_db=redis_db,
    )  # fmt: skip


@bench_app.command("utilization")
def bench_utilization(
    jobs: Annotated[int, typer.Option(help="Backlog size.")] = 60,
    limit: Annotated[int, typer.Option(help="Upstream concurrency limit.")] = 3,
    duration: Annotated[float, typer.Option(help="Upstream seconds per task.")] = 2.0,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 3,
    tuned: TunedOption = False,
    redis_db: Annotated[int, typer.Option(help="Redis db number of the stack.")] = 12,
    output: BenchOutput = Path("bench-results"),
) -> None:
    """How busy a backlog keeps the paid upstream slots (makespan vs ideal, idle, 429s)."""
    from .bench.scenarios import utilization

    utilization(
        out, output, jobs=jobs, limit=limit, duration=duration, workers=workers, tuned=tuned,
        redis_db=redis_db,
    )  # fmt: skip


@bench_app.command("realistic")
def bench_realistic(
    jobs: Annotated[int, typer.Option(help="Backlog size, sent at once.")] = 60,
    limit: Annotated[int, typer.Option(help="The team's upstream concurrency limit.")] = 3,
    rpm: Annotated[int, typer.Option(help="The team's upstream requests per minute.")] = 100,
    median: Annotated[float, typer.Option(help="Median upstream seconds per task.")] = 8.0,
    sigma: Annotated[float, typer.Option(help="Log-spread of the durations.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the simulator's durations.")] = 1,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 3,
    compare: Annotated[
        bool, typer.Option(help="Also run the same workload polled every 1 s.")
    ] = True,
    redis_db: Annotated[int, typer.Option(help="Redis db number of the stacks.")] = 12,
    output: BenchOutput = Path("bench-results"),
) -> None:
    """Shipped defaults on a team's tier with varying durations: efficiency against the ideal
    schedule of the same tasks, polls, detection lag, 429s by kind; vs polling every 1 s."""
    from .bench.scenarios import realistic

    realistic(
        out, output, jobs=jobs, limit=limit, rpm=rpm, median=median, sigma=sigma, seed=seed,
        workers=workers, compare=compare, redis_db=redis_db,
    )  # fmt: skip


@bench_app.command("api")
def bench_api(
    seconds: Annotated[float, typer.Option(help="Measured seconds per cell.")] = 5.0,
    warmup: Annotated[float, typer.Option(help="Warm-up seconds before each cell.")] = 1.0,
    clients: Annotated[
        str, typer.Option(help="Concurrent clients per cell, comma-separated.")
    ] = "1,16,64",
    redis_db: Annotated[int, typer.Option(help="Redis db number of the stack.")] = 13,
    with_worker: Annotated[
        bool, typer.Option(help="Keep the worker running on this box during the cells.")
    ] = False,
    output: BenchOutput = Path("bench-results"),
) -> None:
    """HTTP API requests/s and p50/p99 of POST and GET /v1/jobs, vs /healthz of the same server."""
    from .bench.api import api_bench

    counts = tuple(int(c) for c in clients.split(",") if c.strip())
    api_bench(
        out,
        output,
        seconds=seconds,
        warmup=warmup,
        clients=counts,
        redis_db=redis_db,
        with_worker=with_worker,
    )


@bench_app.command("all")
def bench_all(output: BenchOutput = Path("bench-results")) -> None:
    """Every scenario with its defaults."""
    from .bench.api import api_bench
    from .bench.scenarios import inflight, realistic, throughput, utilization

    throughput(out, output)
    utilization(out, output)
    realistic(out, output)
    inflight(out, output)
    api_bench(out, output)


def main() -> None:
    """Entry point of ``python -m devtools``."""
    app()
