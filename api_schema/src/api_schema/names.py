"""Task and queue names: the wire contract between producers and workers."""

from typing import Final

#: The task a producer sends; kwargs are ``{"request": <GenerationRequest as JSON>}``.
GENERATE_TASK: Final = "imagegen.generate"
SUBMIT_TASK: Final = "imagegen.submit"
POLL_TASK: Final = "imagegen.poll"
SWEEP_TASK: Final = "imagegen.sweep"
#: Moves on the jobs a dead worker held (internal: sent by the workers themselves).
RECLAIM_TASK: Final = "imagegen.reclaim"
#: Sends one outbox row (a Celery reply or a webhook) of an ended job.
DELIVER_TASK: Final = "imagegen.deliver"

#: New requests land here; a backlog of them never delays polls of running jobs.
REQUESTS_QUEUE: Final = "imagegen.requests"
#: Submits and polls of admitted jobs.
UPSTREAM_QUEUE: Final = "imagegen.upstream"
#: Periodic maintenance (the sweeper).
MAINTENANCE_QUEUE: Final = "imagegen.maintenance"

#: Deliveries of ended jobs to their producers (a slow receiver delays nothing else).
DELIVERIES_QUEUE: Final = "imagegen.deliveries"

ALL_QUEUES: Final = (REQUESTS_QUEUE, UPSTREAM_QUEUE, MAINTENANCE_QUEUE, DELIVERIES_QUEUE)
