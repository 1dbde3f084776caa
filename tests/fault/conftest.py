"""Fault-tier fixtures: several workers plus a real ``imagegen beat`` running the sweeper."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.procs import Proc, imagegen_argv
from tests.harness import Stack

#: Faster recovery for the tests: the sweeper runs every second and acts after 3 s; the
#: unacked messages of a killed worker come back after 30 s instead of 10 minutes.
FAULT_ENV = {
    "IMAGEGEN_VISIBILITY_TIMEOUT_SECONDS": "30",
    "IMAGEGEN_SWEEP_INTERVAL_SECONDS": "1",
    "IMAGEGEN_STALE_AFTER_SECONDS": "3",
    "IMAGEGEN_UPSTREAM_CONCURRENCY": "20",
}


#: The counts a ``sweep.acted`` log line carries (worker/jobs/service.py ``sweep``).
SWEEP_COUNTS = ("expired", "republished", "outcome_unknown", "admitted", "deliveries")


class FaultStack(Stack):
    """The session stack with fault-tier helpers."""

    beat: Proc | None = None
    restarts = 0

    def start_fault_worker(self, base: str) -> Proc:
        """Start a worker with a fresh node name (a restarted host is a new node)."""
        self.restarts += 1
        return self.start_worker(f"{base}-{self.restarts}", concurrency=8, **FAULT_ENV)

    def start_beat(self) -> Proc:
        """Run the sweeper schedule, as ``imagegen beat`` does in production."""
        self.beat = self.sup.start("beat", imagegen_argv("beat"), env=self.env(**FAULT_ENV))
        return self.beat

    def sweeper_totals(self) -> dict[str, int]:
        """What the sweeper did, summed from every worker's log (killed ones too): the
        counts of each ``sweep.acted`` line."""
        totals: Counter[str] = Counter()
        for proc in self.sup.procs:
            if proc.log_path.exists():
                for line in proc.log_path.read_text(errors="replace").splitlines():
                    if '"sweep.acted"' not in line:
                        continue
                    try:
                        entry = json.loads(line)
                    except ValueError:  # the last line of a killed worker, cut short
                        continue
                    totals.update({k: int(entry.get(k, 0)) for k in SWEEP_COUNTS})
        return dict(totals)

    def live_jobs(self) -> int:
        """Jobs not yet in a terminal status."""
        ended = "('succeeded', 'failed', 'cancelled')"
        return int(self.sql(f"SELECT count(*) FROM jobs WHERE status NOT IN {ended}")[0][0])  # noqa: S608

    def kill_worker(self, proc: Proc) -> None:
        """SIGKILL a worker (and anything it started); no chance to ack or clean up."""
        proc.kill()
        self.workers.remove(proc)


@pytest.fixture(scope="module")
def faults(stack: Stack) -> Iterator[FaultStack]:
    """Three workers and beat on the session stack."""
    stack.__class__ = FaultStack
    fs: FaultStack = stack  # type: ignore[assignment]
    fs.clean()
    fs.start_beat()
    for base in ("a", "b", "c"):
        fs.start_fault_worker(base)
    try:
        yield fs
    finally:
        fs.stop_workers()
        if fs.beat is not None:
            fs.beat.stop()
        stack.__class__ = Stack


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Figures a fault test saw; printed, and appended to $IMAGEGEN_FAULT_REPORT if set."""
    figures: dict[str, Any] = {}
    yield figures
    line = json.dumps({"test": request.node.name, **figures})
    print(f"\nFAULT REPORT {line}")
    target = os.environ.get("IMAGEGEN_FAULT_REPORT")
    if target:
        with Path(target).open("a") as out:
            out.write(line + "\n")


def restart_postgres() -> None:
    """Restart the local PostgreSQL cluster (fast shutdown: every connection is cut)."""
    version = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])[
        -1
    ]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        timeout=120,
    )
