"""The design a user writes first: one task that POSTs, then loops GET + sleep until done.

Only the benchmark runs it, side by side with the real pipeline, on the same broker and
worker settings. Each job holds a worker thread for its whole upstream duration.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
from celery import Celery
from redis import Redis

app = Celery("naive", broker=os.environ.get("IMAGEGEN_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="naive",
    broker_connection_retry_on_startup=True,
)
NAIVE_TASK = "naive.generate"


@app.task(name=NAIVE_TASK)
def generate(request: dict[str, Any], results_key: str, sleep_seconds: float = 1.5) -> None:
    """Submit, then poll with a blocking sleep; record when the end was seen."""
    base = os.environ["MODELLIX_BASE_URL"]
    headers = {"Authorization": f"Bearer {os.environ['MODELLIX_API_KEY']}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        task_id = http.post("/api/v1/minimax/minimax-image-01-live-i2i/async", json=request).json()[
            "data"
        ]["task_id"]
        polls = 0
        while True:
            time.sleep(sleep_seconds)
            polls += 1
            status = http.get(f"/api/v1/tasks/{task_id}").json()["data"]["status"]
            if status in ("success", "failed"):
                break
    redis = Redis.from_url(os.environ["IMAGEGEN_BROKER_URL"])
    redis.hset(results_key, task_id, f"{time.time()}:{polls}")
