"""Non-Python producers validate with the checked-in JSON Schema; it must agree with pydantic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from api_schema import GenerationRequest
from api_schema.jsonschema import SCHEMA_DIR

SCHEMA = json.loads((SCHEMA_DIR / "generation_request.schema.json").read_text())
KWARGS = json.loads((SCHEMA_DIR / "generate_task_kwargs.schema.json").read_text())
URL = "https://example.com/a.jpg"


def test_schemas_are_valid_json_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    Draft202012Validator.check_schema(KWARGS)


GOOD: list[dict[str, Any]] = [
    {"prompt": "x", "subject_reference_images": [URL]},
    {"prompt": "x" * 1500, "subject_reference_images": [URL] * 10, "n": 9, "seed": 0},
    {"prompt": "x", "subject_reference_images": [URL], "width": 512, "height": 2048},
    {"prompt": "x", "subject_reference_images": [URL], "aspect_ratio": "21:9", "priority": 0},
    {"prompt": "x", "subject_reference_images": [URL], "metadata": {"a": [1, 2]}},
    {"prompt": "astral \U0001f600 and accents \u00e9", "subject_reference_images": [URL]},
]
BAD: list[dict[str, Any]] = [
    {"subject_reference_images": [URL]},
    {"prompt": "", "subject_reference_images": [URL]},
    {"prompt": "x" * 1501, "subject_reference_images": [URL]},
    {"prompt": "x", "subject_reference_images": []},
    {"prompt": "x", "subject_reference_images": [URL] * 11},
    {"prompt": "x", "subject_reference_images": ["http://example.com/a.jpg"]},
    {"prompt": "x", "subject_reference_images": ["data:image/gif;base64,R0lG"]},
    {"prompt": "x", "subject_reference_images": [URL], "n": 10},
    {"prompt": "x", "subject_reference_images": [URL], "n": "2"},
    {"prompt": "x", "subject_reference_images": [URL], "aspect_ratio": "5:4"},
    {"prompt": "x", "subject_reference_images": [URL], "width": 1001, "height": 512},
    {"prompt": "x", "subject_reference_images": [URL], "width": 4096, "height": 512},
    {"prompt": "x", "subject_reference_images": [URL], "seed": -1},
    {"prompt": "x", "subject_reference_images": [URL], "priority": 10},
    {"prompt": "x", "subject_reference_images": [URL], "deadline_seconds": 0},
    {"prompt": "x", "subject_reference_images": [URL], "colour": "red"},
    {"prompt": "x", "subject_reference_images": [URL], "width": 512},
    {"prompt": "x", "subject_reference_images": [URL], "height": 512},
    {"prompt": "a\x00b", "subject_reference_images": [URL]},
    {"prompt": "a \ud800 b", "subject_reference_images": [URL]},
    {"prompt": "a \udfff", "subject_reference_images": [URL]},
]


@pytest.mark.parametrize("body", GOOD)
def test_schema_and_models_accept_the_same_good_requests(body: dict[str, Any]) -> None:
    assert list(Draft202012Validator(SCHEMA).iter_errors(body)) == []
    GenerationRequest.model_validate(body)
    assert list(Draft202012Validator(KWARGS).iter_errors({"request": body})) == []


@pytest.mark.parametrize("body", BAD)
def test_schema_and_models_refuse_the_same_bad_requests(body: dict[str, Any]) -> None:
    assert list(Draft202012Validator(SCHEMA).iter_errors(body)) != []
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate(body)


def test_kwargs_schema_refuses_extra_kwargs() -> None:
    body = {"request": GOOD[0], "extra": 1}
    assert list(Draft202012Validator(KWARGS).iter_errors(body)) != []
