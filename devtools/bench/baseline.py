"""The baseline of ``python -m devtools bench throughput``: a no-op task on the workers' own
Celery settings (broker, transport, acks, prefetch, pool), in a worker of its own.

It lives here, not in ``worker/``: production workers register no benchmark task (a task
that INCRs a key a message names is a tool for whoever can publish).

    python -m devtools.bench.baseline --hostname noop0@%h --concurrency 16
"""

from __future__ import annotations

import argparse
from typing import Any

from kombu.entity import Exchange, Queue
from redis import Redis

from worker.celery_app import make_app
from worker.config import get_settings

NOOP_TASK = "imagegen.bench.noop"
NOOP_QUEUE = "imagegen.bench"

NOOP_QUEUE_ENTITY = Queue(NOOP_QUEUE, Exchange(""), NOOP_QUEUE)

app = make_app()
app.conf.task_queues = [*app.conf.task_queues, NOOP_QUEUE_ENTITY]
_redis: Redis | None = None


@app.task(name=NOOP_TASK)
def noop(counter: str) -> None:
    """Does nothing but count itself."""
    global _redis
    if _redis is None:
        _redis = Redis.from_url(get_settings().broker_url)
    _redis.incr(counter)


def main(argv: list[str] | None = None) -> None:
    """Run a worker of the no-op task, with the pool and concurrency the bench uses."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    options: list[Any] = [
        "worker",
        "--loglevel=info",
        "--pool=threads",
        f"--concurrency={args.concurrency}",
        f"--queues={NOOP_QUEUE}",
        f"--hostname={args.hostname}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(options)


if __name__ == "__main__":
    main()
