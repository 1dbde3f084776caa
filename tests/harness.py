"""The integration harness: a fresh database, a Redis db, the simulator and real worker
processes, each started as its own OS process exactly as an operator would run them."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api_schema import GENERATE_TASK, REQUESTS_QUEUE, JobView
from api_schema.producer import producer_app
from simulator.config import Faults
from worker.procs import Proc, Supervisor, free_port, imagegen_argv

API_KEY = "mdlx-testkey-SECRET-0123456789abcdef"
PG_ADMIN_URL = os.environ.get("IMAGEGEN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("IMAGEGEN_TEST_REDIS", "redis://127.0.0.1:6379")

#: Worker settings that make the tests fast; each test may override some.
FAST_WORKER_ENV = {
    "IMAGEGEN_POLL_INITIAL_SECONDS": "0.3",
    "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.2",
    "IMAGEGEN_POLL_MAX_INTERVAL_SECONDS": "0.5",
    "IMAGEGEN_POLL_JITTER": "0.1",
    "IMAGEGEN_RETRY_MAX_INTERVAL_SECONDS": "1",
    "IMAGEGEN_READ_TIMEOUT": "5",
    "IMAGEGEN_CONNECT_TIMEOUT": "2",
    "IMAGEGEN_UPSTREAM_CONCURRENCY": "3",
    "IMAGEGEN_UPSTREAM_RPM": "0",
    "IMAGEGEN_DEFAULT_DEADLINE_SECONDS": "120",
    "IMAGEGEN_STALE_AFTER_SECONDS": "3",
    "IMAGEGEN_SWEEP_INTERVAL_SECONDS": "1",
}
#: The simulator's settings at the start of every test.
SIM_DEFAULTS: dict[str, Any] = {
    "keys": {API_KEY: "team-a"},
    "concurrency_limit": 3,
    "rpm_limit": 0,
    "pending_seconds": 0.2,
    "processing_seconds": 0.4,
    "result_ttl_seconds": 3600,
    "balance": None,
    # every knob off, derived from the simulator itself so a new knob cannot leak between tests
    "faults": dataclasses.asdict(Faults()),
}


def tiny_png() -> str:
    """A real PNG as a data URL."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request(prompt: str | None = None, **fields: Any) -> dict[str, Any]:
    """A valid request with a unique prompt (so the simulator's task list tells jobs apart)."""
    body: dict[str, Any] = {
        "prompt": prompt or f"test portrait {uuid.uuid4().hex[:12]}",
        "subject_reference_images": ["https://example.com/reference.jpg"],
    }
    body.update(fields)
    return body


@dataclass
class Stack:
    """One test session's services."""

    root: Path
    database_url: str
    broker_url: str
    sim_url: str
    storage_dir: Path
    sup: Supervisor
    sim: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    # --- environment -------------------------------------------------------------------
    def env(self, **overrides: str) -> dict[str, str]:
        """The environment a worker (or the CLI) of this stack runs with."""
        base = {
            "IMAGEGEN_DATABASE_URL": self.database_url,
            "IMAGEGEN_BROKER_URL": self.broker_url,
            "MODELLIX_BASE_URL": self.sim_url,
            "MODELLIX_API_KEY": API_KEY,
            "IMAGEGEN_STORAGE_DIR": str(self.storage_dir),
            "IMAGEGEN_STATE_DIR": str(self.root / "state"),
            "PYTHONUNBUFFERED": "1",
        }
        return {**base, **FAST_WORKER_ENV, **overrides}

    # --- processes ---------------------------------------------------------------------
    def start_sim(self) -> None:
        """Start the simulator process."""
        port = int(self.sim_url.rsplit(":", 1)[1])
        self.sim = self.sup.start("simulator", imagegen_argv("simulator", "--port", str(port)))
        self.sup.wait_http(self.sim, f"{self.sim_url}/_sim/health")

    def start_worker(
        self, name: str = "w1", *, beat: bool = False, concurrency: int = 8, **env: str
    ) -> Proc:
        """Start one ``celery worker`` process and wait until it answers a ping."""
        argv = ["worker", "--hostname", f"{name}@%h", "--concurrency", str(concurrency)]
        if beat:
            argv.append("--beat")
        proc = self.sup.start(name, imagegen_argv(*argv), env=self.env(**env))
        self.sup.wait_until(
            proc, lambda: self.pings(f"{name}@"), timeout=60, what="answering pings"
        )
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        """Stop every worker (warm shutdown)."""
        for proc in self.workers:
            proc.stop()
        self.workers.clear()

    def pings(self, prefix: str) -> bool:
        """True when a worker whose node name starts with ``prefix`` answers."""
        replies = producer_app(self.broker_url).control.ping(timeout=0.5)
        return any(name.startswith(prefix) for reply in replies for name in reply)

    # --- the simulator -----------------------------------------------------------------
    def sim_configure(self, **changes: Any) -> None:
        """Change the running simulator's settings."""
        response = self._http.post(f"{self.sim_url}/_sim/config", json=changes)
        assert response.status_code == 200, response.text

    def sim_reset(self) -> None:
        """Forget the simulator's tasks and stats; back to SIM_DEFAULTS."""
        assert self._http.post(f"{self.sim_url}/_sim/reset").status_code == 200
        self.sim_configure(**SIM_DEFAULTS)

    def sim_stats(self) -> dict[str, Any]:
        """The simulator's counters."""
        stats: dict[str, Any] = self._http.get(f"{self.sim_url}/_sim/stats").json()
        return stats

    def sim_tasks(self) -> list[dict[str, Any]]:
        """Every task the simulator created."""
        tasks: list[dict[str, Any]] = self._http.get(f"{self.sim_url}/_sim/tasks").json()["tasks"]
        return tasks

    # --- jobs --------------------------------------------------------------------------
    def send(self, body: object, job_id: str | None = None, **kwargs: Any) -> str:
        """Enqueue an ``imagegen.generate`` message by name, unvalidated, as any producer could."""
        job_id = job_id or str(uuid.uuid4())
        producer_app(self.broker_url).send_task(
            GENERATE_TASK,
            kwargs={"request": body, **kwargs},
            task_id=job_id,
            queue=REQUESTS_QUEUE,
        )
        return job_id

    def views(self, job_ids: Iterable[str]) -> dict[str, JobView | None]:
        """The current JobView of each job."""
        from worker import jobs
        from worker.db import session_scope

        with session_scope() as session:
            return {j: jobs.view(session, j) for j in job_ids}

    def wait_ended(self, job_ids: Iterable[str], timeout: float = 60.0) -> dict[str, JobView]:
        """Wait until every job is in a terminal status; fail with their states otherwise."""
        ids = list(job_ids)
        deadline = time.monotonic() + timeout
        while True:
            views = self.views(ids)
            if all(v is not None and v.status.is_terminal for v in views.values()):
                return {k: v for k, v in views.items() if v is not None}
            if time.monotonic() > deadline:
                pending = {k: (v.status.value if v else None) for k, v in views.items()}
                pending = {
                    k: s
                    for k, s in pending.items()
                    if s not in ("succeeded", "failed", "cancelled")
                }
                logs = "\n".join(f"--- {w.name}\n{w.log_tail(20)}" for w in self.workers)
                raise AssertionError(f"jobs not ended after {timeout}s: {pending}\n{logs}")
            time.sleep(0.1)

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 30.0) -> JobView:
        """Wait until one job reaches one of ``statuses``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.views([job_id])[job_id]
            if view is not None and view.status.value in statuses:
                return view
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not in {statuses} after {timeout}s: {view}")

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run SQL against the stack's database and return the rows."""
        from worker.db import session_scope

        with session_scope() as session:
            result = session.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []

    def clean(self) -> None:
        """Forget every job and every queued message: a clean slate for the next test."""
        self.sql("TRUNCATE jobs, job_events, job_images, job_aliases")
        redis_client().flushdb()
        self.sim_reset()


def redis_client() -> Redis:
    """A client of the test Redis db."""
    return Redis.from_url(os.environ["IMAGEGEN_BROKER_URL"])


def create_stack(root: Path) -> Stack:
    """Create a fresh database and pick a Redis db; nothing is started yet."""
    name = f"imagegen_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    database_url = str(
        make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    )
    redis_db = int(os.environ.get("IMAGEGEN_TEST_REDIS_DB", "9"))
    broker_url = f"{REDIS_BASE}/{redis_db}"
    stack = Stack(
        root=root,
        database_url=database_url,
        broker_url=broker_url,
        sim_url=f"http://127.0.0.1:{free_port()}",
        storage_dir=root / "images",
        sup=Supervisor(root / "logs", env=os.environ.copy()),
    )
    return stack


def drop_database(database_url: str) -> None:
    """Drop a test database, disconnecting whoever still holds it."""
    url = make_url(database_url)
    engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    engine.dispose()


def apply_env(env: Mapping[str, str]) -> None:
    """Make this test process use ``env``'s settings (for jobs.view and friends)."""
    from worker.config import get_settings
    from worker.db import reset_engine

    os.environ.update(env)
    get_settings.cache_clear()
    reset_engine()
