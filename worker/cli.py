"""The ``imagegen`` command: run the services, submit and inspect jobs.

The demo and the benchmarks are development tools: ``python -m devtools`` (not shipped).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from api_schema import (
    AspectRatio,
    GenerationRequest,
    JobStatus,
    JobView,
    describe_validation_error,
)

from .config import Settings, get_settings

app = typer.Typer(
    help="Run paid Modellix image-01-live generations through Celery workers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
out = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        err.print(f"[red]bad configuration:[/] {describe_validation_error(exc)}")
        raise typer.Exit(2) from None


def _require_key(settings: Settings) -> None:
    key = settings.modellix_api_key
    if key is None or not key.get_secret_value().strip():
        err.print(
            "[red]MODELLIX_API_KEY is not set.[/] Set it (and MODELLIX_BASE_URL for the "
            "simulator, e.g. http://127.0.0.1:8900)."
        )
        raise typer.Exit(2)


def _check_database(settings: Settings) -> None:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from . import jobs
    from .db import session_scope

    try:
        with session_scope() as session:
            jobs.ping(session)
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        err.print(f"[red]database not ready[/] ({reason}); run `imagegen db upgrade` first")
        raise typer.Exit(2) from None


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Tasks run at once.")] = None,
    pool: Annotated[str, typer.Option(help="threads (default), prefork, solo.")] = "threads",
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated queues, most urgent first (taken in this order)."),
    ] = None,
    hostname: Annotated[str | None, typer.Option(help="Node name, e.g. w1@%h.")] = None,
    beat: Annotated[
        bool, typer.Option(help="Also run the sweeper schedule (one per site).")
    ] = False,
    loglevel: str = "info",
) -> None:
    """Run a Celery worker consuming every imagegen queue."""
    settings = _settings()
    _require_key(settings)
    _check_database(settings)
    from .celery_app import CONSUME_ORDER
    from .celery_app import app as celery_app

    if concurrency:  # the database pool is sized from the setting
        os.environ["IMAGEGEN_WORKER_CONCURRENCY"] = str(concurrency)
        get_settings.cache_clear()
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={queues or ','.join(CONSUME_ORDER)}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if beat:
        argv += ["--beat", f"--schedule={_beat_schedule_file()}"]
    celery_app.worker_main(_logging("worker", settings, loglevel) + argv)


def _logging(service: str, settings: Settings, level: str = "info") -> list[str]:
    """Configure a service's logs; the Celery options that go with them (in JSON, no
    banner on stdout: every line is a log line)."""
    from . import logs

    logs.configure(service, settings.log_format, level)
    return ["--quiet"] if logs.LogFormat(settings.log_format) is logs.LogFormat.JSON else []


def _beat_schedule_file() -> str:
    directory = Path(os.environ.get("IMAGEGEN_STATE_DIR", Path.cwd() / ".imagegen"))
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / "celerybeat-schedule")


@app.command()
def beat(loglevel: str = "info") -> None:
    """Run the periodic sweeper (run exactly one per site)."""
    settings = _settings()
    _require_key(settings)
    from .celery_app import app as celery_app

    celery_app.start(
        [
            *_logging("beat", settings, loglevel),
            "beat",
            f"--loglevel={loglevel}",
            f"--schedule={_beat_schedule_file()}",
        ]
    )


@app.command()
def flower(
    port: Annotated[int | None, typer.Option(help="Port (IMAGEGEN_FLOWER_PORT).")] = None,
    address: str = "127.0.0.1",
) -> None:
    """Run Flower, behind basic auth from IMAGEGEN_FLOWER_BASIC_AUTH (user:password)."""
    settings = _settings()
    auth = settings.flower_basic_auth
    if auth is None or ":" not in auth.get_secret_value():
        err.print("[red]IMAGEGEN_FLOWER_BASIC_AUTH must be set to user:password[/]")
        raise typer.Exit(2)
    # Through the environment, not argv, so the password does not show in `ps`.
    os.environ["FLOWER_BASIC_AUTH"] = auth.get_secret_value()
    os.environ.setdefault("FLOWER_PURGE_OFFLINE_WORKERS", "60")
    from .celery_app import app as celery_app
    from .ops.flower import protect_metrics

    protect_metrics()  # Flower leaves /metrics open; ours asks for the same credentials

    quiet = _logging("flower", settings)
    celery_app.start(
        [*quiet, "flower", f"--port={port or settings.flower_port}", f"--address={address}"]
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Address (IMAGEGEN_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (IMAGEGEN_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="Processes (uvicorn workers).")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log each request.")] = False,
) -> None:
    """Run the HTTP API (/v1/jobs) over the same database and broker, with bearer tokens from
    IMAGEGEN_API_TOKENS (tenant:token pairs)."""
    settings = _settings()
    try:
        tokens = settings.api_token_map
    except ValueError as exc:
        err.print(f"[red]bad configuration:[/] {exc}")
        raise typer.Exit(2) from None
    if not tokens:
        err.print("[red]IMAGEGEN_API_TOKENS must name at least one tenant:token[/]")
        raise typer.Exit(2)
    _check_database(settings)
    import uvicorn

    from .logs import dict_config

    _logging("api", settings)
    uvicorn.run(
        "worker.api.app:create_app",
        factory=True,
        # a logging config, not only this process's: each of --workers applies it
        log_config=dict_config("api", settings.log_format),
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        access_log=access_log,
        log_level="info",
        # Behind a proxy the client's address comes from it; never trust it by default.
        proxy_headers=False,
        server_header=False,
    )


@app.command()
def simulator(
    host: str = "127.0.0.1",
    port: int = 8900,
    concurrency: Annotated[int | None, typer.Option(help="Team concurrency (0 = none).")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute (0 = none).")] = None,
    pending: Annotated[float | None, typer.Option(help="Seconds a task stays pending.")] = None,
    processing: Annotated[float | None, typer.Option(help="Seconds it then processes.")] = None,
    public_url: Annotated[str | None, typer.Option(help="Base URL clients reach it at.")] = None,
    timing: Annotated[str | None, typer.Option(help="Task durations: fixed or lognormal.")] = None,
    median: Annotated[
        float | None, typer.Option(help="Lognormal median of a whole task, seconds.")
    ] = None,
    sigma: Annotated[float | None, typer.Option(help="Lognormal sigma of a whole task.")] = None,
    timing_seed: Annotated[int | None, typer.Option(help="Seed of the duration RNG.")] = None,
) -> None:
    """Run the Modellix simulator (settings from SIM_* variables, overridden by options)."""
    from simulator.config import SimConfig
    from simulator.server import serve

    from .logs import dict_config, get_logger

    settings = _settings()
    config = SimConfig.from_env()
    for field, value in (
        ("concurrency_limit", concurrency),
        ("rpm_limit", rpm),
        ("pending_seconds", pending),
        ("processing_seconds", processing),
    ):
        if value is not None:
            setattr(config, field, value)
    timing_changes = {
        name: value
        for name, value in (
            ("timing", timing),
            ("duration_median_seconds", median),
            ("duration_sigma", sigma),
            ("timing_seed", timing_seed),
        )
        if value is not None
    }
    try:
        # Through update(), unlike the fields above, so a bad value is refused by name.
        config.update(timing_changes)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    if public_url is not None:
        config.public_base_url = public_url
    elif "SIM_PUBLIC_BASE_URL" not in os.environ:
        config.public_base_url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    _logging("simulator", settings)
    get_logger("imagegen.simulator").info(
        "simulator.started",
        url=f"http://{host}:{port}",
        concurrency=config.concurrency_limit or None,
        rpm=config.rpm_limit or None,
    )
    serve(config, host=host, port=port, log_config=dict_config("simulator", settings.log_format))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create the database if it is missing, then migrate it."""
    from sqlalchemy.engine import make_url

    from .dbadmin import upgrade

    settings = _settings()
    created = upgrade(settings.database_url, revision)
    name = make_url(settings.database_url).database
    out.print(f"database {name}: {'created and ' if created else ''}migrated to {revision}")


def _image_argument(value: str) -> str:
    if value.startswith(("https://", "data:")):
        return value
    path = Path(value)
    if not path.is_file():
        raise typer.BadParameter(f"{value}: not an https URL and no such file")
    data = path.read_bytes()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        kind = "png"
    elif data.startswith(b"\xff\xd8\xff"):
        kind = "jpeg"
    else:
        raise typer.BadParameter(f"{value}: only JPEG and PNG images are accepted")
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


@app.command()
def submit(
    prompt: Annotated[str, typer.Argument(help="What to make of the portrait.")],
    images: Annotated[list[str], typer.Argument(help="Reference image files or https URLs.")],
    n: Annotated[int, typer.Option(help="Images to generate, 1..9.")] = 1,
    aspect_ratio: Annotated[AspectRatio | None, typer.Option(help="Output aspect ratio.")] = None,
    width: Annotated[
        int | None, typer.Option(help="512..2048, divisible by 8; with --height.")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="512..2048, divisible by 8; with --width.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed and parameters, same images.")] = None,
    prompt_optimizer: Annotated[
        bool, typer.Option(help="Let the upstream rewrite the prompt.")
    ] = False,
    priority: Annotated[int, typer.Option(help="0..9, higher first.")] = 5,
    deadline: Annotated[int | None, typer.Option(help="Seconds before the job gives up.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same job.")] = None,
    metadata: Annotated[
        str | None, typer.Option(help="A JSON object returned with the job.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Show progress until the job ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits.")] = 600.0,
) -> None:
    """Validate and enqueue one generation; print its job id."""
    from api_schema.producer import enqueue

    settings = _settings()
    raw: dict[str, Any] = {
        "prompt": prompt,
        "subject_reference_images": [_image_argument(i) for i in images],
        "n": n,
        "prompt_optimizer": prompt_optimizer,
        "priority": priority,
    }
    optional = {
        "aspect_ratio": aspect_ratio.value if aspect_ratio else None,
        "width": width,
        "height": height,
        "seed": seed,
        "deadline_seconds": deadline,
        "idempotency_key": idempotency_key,
    }
    raw.update({k: v for k, v in optional.items() if v is not None})
    if metadata is not None:
        try:
            raw["metadata"] = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--metadata is not JSON: {exc}") from None
    try:
        request = GenerationRequest.model_validate(raw)
    except ValidationError as exc:
        err.print(f"[red]invalid request:[/] {describe_validation_error(exc)}")
        raise typer.Exit(2) from None
    job_id = enqueue(request, broker_url=settings.broker_url)
    out.print(job_id)
    if wait:
        _wait_and_report([job_id], timeout)


def _wait_and_report(job_ids: list[str], timeout: float) -> None:
    from .progress import summary_table, watch

    views = watch(job_ids, timeout=timeout, console=err)
    out.print(summary_table(views))
    if not all(v is not None and v.status is JobStatus.SUCCEEDED for v in views.values()):
        raise typer.Exit(1)


@app.command()
def status(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JobView as JSON.")] = False,
) -> None:
    """Show one job."""
    from . import jobs
    from .db import session_scope
    from .progress import summary_table

    _settings()
    with session_scope() as session:
        job = jobs.view(session, job_id)
    if job is None:
        err.print(f"no job {job_id}")
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(job.model_dump_json(indent=2) + "\n")
    else:
        out.print(summary_table({job_id: job}))


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a queued job, or stop polling one already submitted (the upstream has no cancel)."""
    from . import jobs
    from .db import session_scope
    from .delivery import outbox

    _settings()
    outbox.start_buffer()
    with session_scope() as session:
        done, now = jobs.cancel(session, job_id)
    if now is None:
        err.print(f"no job {job_id}")
        raise typer.Exit(1)
    if not done:
        if now is JobStatus.SUBMITTING:  # its POST started: the answer is a moment away
            err.print(f"job {job_id}: its submit is under way; try again in a moment")
        else:
            err.print(f"job {job_id} is {now.value}; nothing to cancel")
        raise typer.Exit(1)
    # Its slot is free now: a sweep admits the next queued job without waiting for beat
    # (sent through the workers' app: internal messages are signed).
    from .delivery.tasks import publish_deliveries
    from .jobs.tasks import sweep

    publish_deliveries()  # committed: the producer hears of the cancel
    sweep.apply_async()
    out.print(f"job {job_id} cancelled")


jobs_app = typer.Typer(help="Operate on jobs: list, history, retry.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def _plain(*values: str) -> list[Text]:
    # Ids, details and messages are data (a producer's job id, an upstream's words): shown
    # as they are, never read as Rich markup.
    return [Text(value) for value in values]


def _view_row(view: JobView) -> list[Text]:
    finished = f"{view.finished_at:%Y-%m-%d %H:%M:%S}" if view.finished_at else ""
    return _plain(
        f"{view.created_at:%Y-%m-%d %H:%M:%S}", view.id, view.status.value, str(view.priority),
        view.error_code.value if view.error_code else "", finished, view.tenant or "",
    )  # fmt: skip


@jobs_app.command("list")
def jobs_list(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Created after: 15m, 2h, 3d, 1w or an ISO 8601 time.")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first (1..10000).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JobView per line.")] = False,
) -> None:
    """Jobs of every tenant, newest first."""
    from datetime import UTC, datetime

    from .db import autocommit
    from .jobs import operator

    _settings()
    try:
        after = operator.parse_since(since, datetime.now(UTC)) if since else None
        with autocommit() as connection:
            views = operator.list_jobs(connection, status=status, since=after, limit=limit)
    except operator.BadInputError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    if as_json:
        for view in views:
            sys.stdout.write(view.model_dump_json() + "\n")
        return
    table = Table("created", "job", "status", "priority", "error", "finished", "tenant")
    for view in views:
        table.add_row(*_view_row(view))
    out.print(table)


@jobs_app.command("events")
def jobs_events(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One event per line.")] = False,
) -> None:
    """A job's history: every change of status, oldest first."""
    from .db import autocommit
    from .jobs import operator

    _settings()
    with autocommit() as connection:
        found = operator.history(connection, job_id)
    if found is None:
        err.print(f"no job {job_id}", markup=False)
        raise typer.Exit(1)
    if as_json:
        for event in found.events:
            sys.stdout.write(json.dumps({"job_id": found.job_id, **event.as_json()}) + "\n")
        return
    table = Table("at", "from → to", "detail", "worker", title=Text(f"job {found.job_id}"))
    for event in found.events:
        table.add_row(
            *_plain(
                f"{event.at:%Y-%m-%d %H:%M:%S.%f}"[:-3],
                f"{event.from_status or '∅'} → {event.to_status}",
                event.detail or "",
                event.worker or "",
            )
        )
    out.print(table)


@jobs_app.command("retry")
def jobs_retry(
    job_id: str,
    force: Annotated[
        bool, typer.Option(help="Retry a job that succeeded, or one retried already.")
    ] = False,
) -> None:
    """Run a failed or cancelled job's request again as a new job, linked to the old one."""
    from .db import transaction
    from .jobs import operator

    settings = _settings()
    with transaction() as connection:
        outcome = operator.record_retry(
            connection,
            job_id,
            force=force,
            default_deadline_seconds=settings.default_deadline_seconds,
        )
    if isinstance(outcome, operator.Refused):
        err.print(outcome.message, markup=False)
        # 1: no such job (as `status` and `cancel`); 3: a job this command must not retry
        raise typer.Exit(1 if outcome.reason is operator.Refusal.NOT_FOUND else 3)
    if not operator.request_admission():
        err.print("broker unreachable: the next scheduled sweep admits the new job")
    out.print(outcome.job_id, markup=False)
    err.print(
        f"job {outcome.retry_of} ({outcome.old_status.value}) retried as {outcome.job_id}",
        markup=False,
    )


deliveries_app = typer.Typer(
    help="Where ended jobs are delivered (Celery replies, webhooks).", no_args_is_help=True
)
app.add_typer(deliveries_app, name="deliveries")


@deliveries_app.command("list")
def deliveries_list(
    state: Annotated[
        str | None, typer.Option(help="pending, delivered or dead (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.", min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Deliveries of ended jobs, newest first."""
    from api_schema import DeliveryState

    from .db import session_scope
    from .delivery import outbox

    _settings()
    try:
        wanted = DeliveryState(state) if state else None
    except ValueError:
        err.print(f"--state must be one of {', '.join(s.value for s in DeliveryState)}")
        raise typer.Exit(2) from None
    with session_scope() as session:
        rows = outbox.listing(session.connection(), state=wanted, limit=limit)
    if as_json:
        for job_id, view in rows:
            sys.stdout.write(json.dumps({"job_id": job_id, **view.model_dump(mode="json")}) + "\n")
        return
    table = Table("id", "job", "channel", "state", "attempts", "last error")
    for job_id, view in rows:
        table.add_row(
            view.id, job_id, view.channel, view.state.value, str(view.attempts),
            view.last_error or "",
        )  # fmt: skip
    out.print(table)


@deliveries_app.command("retry")
def deliveries_retry(delivery_id: str) -> None:
    """Try a delivery again now (a dead one too): its attempts go on from where they were."""
    from .db import autocommit
    from .delivery import outbox

    _settings()
    with autocommit() as connection:
        attempts = outbox.retry_now(connection, delivery_id)
    if attempts is None:
        err.print(f"no delivery {delivery_id}")
        raise typer.Exit(1)
    from .delivery.tasks import deliver

    deliver.apply_async((delivery_id, attempts))
    out.print(f"delivery {delivery_id} queued (attempt {attempts + 1})")


@app.command()
def dropped(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Messages the workers refused with no job to record them on (and why)."""
    from sqlalchemy import select

    from .db import session_scope
    from .models import DroppedMessage

    _settings()
    with session_scope() as session:
        rows = session.scalars(
            select(DroppedMessage).order_by(DroppedMessage.id.desc()).limit(limit)
        ).all()
    if as_json:
        for r in rows:
            fields = ("id", "queue", "task", "message_id", "size", "reason", "worker")
            record = {f: getattr(r, f) for f in fields} | {"at": r.at.isoformat()}
            sys.stdout.write(json.dumps(record) + "\n")
        return
    table = Table("at", "queue", "task", "id", "bytes", "reason")
    for r in rows:
        table.add_row(
            f"{r.at:%Y-%m-%d %H:%M:%S}",
            r.queue,
            r.task or "",
            r.message_id or "",
            str(r.size),
            r.reason,
        )
    out.print(table)


def _snapshot_reader(settings: Settings) -> Any:
    from .metrics.snapshot import Reader

    return Reader(
        settings.limiter_redis_url,
        rpm=settings.upstream_rpm,
        slots_limit=settings.upstream_concurrency,
    )


@app.command()
def metrics(
    host: Annotated[str | None, typer.Option(help="Address (IMAGEGEN_METRICS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (IMAGEGEN_METRICS_PORT).")] = None,
) -> None:
    """Serve Prometheus metrics on /metrics: the service now and what every worker observed."""
    import ipaddress

    from .metrics.exporter import serve

    settings = _settings()
    host = host or settings.metrics_host
    auth = settings.metrics_basic_auth
    credentials = auth.get_secret_value() if auth is not None else None
    if credentials is not None and ":" not in credentials:
        err.print("[red]IMAGEGEN_METRICS_BASIC_AUTH must be user:password[/]")
        raise typer.Exit(2)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if credentials is None and not loopback:
        err.print(f"[red]binding {host} needs IMAGEGEN_METRICS_BASIC_AUTH (user:password)[/]")
        raise typer.Exit(2)
    _logging("metrics", settings)  # JSON lines like the other services
    serve(_snapshot_reader(settings), host, port or settings.metrics_port, credentials)


@app.command()
def top(
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON snapshot.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between frames.")] = 1.0,
) -> None:
    """A live view of the service: backlog, slots, request budget, errors, stuck jobs."""
    from .metrics.top import run

    settings = _settings()
    _check_database(settings)
    run(_snapshot_reader(settings).take, once=once, as_json=as_json, interval=interval, console=out)


def main() -> None:
    """Entry point of the ``imagegen`` script."""
    app()
