"""Schemathesis against the running ``imagegen api``: every operation of the document the
server serves (``/v1/openapi.json``), positive and negative inputs, with schemathesis's
default checks (no 500s; documented status codes, content types, headers and bodies;
negative data refused, schema-valid data accepted; auth not ignored; Allow on 405; ...).

Bounded to run in well under a minute: a fixed seed with ``derandomize`` (a failure found
once is found again), ``MAX_EXAMPLES`` per operation in the fuzzing phase, plus the
deterministic examples and coverage phases, plus a short stateful run.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api_schema import MAX_METADATA_BYTES
from tests.harness import Stack
from tests.integration.test_api import BODY_LIMIT, TOKENS

SEED = int(os.environ.get("IMAGEGEN_SCHEMATHESIS_SEED", "20261201"))
MAX_EXAMPLES = int(os.environ.get("IMAGEGEN_SCHEMATHESIS_EXAMPLES", "25"))
#: A real server answers slowly by Hypothesis's measure, and the document's look-ahead
#: patterns make schemathesis filter many generated values.
SLOW_AND_FILTERED = [HealthCheck.too_slow, HealthCheck.filter_too_much]
BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=SLOW_AND_FILTERED,
)
AUTH = {"Authorization": f"Bearer {TOKENS['acme']}"}


@pytest.fixture(scope="module")
def api_url(worker_stack: Stack) -> Iterator[str]:
    # A worker runs too: accepted POSTs are sent to it, as in production.
    url = worker_stack.start_api(
        TOKENS, name="api-schemathesis", IMAGEGEN_API_MAX_BODY_BYTES=str(BODY_LIMIT)
    )
    yield url
    worker_stack.stop_api(url)


@pytest.fixture(scope="module")
def served_schema(api_url: str) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": api_url,
            "generation": {"deterministic": True, "database": "none"},
            # Every request carries acme's token; `ignored_auth` still checks that a request
            # without it, or with a wrong one, is refused.
            "auth": {"openapi": {"HTTPBearer": {"bearer": TOKENS["acme"]}}},
        }
    )
    return schemathesis.openapi.from_url(f"{api_url}/v1/openapi.json", config=config)


@pytest.fixture(scope="module")
def request_schema(served_schema: schemathesis.BaseSchema) -> Draft202012Validator:
    """The served document's GenerationRequest, as a JSON Schema validator."""
    document = served_schema.raw_schema
    return Draft202012Validator({**document, "$ref": "#/components/schemas/GenerationRequest"})


@pytest.fixture(autouse=True)
def _nodeid_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's ``from_fixture`` reads ``request.node._nodeid``, which pytest 9.2
    no longer has (node ids live in ``_id``): give it the id it expects. Its writes (the
    ``[METHOD /path]`` suffix of each operation's subtest) then only change this copy."""
    node = request.node
    if not hasattr(node, "_nodeid"):
        node._nodeid = node.nodeid


schema = schemathesis.pytest.from_fixture("served_schema")


def _unverifiable_checks(case: Case[Any], request_schema: Draft202012Validator) -> list[Any]:
    """Checks whose premise does not hold for ``case``.

    ``positive_data_acceptance`` expects every schema-valid request to be accepted. Some
    cases schemathesis labels positive are not requests the API could accept, and the API
    refusing them is right:

    - a ``cursor`` other than one the API handed out: it is an opaque token, so no schema
      can say which strings are cursors (422 invalid_cursor);
    - a body the document's own schema refuses: schemathesis cannot satisfy the look-ahead
      patterns of reference-image URLs and falls back to, e.g., ``"https://"`` (422);
    - an ``Idempotency-Key`` header other than the body's ``idempotency_key``: a document
      cannot say that two values must agree (422 idempotency_key_mismatch);
    - ``metadata`` over 4096 bytes as JSON, a limit its description states and JSON Schema
      cannot (422);
    - a ``webhook``: this deployment has no IMAGEGEN_WEBHOOK_SECRETS, so it signs none and
      refuses them by policy (422 invalid_target).
    """
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return []
    if case.query and case.query.get("cursor") is not None:
        return [positive_data_acceptance]
    if (case.method.upper(), case.operation.path) != ("POST", "/v1/jobs"):
        return []
    body: Any = case.body
    if not isinstance(body, dict) or not request_schema.is_valid(body):
        return [positive_data_acceptance]
    header = case.headers.get("Idempotency-Key") if case.headers else None
    key = body.get("idempotency_key")
    refused_by_design = (
        (header is not None and key is not None and key != header)
        or body.get("webhook") is not None
        or _metadata_bytes(body) > MAX_METADATA_BYTES
    )
    return [positive_data_acceptance] if refused_by_design else []


def _metadata_bytes(body: dict[str, Any]) -> int:
    """``metadata`` as the model measures it: compact JSON, ASCII escapes."""
    metadata = body.get("metadata")
    return 0 if metadata is None else len(json.dumps(metadata, separators=(",", ":")))


@schema.parametrize()
@BOUNDED
def test_api_conforms_to_its_document(
    case: Case[Any], request_schema: Draft202012Validator
) -> None:
    case.call_and_validate(excluded_checks=_unverifiable_checks(case, request_schema))


EXAMPLE: dict[str, Any] = {
    "prompt": "a watercolour portrait",
    "subject_reference_images": ["https://example.com/reference.jpg"],
}


def _cursor(stamp: str, job_id: str) -> str:
    raw = json.dumps([stamp, job_id]).encode()  # ASCII: "\ud800" stays an escape
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Inputs found to break the API once (500s, answers of another resource); each must get
#: the status named here and pass every check.
ODD_INPUTS: list[tuple[str, str, dict[str, Any], int]] = [
    # NUL reached PostgreSQL ("A string literal cannot contain NUL characters"): 500.
    ("GET", "/v1/jobs/{job_id}", {"path_parameters": {"job_id": "a\x00b"}}, 404),
    ("POST", "/v1/jobs/{job_id}/cancel", {"path_parameters": {"job_id": "\x00"}}, 404),
    (
        "GET",
        "/v1/jobs/{job_id}/images/{index}",
        {"path_parameters": {"job_id": "\x00", "index": 0}},
        404,
    ),
    # A cursor is base64 of JSON: a NUL or a lone surrogate in its job id was a 500 too.
    ("GET", "/v1/jobs", {"query": {"cursor": _cursor("2026-01-01T00:00:00+00:00", "a\x00")}}, 422),
    ("GET", "/v1/jobs", {"query": {"cursor": _cursor("2026-01-01T00:00:00+00:00", "\ud800")}}, 422),
    # Pydantic took a number as a Unix time; the document says RFC 3339 date-time.
    ("GET", "/v1/jobs", {"query": {"created_after": "0.5"}}, 422),
    ("GET", "/v1/jobs", {"query": {"created_after": "2026-01-01T00:00:00Z"}}, 200),
    # JSON Schema's integer takes 6.0, as the document promised; the model refused it.
    ("POST", "/v1/jobs", {"body": {**EXAMPLE, "n": 2.0, "priority": 9.0}}, 202),
]


@pytest.mark.parametrize(("method", "path", "given", "status"), ODD_INPUTS)
def test_odd_inputs(
    served_schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    given: dict[str, Any],
    status: int,
) -> None:
    case = served_schema[path][method].Case(headers=dict(AUTH), **given)
    response = case.call_and_validate()
    assert response.status_code == status, response.text


def test_a_trailing_slash_is_not_another_job(api_url: str) -> None:
    """``/v1/jobs/<id>%2F`` named job ``<id>`` through a redirect: now no job, 404."""
    with httpx.Client(base_url=api_url, headers=AUTH, timeout=30) as http:
        job_id = http.post("/v1/jobs", json=EXAMPLE).json()["id"]
        assert http.get(f"/v1/jobs/{job_id}").status_code == 200
        for path in (f"/v1/jobs/{job_id}%2F", f"/v1/jobs/{job_id}/", "/v1/jobs/"):
            answer = http.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert answer.json()["error"] == "not_found"


def test_options_names_every_method_of_the_path(api_url: str) -> None:
    """Starlette's 405 named only the first matching route's methods (``Allow: POST``)."""
    with httpx.Client(base_url=api_url, headers=AUTH, timeout=30) as http:
        for path, allowed in (("/v1/jobs", "GET, POST"), ("/v1/jobs/x", "GET")):
            answer = http.request("OPTIONS", path)
            assert (answer.status_code, answer.headers["allow"]) == (405, allowed)


def test_stateful_links(
    served_schema: schemathesis.BaseSchema, request_schema: Draft202012Validator
) -> None:
    """Sequences of calls, each using ids earlier answers gave (the 202's ``Location``,
    ``id`` fields): reads and cancels of jobs that exist, not only of random ids."""
    seen: list[tuple[str, int]] = []

    class Workflow(served_schema.as_state_machine()):
        def after_call(self, response: Any, case: Case[Any]) -> None:
            super().after_call(response, case)
            seen.append((case.operation.label, response.status_code))

        def validate_response(
            self, response: Any, case: Case[Any], additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=_unverifiable_checks(case, request_schema),
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Workflow.run(
        settings=settings(
            max_examples=max(3, MAX_EXAMPLES // 5),
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=SLOW_AND_FILTERED,
        )
    )
    # The links were followed: a job was made, then read or cancelled through its id.
    assert ("POST /v1/jobs", 202) in seen, seen
    followed = {label for label, status in seen if status in (200, 409)} - {"GET /v1/jobs"}
    assert followed, seen
