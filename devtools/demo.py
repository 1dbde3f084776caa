"""``python -m devtools demo``: the whole pipeline once, end to end, on this machine."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from api_schema import GENERATE_TASK, REQUESTS_QUEUE, ErrorCode, JobStatus, JobView

from .procs import StartupError, Supervisor, free_port, imagegen_argv
from .reply_consumer import QUEUE as REPLY_QUEUE
from .reply_consumer import TASK as REPLY_TASK


def portrait_png(size: int = 512) -> bytes:
    """A simple drawn portrait, so the demo needs no file of its own."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (70, 110, 160))
    draw = ImageDraw.Draw(image)
    s = size / 512
    draw.rectangle([0, int(380 * s), size, size], fill=(40, 50, 80))
    draw.ellipse([int(96 * s), int(330 * s), int(416 * s), int(620 * s)], fill=(200, 80, 60))
    draw.ellipse([int(156 * s), int(90 * s), int(356 * s), int(330 * s)], fill=(236, 196, 160))
    draw.pieslice(
        [int(146 * s), int(70 * s), int(366 * s), int(250 * s)], 180, 360, fill=(60, 40, 30)
    )
    for x in (206, 306):
        draw.ellipse(
            [int((x - 14) * s), int(190 * s), int((x + 14) * s), int(212 * s)], fill="white"
        )
        draw.ellipse(
            [int((x - 6) * s), int(194 * s), int((x + 6) * s), int(208 * s)], fill=(40, 30, 20)
        )
    draw.arc(
        [int(216 * s), int(240 * s), int(296 * s), int(290 * s)],
        20,
        160,
        fill=(150, 60, 60),
        width=4,
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def demo_requests(portrait: str) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, request, expected to succeed) for each demo job."""
    return [
        (
            "cyberpunk x3",
            {
                "prompt": "Cyberpunk style portrait, neon rim light",
                "subject_reference_images": [portrait],
                "n": 3,
                "aspect_ratio": "3:4",
                "seed": 7,
                "metadata": {"demo": True},
            },
            True,
        ),
        (
            "watercolor",
            {
                "prompt": "Soft watercolor portrait",
                "subject_reference_images": [portrait],
                "width": 768,
                "height": 768,
                "priority": 9,
            },
            True,
        ),
        (
            "oil painting (https ref)",
            {
                "prompt": "Oil painting, Rembrandt lighting",
                "subject_reference_images": ["https://example.com/reference.jpg"],
                "aspect_ratio": "16:9",
            },
            True,
        ),
        (
            "invalid: 11 images",
            {"prompt": "too many references", "subject_reference_images": [portrait] * 11},
            False,
        ),
    ]


def run_demo(*, timeout: float, output: Path, console: Console) -> int:
    """Start what is needed, run the demo jobs, report, stop everything; the exit code."""
    real = bool(os.environ.get("MODELLIX_API_KEY", "").strip())
    output = output.resolve()
    shutil.rmtree(output / "logs", ignore_errors=True)
    sim_port, flower_port, hook_port = free_port(), free_port(), free_port()
    from worker.delivery.webhooks import generate_secret

    hook_secret = generate_secret()
    env: dict[str, str] = {
        "IMAGEGEN_STORAGE_DIR": os.environ.get("IMAGEGEN_STORAGE_DIR", str(output / "images")),
        "IMAGEGEN_STATE_DIR": str(output / "state"),
        "IMAGEGEN_POLL_INITIAL_SECONDS": os.environ.get("IMAGEGEN_POLL_INITIAL_SECONDS", "2"),
        "IMAGEGEN_POLL_INTERVAL_SECONDS": os.environ.get("IMAGEGEN_POLL_INTERVAL_SECONDS", "0.5"),
        # the demo's own webhook receiver listens on this machine
        "IMAGEGEN_WEBHOOK_SECRETS": hook_secret,
        "IMAGEGEN_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
    }
    if not real:
        env |= {
            "MODELLIX_BASE_URL": f"http://127.0.0.1:{sim_port}",
            "MODELLIX_API_KEY": "sim-demo-key",
        }
    flower_auth = (
        os.environ.get("IMAGEGEN_FLOWER_BASIC_AUTH") or f"demo:{secrets.token_urlsafe(12)}"
    )
    env["IMAGEGEN_FLOWER_BASIC_AUTH"] = flower_auth
    os.environ.update(env)
    _reload_settings()
    settings = _settings()

    upstream = "the real Modellix API (MODELLIX_API_KEY is set)" if real else "the simulator"
    console.print(
        Panel.fit(
            f"upstream: {upstream}\n"
            f"database: {settings.database_url.rsplit('@', 1)[-1]}\n"
            f"broker:   {settings.broker_url.rsplit('@', 1)[-1]}\n"
            f"images:   {settings.storage_dir}",
            title="imagegen demo",
        )
    )
    from worker.dbadmin import upgrade

    console.print("[bold]1/4[/] migrating the database")
    upgrade(settings.database_url)

    with Supervisor(output / "logs") as sup:
        try:
            console.print("[bold]2/4[/] starting services")
            if not real:
                sim = sup.start(
                    "simulator",
                    imagegen_argv(
                        "simulator", "--port", str(sim_port), "--pending", "1", "--processing", "3"
                    ),
                )
                sup.wait_http(sim, f"http://127.0.0.1:{sim_port}/_sim/health")
                console.print(f"  simulator  http://127.0.0.1:{sim_port}")
            worker = sup.start(
                "worker",
                imagegen_argv("worker", "--beat", "--hostname", f"demo-{uuid.uuid4().hex[:6]}@%h"),
            )
            sup.wait_until(worker, _worker_answers, timeout=60, what="answering pings")
            console.print("  worker     ready (threads pool, with the sweeper schedule)")
            flower = sup.start("flower", imagegen_argv("flower", "--port", str(flower_port)))
            user, password = flower_auth.split(":", 1)
            sup.wait_http(
                flower, f"http://127.0.0.1:{flower_port}/api/workers", auth=(user, password)
            )
            console.print(f"  flower     http://127.0.0.1:{flower_port}")
            receiver = sup.start(
                "webhook-receiver",
                [
                    sys.executable, "-m", "devtools.receiver", "--port", str(hook_port),
                    "--secret", hook_secret, "--log", str(output / "webhooks.jsonl"),
                ],
            )  # fmt: skip
            sup.wait_http(receiver, f"http://127.0.0.1:{hook_port}/health")
            console.print(f"  webhooks   http://127.0.0.1:{hook_port}/hooks (verifies signatures)")
            sup.start(
                "reply-consumer",
                [
                    sys.executable, "-m", "celery", "-A", "devtools.reply_consumer", "worker",
                    "-Q", REPLY_QUEUE, "--pool", "solo", "--without-gossip", "--without-mingle",
                ],
                env={
                    **os.environ,
                    "REPLY_BROKER_URL": settings.broker_url,
                    "REPLY_LOG": str(output / "replies.jsonl"),
                },
            )  # fmt: skip
            console.print(f"  replies    a backend's own Celery worker on queue {REPLY_QUEUE}")
            api_url = f"http://127.0.0.1:{free_port()}"
            api_token = secrets.token_urlsafe(24)
            api = sup.start(
                "api",
                imagegen_argv("api", "--port", api_url.rsplit(":", 1)[1]),
                env={**os.environ, "IMAGEGEN_API_TOKENS": f"demo:{api_token}"},
            )
            sup.wait_http(api, f"{api_url}/readyz")
            console.print(f"  http api   {api_url}/v1/jobs (bearer token of tenant 'demo')")
        except StartupError as exc:
            console.print(f"[red]could not start:[/] {exc}")
            return 1

        console.print(
            "[bold]3/4[/] enqueuing jobs by task name and through the HTTP API "
            "(as other backends would)"
        )
        portrait = "data:image/png;base64," + base64.b64encode(portrait_png()).decode()
        labels: dict[str, str] = {}
        expected: dict[str, bool] = {}
        for path in ("webhooks.jsonl", "replies.jsonl"):
            (output / path).unlink(missing_ok=True)
        channels = {
            "webhook": {"url": f"http://127.0.0.1:{hook_port}/hooks"},
            "reply_to": {"task": REPLY_TASK, "queue": REPLY_QUEUE},
        }
        api_http = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {api_token}"}, timeout=30
        )
        via_api: list[str] = []
        for label, request, ok in demo_requests(portrait):
            if "https ref" in label:  # a backend on another host: POST /v1/jobs
                answer = api_http.post("/v1/jobs", json={**request, **channels})
                if answer.status_code != 202:
                    console.print(f"[red]the API refused the request:[/] {answer.text}")
                    return 1
                job_id = answer.json()["id"]
                via_api.append(job_id)
                label = f"{label}, via POST /v1/jobs"
            else:
                job_id = _send(settings.broker_url, {**request, **channels})
            labels[job_id], expected[job_id] = label, ok
            console.print(f"  {job_id}  {label}")

        console.print("[bold]4/4[/] waiting for the jobs")
        from worker.progress import summary_table, watch

        views = watch(list(labels), labels=list(labels.values()), timeout=timeout, console=console)
        console.print(summary_table(views, labels))
        failures = _check(views, expected)
        failures += _show_deliveries(console, output, labels)
        images = [i.stored_path for v in views.values() if v for i in v.images if i.stored_path]
        if images:
            console.print("[bold]images written:[/]")
            for path in images:
                console.print(f"  {path}")
        failures += _fetch_through_api(console, api_http, via_api, output)
        api_http.close()
        flower_url = f"http://127.0.0.1:{flower_port}"
        console.print(f"Flower was at {flower_url} (user {user!r}); logs in {output / 'logs'}")
        if failures:
            for line in failures:
                console.print(f"[red]unexpected:[/] {line}")
            console.print(f"[dim]worker log tail:[/]\n{worker.log_tail(40)}")
            return 1
        console.print("[green]demo finished: every job ended as expected[/]")
        return 0


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _show_deliveries(console: Console, output: Path, labels: dict[str, str]) -> list[str]:
    """Wait for every job's webhook and reply; print what the receivers got."""
    deadline = time.monotonic() + 30
    hooks: dict[str, dict[str, Any]] = {}
    replies: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and (len(hooks) < len(labels) or len(replies) < len(labels)):
        hooks = {
            h["body"]["data"]["id"]: h
            for h in _lines(output / "webhooks.jsonl")
            if h.get("verified") and h.get("status") == 200 and h.get("body")
        }
        replies = {r["job"]["id"]: r for r in _lines(output / "replies.jsonl")}
        time.sleep(0.2)
    table = Table("job", "webhook received (signature verified)", f"{REPLY_TASK} received")
    problems = []
    for job_id, label in labels.items():
        hook, reply = hooks.get(job_id), replies.get(job_id)
        table.add_row(
            label,
            f"{hook['body']['type']} (webhook-id {hook['webhook_id'][:8]}…)" if hook else "-",
            f"job.{reply['job']['status']} (task id {reply['task_id'][:8]}…)" if reply else "-",
        )
        if hook is None or reply is None:
            problems.append(f"{job_id}: webhook {'ok' if hook else 'missing'}, "
                            f"reply {'ok' if reply else 'missing'}")  # fmt: skip
    console.print(table)
    return problems


def _fetch_through_api(
    console: Console, http: httpx.Client, job_ids: list[str], output: Path
) -> list[str]:
    """Read a job and download its first image through the API, as another host would."""
    for job_id in job_ids:
        view = JobView.model_validate(http.get(f"/v1/jobs/{job_id}").json())
        stored = [i for i in view.images if i.href]
        if view.status is not JobStatus.SUCCEEDED or not stored:
            return [f"{job_id}: no stored image to fetch through the API ({view.status.value})"]
        image = stored[0]
        assert image.href is not None
        got = http.get(image.href)
        digest = hashlib.sha256(got.content).hexdigest()
        if got.status_code != 200 or digest != image.sha256:
            return [f"{image.href}: HTTP {got.status_code}, sha256 {digest} != {image.sha256}"]
        target = output / f"api-image.{image.format}"
        target.write_bytes(got.content)
        console.print(
            f"[bold]image fetched through the API:[/] {http.base_url.join(image.href)}\n"
            f"  {len(got.content)} bytes, {got.headers['content-type']}, sha256 {digest[:16]}… "
            f"matches the job's record; saved to {target}"
        )
    return []


def _send(broker_url: str, request: dict[str, Any]) -> str:
    # Sent raw (not through api_schema.producer.enqueue, which would refuse the invalid one)
    # so the demo shows the worker itself rejecting bad input.
    from api_schema.producer import producer_app

    job_id = str(uuid.uuid4())
    producer_app(broker_url).send_task(
        GENERATE_TASK, kwargs={"request": request}, task_id=job_id, queue=REQUESTS_QUEUE
    )
    return job_id


def _check(views: dict[str, JobView | None], expected: dict[str, bool]) -> list[str]:
    problems = []
    for job_id, ok in expected.items():
        job = views.get(job_id)
        if job is None:
            problems.append(f"{job_id} was never recorded")
        elif ok and job.status is not JobStatus.SUCCEEDED:
            problems.append(f"{job_id} ended {job.status.value}: {job.error_message}")
        elif ok and any(
            i.stored_path is None or not Path(i.stored_path).is_file() for i in job.images
        ):
            problems.append(f"{job_id} has images that were not written")
        elif not ok and job.error_code is not ErrorCode.INVALID_REQUEST:
            problems.append(f"{job_id} should have failed invalid_request, is {job.status.value}")
    return problems


def _worker_answers() -> bool:
    from worker.celery_app import app

    return bool(app.control.ping(timeout=0.5))


def _reload_settings() -> None:
    from worker.config import get_settings
    from worker.db import reset_engine

    get_settings.cache_clear()
    reset_engine()


def _settings() -> Any:
    from worker.config import get_settings

    return get_settings()
