"""imagegen-api-schema: what producers of imagegen-worker jobs import.

Depends on pydantic only; ``api_schema.producer`` needs the ``producer`` extra (celery).
"""

from .enums import TERMINAL_STATUSES, ErrorCode, JobStatus
from .models import (
    ASPECT_RATIO_SIZES,
    MAX_IMAGE_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_REQUEST_BYTES,
    MAX_URL_CHARS,
    AspectRatio,
    GenerateKwargs,
    GenerationRequest,
    ImageView,
    JobView,
    describe_validation_error,
    request_fingerprint,
    storable_problem,
    unstorable_at,
)
from .names import (
    ALL_QUEUES,
    GENERATE_TASK,
    MAINTENANCE_QUEUE,
    POLL_TASK,
    REQUESTS_QUEUE,
    SUBMIT_TASK,
    SWEEP_TASK,
    UPSTREAM_QUEUE,
)

__all__ = [
    "ALL_QUEUES",
    "ASPECT_RATIO_SIZES",
    "GENERATE_TASK",
    "MAINTENANCE_QUEUE",
    "MAX_IMAGE_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_REQUEST_BYTES",
    "MAX_URL_CHARS",
    "POLL_TASK",
    "REQUESTS_QUEUE",
    "SUBMIT_TASK",
    "SWEEP_TASK",
    "TERMINAL_STATUSES",
    "UPSTREAM_QUEUE",
    "AspectRatio",
    "ErrorCode",
    "GenerateKwargs",
    "GenerationRequest",
    "ImageView",
    "JobStatus",
    "JobView",
    "describe_validation_error",
    "request_fingerprint",
    "storable_problem",
    "unstorable_at",
]
