"""A producer's own Celery worker, receiving ``reply_to`` deliveries (for the tests and the
demo): it imports nothing of this service (only Celery), as another team's backend would.

    python -m celery -A devtools.reply_consumer worker -Q backend.results --pool solo

Each ``backend.job_done(job=...)`` it runs appends one JSON line to ``$REPLY_LOG``:
``{"task_id": ..., "job": <JobView as JSON>}``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

QUEUE = "backend.results"
TASK = "backend.job_done"

app = Celery("backend", broker=os.environ.get("REPLY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_queues=[Queue(QUEUE, Exchange(""), routing_key=QUEUE)],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASK, bind=True)
def job_done(self: Any, job: dict[str, Any]) -> None:
    """Record the job's end as this backend would act on it."""
    with open(os.environ["REPLY_LOG"], "a") as out:
        out.write(json.dumps({"task_id": self.request.id, "job": job}) + "\n")
