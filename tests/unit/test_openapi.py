"""The checked-in OpenAPI document is the one the app serves, and it says what clients need."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from jsonschema import Draft202012Validator

from api_schema import GenerationRequest
from worker.api.openapi import DOCUMENT_PATH, document, offline_app, render

REGENERATE = "uv run python -m worker.api.openapi"
V1_OPERATIONS = {
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("post", "/v1/jobs/{job_id}/cancel"),
    ("get", "/v1/jobs/{job_id}/images/{index}"),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def test_checked_in_document_is_current(doc: dict[str, Any]) -> None:
    assert DOCUMENT_PATH.exists(), f"{DOCUMENT_PATH} is missing: run `{REGENERATE}`"
    checked_in = DOCUMENT_PATH.read_text(encoding="utf-8")
    assert checked_in == render(doc), (
        f"{DOCUMENT_PATH} differs from the app's OpenAPI document: run `{REGENERATE}` "
        "and commit the result"
    )


def test_document_is_served_at_v1_openapi_json(doc: dict[str, Any]) -> None:
    app = offline_app()
    assert app.openapi_url == "/v1/openapi.json"
    assert app.openapi() == doc
    assert doc["openapi"].startswith("3.1.")


def test_bearer_security_scheme(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["HTTPBearer"]["description"],
    }


def test_every_v1_route_is_documented_and_needs_the_token(doc: dict[str, Any]) -> None:
    app = offline_app()
    routed = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/v1/")
        for method in route.methods or ()
    }
    assert routed == V1_OPERATIONS
    documented = {
        (method, path)
        for path, operations in doc["paths"].items()
        if path.startswith("/v1/")
        for method in operations
    }
    assert documented == V1_OPERATIONS
    for method, path in V1_OPERATIONS:
        operation = doc["paths"][path][method]
        assert operation["security"] == [{"HTTPBearer": []}], (method, path)
        responses = operation["responses"]
        assert "401" in responses, (method, path)
        assert "503" in responses, (method, path)


def test_submit_documents_its_refusals_and_its_body(doc: dict[str, Any]) -> None:
    submit = doc["paths"]["/v1/jobs"]["post"]
    responses = submit["responses"]
    for status in ("400", "413", "415", "422"):
        assert status in responses, status
        body = responses[status]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert "Location" in responses["202"]["headers"]
    request_body = submit["requestBody"]
    assert request_body["required"] is True
    ref = request_body["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/GenerationRequest"
    schemas = doc["components"]["schemas"]
    request = schemas["GenerationRequest"]
    assert {"prompt", "subject_reference_images"} <= set(request["required"])
    assert "$defs" not in request
    # The examples are requests the document and the model both accept.
    validator = Draft202012Validator({**doc, "$ref": ref})
    for name, example in request_body["content"]["application/json"]["examples"].items():
        assert list(validator.iter_errors(example["value"])) == [], name
        GenerationRequest.model_validate(example["value"])


def test_every_reference_resolves_inside_the_document(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    refs = set(_refs(doc))
    assert "#/components/schemas/GenerationRequest" in refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def _refs(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("$ref"), str):
                yield item["$ref"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
