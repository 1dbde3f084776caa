"""A self-contained local deployment: a fresh database, a Redis db, the simulator and
worker processes. The benchmarks and the integration tests both run on it."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from redis import Redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from api_schema import GENERATE_TASK, REQUESTS_QUEUE, JobView
from api_schema.producer import producer_app
from devtools.procs import Proc, Supervisor, free_port, imagegen_argv

PG_ADMIN_URL = os.environ.get("IMAGEGEN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("IMAGEGEN_TEST_REDIS", "redis://127.0.0.1:6379")


@dataclass
class LocalStack:
    """One run's services; every process it starts is stopped by ``close``."""

    root: Path
    database_url: str
    broker_url: str
    sim_url: str
    api_key: str
    sup: Supervisor
    worker_env: dict[str, str] = field(default_factory=dict)
    sim: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    apis: dict[str, Proc] = field(default_factory=dict)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    _engine: Engine | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls, root: Path, *, prefix: str, redis_db: int, api_key: str, **worker_env: str
    ) -> LocalStack:
        """Pick a fresh database name, a Redis db and a port; nothing is started yet."""
        name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        return cls(
            root=root,
            database_url=url,
            broker_url=f"{REDIS_BASE}/{redis_db}",
            sim_url=f"http://127.0.0.1:{free_port()}",
            api_key=api_key,
            sup=Supervisor(root / "logs", env=os.environ.copy()),
            worker_env=dict(worker_env),
        )

    # --- lifecycle ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Create and migrate the database, empty the Redis db, point this process at both."""
        from worker.dbadmin import upgrade

        apply_env(self.env())
        self.redis().ping()
        self.redis().flushdb()
        upgrade(self.database_url)

    def close(self) -> None:
        """Stop every process and drop the database."""
        self.sup.stop_all()
        self.http.close()
        from worker.db import reset_engine

        reset_engine()
        if self._engine is not None:
            self._engine.dispose()
        drop_database(self.database_url)

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment a worker (or the CLI) of this stack runs with."""
        base = {
            "IMAGEGEN_DATABASE_URL": self.database_url,
            "IMAGEGEN_BROKER_URL": self.broker_url,
            "MODELLIX_BASE_URL": self.sim_url,
            "MODELLIX_API_KEY": self.api_key,
            "IMAGEGEN_STATE_DIR": str(self.root / "state"),
            "PYTHONUNBUFFERED": "1",
        }
        return {**base, **self.worker_env, **overrides}

    def redis(self) -> Redis:
        """A client of this stack's Redis db."""
        return Redis.from_url(self.broker_url)

    def counter(self, key: str) -> int:
        """An integer kept in Redis (0 when missing)."""
        return int(cast(bytes | None, self.redis().get(key)) or 0)

    def hash_items(self, key: str) -> dict[str, str]:
        """A Redis hash, decoded."""
        raw = cast(dict[bytes, bytes], self.redis().hgetall(key))
        return {k.decode(): v.decode() for k, v in raw.items()}

    # --- processes ---------------------------------------------------------------------
    def start_sim(self, **sim_env: str) -> Proc:
        """Start the simulator (``SIM_*`` settings as keyword arguments)."""
        port = self.sim_url.rsplit(":", 1)[1]
        env = {"SIM_KEYS": f"{self.api_key}=team-a", **sim_env}
        self.sim = self.sup.start("simulator", imagegen_argv("simulator", "--port", port), env=env)
        self.sup.wait_http(self.sim, f"{self.sim_url}/_sim/health")
        return self.sim

    def start_worker(
        self,
        name: str = "w1",
        *,
        beat: bool = False,
        concurrency: int = 8,
        argv: list[str] | None = None,
        queues: str | None = None,
        **env: str,
    ) -> Proc:
        """Start one ``imagegen worker`` (or ``argv``) and wait until it answers a ping."""
        if argv is None:
            args = ["worker", "--hostname", f"{name}@%h", "--concurrency", str(concurrency)]
            args += ["--queues", queues] if queues else []
            argv = imagegen_argv(*args, *(["--beat"] if beat else []))
        proc = self.sup.start(name, argv, env=self.env(**env))
        self.sup.wait_until(
            proc, lambda: self.pings(f"{name}@"), timeout=60, what="answering pings"
        )
        self.workers.append(proc)
        return proc

    def start_api(self, tokens: Mapping[str, str], name: str = "api", **env: str) -> str:
        """Start ``imagegen api`` with ``{tenant: token}``; its base URL once it is ready."""
        port = free_port()
        pairs = ",".join(f"{tenant}:{token}" for tenant, token in tokens.items())
        proc = self.sup.start(
            name,
            imagegen_argv("api", "--port", str(port)),
            env=self.env(IMAGEGEN_API_TOKENS=pairs, **env),
        )
        url = f"http://127.0.0.1:{port}"
        self.sup.wait_http(proc, f"{url}/readyz")
        self.apis[url] = proc
        return url

    def stop_api(self, url: str) -> None:
        """Stop the API that ``start_api`` started at ``url``."""
        self.apis.pop(url).stop()

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
        response = self.http.post(f"{self.sim_url}/_sim/config", json=changes)
        if response.status_code != 200:
            raise RuntimeError(f"simulator refused {changes}: {response.text}")

    def sim_stats(self) -> dict[str, Any]:
        """The simulator's counters."""
        stats: dict[str, Any] = self.http.get(f"{self.sim_url}/_sim/stats").json()
        return stats

    def sim_tasks(self) -> list[dict[str, Any]]:
        """Every task the simulator holds."""
        tasks: list[dict[str, Any]] = self.http.get(f"{self.sim_url}/_sim/tasks").json()["tasks"]
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

    @property
    def engine(self) -> Engine:
        """This process's connections to the stack's database (checked before each use, so
        they survive a database restart that the fault tests cause)."""
        if self._engine is None:
            self._engine = create_engine(self.database_url, pool_pre_ping=True)
        return self._engine

    def views(self, job_ids: Iterable[str]) -> dict[str, JobView | None]:
        """The current JobView of each job."""
        from worker import jobs

        with Session(self.engine) as session:
            return {j: jobs.view(session, j) for j in job_ids}

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run SQL against the stack's database and return the rows."""
        with self.engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []

    def count_ended(self) -> int:
        """Jobs in a terminal status."""
        rows = self.sql(
            "SELECT count(*) FROM jobs WHERE status IN ('succeeded','failed','cancelled')"
        )
        return int(rows[0][0])

    def wait_for(self, done: Any, timeout: float, what: str, interval: float = 0.1) -> None:
        """Wait until ``done()`` is true; raise with the workers' log tails otherwise."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.log_tail(20)}" for w in self.workers)
                raise TimeoutError(f"{what} not reached after {timeout}s\n{logs}")
            time.sleep(interval)


def drop_database(database_url: str) -> None:
    """Drop a database, disconnecting whoever still holds it."""
    url = make_url(database_url)
    engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    engine.dispose()


def apply_env(env: Mapping[str, str]) -> None:
    """Make this process use ``env``'s settings (for jobs.view and friends)."""
    from worker.config import get_settings
    from worker.db import reset_engine

    os.environ.update(env)
    get_settings.cache_clear()
    reset_engine()
