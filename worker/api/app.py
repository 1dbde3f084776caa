"""The HTTP API's routes (FastAPI): HTTP in, a ``service`` call, HTTP out.

FastAPI because the request and response models already are pydantic models: the OpenAPI
document comes from the same classes the workers validate with, so it cannot drift from
them unnoticed (``api_schema/openapi.json`` is checked in and a test compares).
"""

from __future__ import annotations

import base64
import gc
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import InterfaceError as PsycopgInterfaceError
from psycopg import OperationalError as PsycopgError
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, BeforeValidator, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolExhausted
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route

from api_schema import FieldError, JobStatus, JobView
from api_schema.jsonschema import build as producer_schemas
from worker import jobs
from worker.config import Settings, get_settings
from worker.logs import get_logger
from worker.storage import StorageError, open_store

from . import service
from .auth import Tokens
from .backends import Backends
from .service import ApiError

log = get_logger("imagegen.api")
JSON: Final = "application/json"
#: Bodies larger than this are validated and encoded in a thread, not on the event loop.
INLINE_BODY_BYTES: Final = 64 * 1024
IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/webp", "image/gif")
#: An Idempotency-Key: what GenerationRequest.idempotency_key takes (visible ASCII).
KEY_PATTERN: Final = r"^[\x21-\x7e]+$"
REQUEST_EXAMPLES: Final = {
    "minimal": {
        "summary": "One reference image by URL",
        "value": {
            "prompt": "a watercolour portrait, soft light",
            "subject_reference_images": ["https://example.com/reference.jpg"],
        },
    },
    "sized": {
        "summary": "A size, two images and metadata",
        "value": {
            "prompt": "the same person on a beach at sunset",
            "subject_reference_images": ["https://example.com/reference.jpg"],
            "width": 1024,
            "height": 768,
            "n": 2,
            "metadata": {"order": 1234},
        },
    },
}


class ErrorBody(BaseModel):
    """Every answer that is not a success."""

    error: str = Field(description="A stable code: invalid_request, not_found, ...")
    message: str
    errors: list[FieldError] = Field(
        default_factory=list, description="For 422: each problem, as JobView.errors has them."
    )


class SubmitAnswer(BaseModel):
    """A request recorded as a job."""

    id: str
    status: JobStatus
    replayed: bool = Field(description="True when an earlier POST with this key made the job.")


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobView]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last."
    )


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


_bearer = HTTPBearer(auto_error=False, description="A tenant's token (IMAGEGEN_API_TOKENS)")


async def tenant_of(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the request's bearer token; 401 without a valid one."""
    tokens: Tokens = request.app.state.tokens
    tenant = tokens.tenant(f"Bearer {credentials.credentials}" if credentials else None)
    if tenant is None:
        raise ApiError(
            401,
            "unauthorized",
            "a valid bearer token is needed",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


TenantDep = Annotated[str, Depends(tenant_of)]
JobId = Annotated[str, Path(min_length=1, max_length=64, description="The job's id")]

#: RFC 3339 (the document's ``date-time``), offset required.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: object) -> object:
    """Only RFC 3339 text: pydantic alone would also take ``0.5`` as a Unix time."""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("expected an RFC 3339 date-time with an offset, e.g. 2026-01-01T00:00:00Z")
    return value


DateTimeQuery = Annotated[service.AwareDatetime, BeforeValidator(_rfc3339)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (the environment's when None)."""
    settings = settings or get_settings()
    tokens = Tokens.of(settings.api_token_map)
    store = open_store(settings)
    backends = Backends.of(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backends.open()
        gc.collect()
        # What the process built to start (modules, models, routes) is kept for good: the
        # collector then never walks it again, which took tens of ms from a request's p99.
        gc.freeze()
        try:
            yield
        finally:
            await backends.close()

    app = FastAPI(
        lifespan=lifespan,
        title="imagegen-worker",
        version="1",
        description="Paid image-to-image generations on Modellix image-01-live: submit a "
        "request, read the job, fetch its images.",
        openapi_url="/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        # No redirect of ``/v1/jobs/abc/`` to ``/v1/jobs/abc``: a job id ending in "/" (sent
        # as %2F) would otherwise answer with another job.
        redirect_slashes=False,
    )
    app.state.tokens = tokens

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=SubmitAnswer,
        responses={
            **_errors(400, 401, 409, 413, 415, 422, 503),
            202: {
                "description": "Recorded; the job runs. `Location` is the job's URL.",
                "headers": {"Location": {"schema": {"type": "string"}}},
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {"$ref": "#/components/schemas/GenerationRequest"},
                        "examples": REQUEST_EXAMPLES,
                    }
                },
            }
        },
        summary="Submit a generation request",
    )
    async def create_job(
        request: Request,
        tenant: TenantDep,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="The same key with the same body returns the same job; with "
                "another body, 409. The body's `idempotency_key`, when given too, must be "
                "the same.",
                min_length=1,
                max_length=service.MAX_KEY_CHARS,
                pattern=KEY_PATTERN,
            ),
        ] = None,
    ) -> Response:
        body = await _read_body(request, settings.api_max_body_bytes)
        if len(body) > INLINE_BODY_BYTES:  # megabytes of data URLs: not on the event loop
            valid = await run_in_threadpool(service.validate, body, idempotency_key=idempotency_key)
        else:
            valid = service.validate(body, idempotency_key=idempotency_key)
        if valid.webhook is None and len(body) <= INLINE_BODY_BYTES:
            prepared = service.prepare(valid, tenant=tenant, settings=settings)
        else:  # a webhook's host is resolved, a large request encoded: in a thread
            prepared = await run_in_threadpool(
                service.prepare, valid, tenant=tenant, settings=settings
            )
        # Recorded first, so a GET right after the answer finds the job; then sent to the
        # workers. Should the broker be away, the sweeper admits the recorded job.
        if await backends.insert(prepared.params):
            done = service.Submitted(prepared.job_id, JobStatus.QUEUED, replayed=False)
        else:  # the id or the key is taken: the same request again, or a conflict
            done = await run_in_threadpool(
                service.settle, prepared, tenant=tenant, settings=settings
            )
        if not done.replayed:
            await backends.push(prepared.entry, done.job_id)
        answer = SubmitAnswer(id=done.job_id, status=done.status, replayed=done.replayed)
        return Response(
            answer.model_dump_json(),
            status_code=202,
            media_type=JSON,
            headers={"Location": jobs.job_href(done.job_id)},
        )

    @app.get(
        "/v1/jobs",
        response_model=JobPage,
        responses=_errors(401, 422, 503),
        summary="List the tenant's jobs, newest first",
    )
    def list_jobs(
        tenant: TenantDep,
        status: JobStatus | None = None,
        created_after: Annotated[
            DateTimeQuery | None, Query(description="RFC 3339, with a time zone offset")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> Response:
        page = service.listing(
            tenant=tenant, status=status, created_after=created_after, limit=limit, cursor=cursor
        )
        answer = JobPage(items=page.items, next_cursor=page.next_cursor)
        return Response(answer.model_dump_json(), media_type=JSON)

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobView,
        responses=_errors(401, 404, 422, 503),
        summary="Read a job",
    )
    async def get_job(job_id: JobId, tenant: TenantDep) -> Response:
        service.check_id(job_id)
        view = await backends.view(job_id, tenant=tenant)
        if view is None:
            raise service.not_found(job_id)
        return Response(view.model_dump_json(), media_type=JSON)

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        response_model=JobView,
        responses=_errors(401, 404, 409, 422, 503),
        summary="Cancel a job that has not ended",
    )
    def cancel_job(job_id: JobId, tenant: TenantDep) -> Response:
        return Response(service.cancel(job_id, tenant=tenant).model_dump_json(), media_type=JSON)

    @app.get(
        "/v1/jobs/{job_id}/images/{index}",
        response_class=Response,
        responses={
            200: {
                "description": "The stored image (local storage), with its checksum headers.",
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES
                },
            },
            307: {"description": "A signed URL of the object storage (`Location`)."},
            **_errors(401, 404, 422, 503),
        },
        summary="Fetch a stored image",
    )
    def get_image(
        job_id: JobId,
        index: Annotated[int, Path(ge=0, le=9999)],
        tenant: TenantDep,
    ) -> Response:
        if store is None:
            raise ApiError(404, "not_stored", "this deployment does not copy images")
        _, copy = service.stored_copy(job_id, index, tenant=tenant)
        headers = {"Cache-Control": "private, max-age=3600, immutable"}
        if copy.sha256:
            digest = base64.b64encode(bytes.fromhex(copy.sha256)).decode()
            headers |= {
                "ETag": f'"{copy.sha256}"',
                "Repr-Digest": f"sha-256=:{digest}:",
                "X-Checksum-SHA256": copy.sha256,
            }
        url = store.signed_url(copy.storage_key)
        if url is not None:
            # The signed URL expires: the redirect itself must not be reused from a cache.
            headers["Cache-Control"] = "no-store"
            return RedirectResponse(url, status_code=307, headers=headers)
        try:
            chunks = store.open(copy.storage_key)
        except StorageError as exc:
            if not exc.permanent:
                raise  # 503: the store is away
            raise ApiError(404, "not_stored", f"image {index}: the copy is missing") from None
        if copy.size_bytes is not None:
            headers["Content-Length"] = str(copy.size_bytes)
        return StreamingResponse(
            chunks, media_type=copy.content_type or "application/octet-stream", headers=headers
        )

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> Response:
        return Response(b'{"status":"ok","checks":{}}', media_type=JSON)

    @app.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": Health}},
        summary="The database, the broker and the result store answer",
    )
    def readyz() -> Response:
        checks = service.readiness(settings, store)
        ok = all(v == "ok" for v in checks.values())
        body = Health(status="ok" if ok else "unavailable", checks=checks)
        return Response(body.model_dump_json(), status_code=200 if ok else 503, media_type=JSON)

    _install_error_handlers(app)
    _document_request_model(app)
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused early: a wrong media type before reading, an oversized one as soon
    as its declared or streamed length passes ``limit`` (it is never held whole)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON:
        raise ApiError(415, "unsupported_media_type", "send the request as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, "too_large", f"the body is over {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "too_large", f"the body is over {limit} bytes")
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the body ended early") from None
    return bytes(body)


def _error(status: int, code: str, message: str, errors: list[FieldError] | None = None) -> bytes:
    return ErrorBody(error=code, message=message, errors=errors or []).model_dump_json().encode()


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return Response(
            _error(exc.status, exc.code, exc.message, exc.errors),
            status_code=exc.status,
            media_type=JSON,
            headers=exc.headers,
        )

    async def validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            FieldError(
                path=".".join(str(p) for p in e.get("loc", ())) or "request",
                code=str(e.get("type", "invalid")),
                message=str(e.get("msg", "invalid"))[:500],
            )
            for e in exc.errors()[:20]
        ]
        return Response(
            _error(422, "invalid_request", "the request is not valid", errors),
            status_code=422,
            media_type=JSON,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return Response(
            _error(exc.status_code, code, str(exc.detail)[:200]),
            status_code=exc.status_code,
            media_type=JSON,
            headers=headers,
        )

    async def unavailable(_: Request, exc: Exception) -> Response:
        log.warning("api.unavailable", error=type(exc).__name__)
        return Response(
            _error(503, "unavailable", "a backing service is unavailable; try again"),
            status_code=503,
            media_type=JSON,
            headers={"Retry-After": "5"},
        )

    async def internal(_: Request, exc: Exception) -> Response:
        log.error("api.internal_error", error=type(exc).__name__, exc_info=exc)
        return Response(
            _error(500, "internal_error", "internal error"), status_code=500, media_type=JSON
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    for kind in (
        OperationalError,
        InterfaceError,
        PoolExhausted,
        StorageError,
        PsycopgError,
        PsycopgInterfaceError,
        PoolTimeout,
    ):
        app.add_exception_handler(kind, unavailable)
    app.add_exception_handler(Exception, internal)


def _allowed_methods(request: Request) -> str:
    """Every method of the request's path: Starlette names only those of the first route
    whose path matched (``Allow: POST`` for ``/v1/jobs``, which has GET too)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


def _document_request_model(app: FastAPI) -> None:
    """Put GenerationRequest (read by hand, for the 413/415 checks) into the document: the
    producers' JSON Schema of it, which also bounds ``metadata`` (its depth, and no NUL or
    lone surrogate in its text), so the document refuses what the API refuses."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            schema = producer_schemas()["generation_request.schema.json"]
            for keyword in ("$schema", "$id"):
                schema.pop(keyword, None)
            defs = schema.pop("$defs", {})
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(_rebased({**defs, "GenerationRequest": schema}))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _rebased(value: Any) -> Any:
    """``value`` with its ``#/$defs/`` references pointing at the document's components."""
    if isinstance(value, dict):
        return {
            key: "#/components/schemas/" + item.removeprefix("#/$defs/")
            if key == "$ref" and isinstance(item, str) and item.startswith("#/$defs/")
            else _rebased(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_rebased(item) for item in value]
    return value
