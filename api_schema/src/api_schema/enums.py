"""Job statuses and error codes shared by producers, workers and the CLI."""

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is; moves one way, ending in succeeded, failed or cancelled."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the statuses a job never leaves."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class ErrorCode(StrEnum):
    """Why a job ended failed or cancelled."""

    INVALID_REQUEST = "invalid_request"
    UPSTREAM_REJECTED = "upstream_rejected"
    UPSTREAM_AUTH = "upstream_auth"
    UPSTREAM_PAYMENT = "upstream_payment"
    UPSTREAM_FAILED = "upstream_failed"
    UPSTREAM_NOT_FOUND = "upstream_not_found"
    UPSTREAM_INVALID_RESPONSE = "upstream_invalid_response"
    SUBMIT_OUTCOME_UNKNOWN = "submit_outcome_unknown"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    STORAGE_FAILED = "storage_failed"
