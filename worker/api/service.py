"""What the HTTP API does, as plain functions over the jobs repository and the broker; the
routes in ``app`` only translate HTTP to these calls and their results back. The two hot
paths (reading a job, recording a new one) run on async connections (``backends``)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from pydantic import AwareDatetime, ValidationError
from redis import Redis

from api_schema import (
    FieldError,
    GenerationRequest,
    JobStatus,
    JobView,
    field_errors,
    problem_errors,
    request_fingerprint,
)
from api_schema.message import generate_message
from worker import jobs
from worker.config import Settings
from worker.db import autocommit
from worker.delivery import targets
from worker.storage import ResultStore

log = logging.getLogger("imagegen.api")

__all__ = [
    "ApiError",
    "AwareDatetime",
    "Prepared",
    "Submitted",
    "cancel",
    "check_id",
    "listing",
    "prepare",
    "settle",
    "validate",
]

#: Namespace of the ids of jobs created with an Idempotency-Key (uuid5 of tenant, key and
#: the request's fingerprint): a retried POST finds its job, another tenant's key never does.
API_NAMESPACE: Final = uuid.UUID("8f0d3a52-4a0e-4d7e-9a55-1c1b6c7f2e90")
MAX_KEY_CHARS: Final = 200


class ApiError(Exception):
    """An answer other than success: HTTP status, a stable code, a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.headers = headers or {}


def invalid(errors: list[FieldError]) -> ApiError:
    return ApiError(422, "invalid_request", "the request is not valid", errors)


@dataclass(frozen=True)
class Submitted:
    """A request recorded as a job (``replayed``: an earlier POST with the same key)."""

    job_id: str
    status: JobStatus
    replayed: bool


def parse_json(body: bytes) -> Any:
    """The body as JSON; 400 when it is not UTF-8 JSON (NaN and Infinity are not JSON)."""

    def no_constants(name: str) -> None:
        raise ValueError(name)

    try:
        return json.loads(body.decode("utf-8"), parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"the body is not JSON (line {exc.lineno} column {exc.colno})"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        where = ""
        raise ApiError(400, "malformed_json", f"the body is not UTF-8 JSON{where}") from None


@dataclass(frozen=True)
class Prepared:
    """A valid request, its job id and the parameters of its insert."""

    request: GenerationRequest
    job_id: str
    params: dict[str, Any]
    entry: str  # the Redis list entry that sends it (api_schema.message)


def validate(body: bytes, *, idempotency_key: str | None) -> GenerationRequest:
    """The request in ``body``; 400 for malformed JSON, 422 naming each problem. No I/O."""
    data = _integral_numbers(parse_json(body))
    if idempotency_key is not None:
        data = _with_key(data, idempotency_key)
    try:
        return GenerationRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid(field_errors(exc)) from None


def prepare(request: GenerationRequest, *, tenant: str, settings: Settings) -> Prepared:
    """Check where the job's end goes (a webhook's host is resolved: blocking) and derive
    its id: uuid5 of tenant, key and fingerprint with an Idempotency-Key, else random."""
    deliver_to, problem = targets.for_request(request, settings.delivery_policy)
    if problem is not None:
        raise invalid(problem_errors(problem, "invalid_target"))
    fingerprint = request_fingerprint(request)
    key = request.idempotency_key
    job_id = (
        str(uuid.uuid5(API_NAMESPACE, f"{tenant}\n{key}\n{fingerprint}"))
        if key is not None
        else str(uuid.uuid4())
    )
    params = jobs.insert_job_params(
        job_id,
        request,
        deliver_to=deliver_to,
        tenant=tenant,
        default_deadline_seconds=settings.default_deadline_seconds,
        fingerprint=fingerprint,
    )
    return Prepared(request, job_id, params, json.dumps(generate_message(request, job_id)))


def settle(prepared: Prepared, *, tenant: str, settings: Settings) -> Submitted:
    """After an insert that did not happen (its id or key is taken): the repository decides
    whether it is the same request again (the existing job) or a conflict (409)."""
    request, params = prepared.request, prepared.params
    with autocommit() as connection:
        created = jobs.create(
            connection,
            prepared.job_id,
            request,
            deliver_to=params["p_deliver"] or [],
            tenant=tenant,
            default_deadline_seconds=settings.default_deadline_seconds,
            fingerprint=params["p_hash"],
        )
        if isinstance(created, jobs.Conflict):
            raise _conflict(created.job_id)
        # The id is derived from public inputs: a job of another tenant under it (made by
        # someone who guessed the key and body) is not this tenant's to be handed.
        if jobs.view(connection, created.job_id, tenant=tenant, with_deliveries=False) is None:
            raise ApiError(409, "id_taken", "this request's job id is taken; use another key")
    # created=True: the job was there a moment ago and has just gone (a race with a
    # deletion); it is recorded now, and its message goes out like a new one's.
    return Submitted(created.job_id, created.status, replayed=not created.created)


def _integral_numbers(data: Any) -> Any:
    """``data`` with top-level numbers that have no fractional part (``6.0``) as integers:
    JSON Schema, so the API's document, reads them so (``"type": "integer"`` takes ``6.0``)
    while the model takes only ints. Every integer field of a request is a top-level one;
    ``metadata`` is left as sent, since it comes back with the job."""
    if not isinstance(data, dict):
        return data
    return {
        key: int(value) if isinstance(value, float) and value.is_integer() else value
        for key, value in data.items()
    }


def _with_key(data: Any, header: str) -> Any:
    if not isinstance(data, dict):
        return data  # the model's own error names it
    if not header or len(header) > MAX_KEY_CHARS or not header.isprintable():
        raise invalid(
            [
                FieldError(
                    path="header.Idempotency-Key",
                    code="invalid_key",
                    message=f"must be 1 to {MAX_KEY_CHARS} printable characters",
                )
            ]
        )
    given = data.get("idempotency_key")
    if given is not None and given != header:
        raise invalid(
            [
                FieldError(
                    path="idempotency_key",
                    code="idempotency_key_mismatch",
                    message="differs from the Idempotency-Key header (give one, or the same)",
                )
            ]
        )
    return {**data, "idempotency_key": header}


def _conflict(job_id: str) -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        "this Idempotency-Key was used for a different request; use a new key",
        headers={"Location": jobs.job_href(job_id)},
    )


def not_found(job_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no job {job_id[:80]!r}")


def _storable(text: str) -> bool:
    """True when PostgreSQL text can hold ``text``: no NUL, no unpaired surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_id(job_id: str) -> None:
    """404 for an id no job can have (PostgreSQL refuses it in a query, as a 500 otherwise)."""
    if not _storable(job_id):
        raise not_found(job_id)


@dataclass(frozen=True)
class Listing:
    items: list[JobView]
    next_cursor: str | None = field(default=None)


def listing(
    *,
    tenant: str,
    status: JobStatus | None,
    created_after: datetime | None,
    limit: int,
    cursor: str | None,
) -> Listing:
    """A page of the tenant's jobs, newest first."""
    after = _decode_cursor(cursor) if cursor else None
    with autocommit() as connection:
        page = jobs.listing(
            connection,
            tenant=tenant,
            status=status,
            created_after=created_after,
            after=after,
            limit=limit,
        )
    return Listing(page.items, _encode_cursor(page.cursor) if page.cursor else None)


def _encode_cursor(at: tuple[datetime, str]) -> str:
    raw = json.dumps([at[0].isoformat(), at[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, job_id = json.loads(raw)
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None or not isinstance(job_id, str) or not _storable(job_id):
            raise ValueError("cursor")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise invalid(
            [FieldError(path="query.cursor", code="invalid_cursor", message="not a cursor")]
        ) from None
    return at, job_id


def readiness(settings: Settings, store: ResultStore | None) -> dict[str, str]:
    """``ok`` or what failed, for the database, the broker and the result store."""
    checks: dict[str, str] = {}
    try:
        with autocommit() as connection:
            jobs.ping(connection)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = type(exc).__name__
    try:
        client = Redis.from_url(settings.api_broker, socket_timeout=2, socket_connect_timeout=2)
        with client:
            client.ping()
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["broker"] = type(exc).__name__
    if store is not None:
        try:
            store.ping()
            checks["storage"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["storage"] = type(exc).__name__
    return checks


def cancel(job_id: str, *, tenant: str) -> JobView:
    """Cancel the tenant's job; 409 when it has ended or its POST is under way."""
    check_id(job_id)
    with autocommit() as connection:
        done, status = jobs.cancel(connection, job_id, tenant=tenant)
        if status is None:
            raise not_found(job_id)
        view = jobs.view(connection, job_id, tenant=tenant)
    if view is None:
        raise not_found(job_id)
    if not done:
        raise ApiError(
            409,
            "not_cancellable",
            f"the job is {status.value}: "
            + (
                "it has ended"
                if status.is_terminal
                else "its submit is under way; try again in a moment"
            ),
        )
    return view


def stored_copy(job_id: str, index: int, *, tenant: str) -> tuple[JobView, jobs.StoredCopy]:
    """The job and the copy of its image ``index``; 404 when either is not there."""
    check_id(job_id)
    with autocommit() as connection:
        view = jobs.view(connection, job_id, tenant=tenant, with_deliveries=False)
        copy = jobs.stored_copy(connection, view.id, index) if view is not None else None
    if view is None:
        raise not_found(job_id)
    if copy is None:
        raise ApiError(404, "not_stored", f"job {view.id} has no stored image {index}")
    return view, copy
