"""Machine-readable validation errors: what ``POST /v1/jobs`` answers with 422 and what a
job refused as ``invalid_request`` keeps in ``JobView.errors``. One shape for both."""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError

#: Errors kept per request: enough to fix it, bounded so a hostile body cannot inflate a row.
MAX_FIELD_ERRORS = 20
_MESSAGE_CHARS = 500


class FieldError(BaseModel):
    """One thing wrong with a request."""

    path: str = Field(
        description="Where: dotted field path (`subject_reference_images.0`), `request` for "
        "the whole request, `message...` for the broker envelope, `body` for the HTTP body."
    )
    code: str = Field(
        description="What, for programs: pydantic's error type (`missing`, `string_too_long`, "
        "`extra_forbidden`, `value_error`, ...) or one of ours (`idempotency_conflict`, "
        "`invalid_message`, `invalid_target`)."
    )
    message: str = Field(description="What, for people.")


def field_errors(exc: ValidationError, limit: int = MAX_FIELD_ERRORS) -> list[FieldError]:
    """The errors of a failed validation, without the rejected input (it may be a secret or
    megabytes of base64)."""
    found: list[FieldError] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:limit]:
        path = ".".join(str(p) for p in error["loc"]) or "request"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        found.append(FieldError(path=path, code=error["type"], message=message[:_MESSAGE_CHARS]))
    return found


def problem_errors(problem: str, code: str = "invalid_message") -> list[FieldError]:
    """One error from a ``"<path>: <message>"`` problem line (the worker's own checks)."""
    path, sep, message = problem.partition(": ")
    if not sep or " " in path or not path:
        path, message = "request", problem
    return [FieldError(path=path, code=code, message=message[:_MESSAGE_CHARS])]
