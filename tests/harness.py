"""The integration harness: the local stack of ``devtools.bench.stack`` plus test conveniences."""

from __future__ import annotations

import base64
import dataclasses
import io
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from redis import Redis

from api_schema import JobView
from devtools.bench.stack import PG_ADMIN_URL, LocalStack, drop_database
from simulator.config import Faults

__all__ = ["API_KEY", "PG_ADMIN_URL", "Stack", "create_stack", "drop_database", "request"]

API_KEY = "mdlx-testkey-SECRET-0123456789abcdef"

#: Worker settings that make the tests fast; each test may override some.
FAST_WORKER_ENV = {
    "IMAGEGEN_POLL_INITIAL_SECONDS": "0.3",
    "IMAGEGEN_POLL_INTERVAL_SECONDS": "0.2",
    "IMAGEGEN_POLL_MAX_INTERVAL_SECONDS": "0.5",
    "IMAGEGEN_POLL_JITTER": "0.1",
    # The tests' tasks last from milliseconds to seconds, test after test: polls placed by
    # durations learned in the previous test would be timed for another workload. The
    # learned placement has its own tests (tests/integration/test_budget.py, unit tests).
    "IMAGEGEN_POLL_ADAPTIVE": "false",
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
    "timing": "fixed",  # (a test may draw lognormal durations; the next one must not)
    "result_ttl_seconds": 3600,
    "balance": None,
    # every knob off, derived from the simulator itself so a new knob cannot leak between tests
    "faults": dataclasses.asdict(Faults()),
}


def tiny_png() -> str:
    """A real PNG as a data URL."""
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


class Stack(LocalStack):
    """The test session's stack."""

    @property
    def storage_dir(self) -> Path:
        """Where workers copy images."""
        return self.root / "images"

    def sim_reset(self) -> None:
        """Forget the simulator's tasks and stats; back to SIM_DEFAULTS."""
        assert self.http.post(f"{self.sim_url}/_sim/reset").status_code == 200
        self.sim_configure(**SIM_DEFAULTS)

    def wait_ended(self, job_ids: Iterable[str], timeout: float = 60.0) -> dict[str, JobView]:
        """Wait until every job is in a terminal status; fail with their states otherwise."""
        ids = list(job_ids)
        views: dict[str, JobView | None] = {}

        def ended() -> bool:
            views.update(self.views(ids))
            return all(v is not None and v.status.is_terminal for v in views.values())

        try:
            self.wait_for(ended, timeout, "all jobs ended")
        except TimeoutError as exc:
            states = {k: (v.status.value if v else None) for k, v in views.items()}
            raise AssertionError(f"{states}\n{exc}") from None
        return {k: v for k, v in views.items() if v is not None}

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 30.0) -> JobView:
        """Wait until one job reaches one of ``statuses``."""
        deadline = time.monotonic() + timeout
        view = None
        while time.monotonic() < deadline:
            view = self.views([job_id])[job_id]
            if view is not None and view.status.value in statuses:
                return view
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not in {statuses} after {timeout}s: {view}")

    def send_signed(
        self,
        task: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        **options: Any,
    ) -> str:
        """Publish an internal message as a worker would: signed with the workers' key."""
        from api_schema.producer import producer_app
        from worker.broker import MAC_HEADER, SIGNED_TASKS, message_mac

        # Read with this harness's own (pre-pinged) engine, which survives the database
        # restarts of the fault tests.
        key = str(self.sql("SELECT value FROM imagegen_secrets WHERE name = 'message_key'")[0][0])
        task_id = task_id or str(uuid.uuid4())
        queue = SIGNED_TASKS[task]
        mac = message_mac(key.encode(), task, task_id, queue, args, kwargs)
        producer_app(self.broker_url).send_task(
            task,
            args=args,
            kwargs=kwargs,
            task_id=task_id,
            queue=queue,
            headers={MAC_HEADER: mac},
            **options,
        )
        return task_id

    def clean(self) -> None:
        """Forget every job and every queued message: a clean slate for the next test."""
        self.sql(
            "TRUNCATE jobs, job_events, job_images, job_aliases, job_deliveries, dropped_messages"
        )
        self.redis().flushdb()
        self.sim_reset()


def create_stack(root: Path, redis_db: int) -> Stack:
    """The test session's stack (nothing started yet)."""
    base = LocalStack.create(root, prefix="imagegen_test", redis_db=redis_db, api_key=API_KEY)
    stack = Stack(**{f.name: getattr(base, f.name) for f in dataclasses.fields(LocalStack)})
    stack.worker_env = {**FAST_WORKER_ENV, "IMAGEGEN_STORAGE_DIR": str(stack.storage_dir)}
    return stack


def redis_client(stack: Stack) -> Redis:
    """A client of the test Redis db."""
    return stack.redis()
