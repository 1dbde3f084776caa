"""Non-Python producers validate with the checked-in JSON Schema; it must agree with pydantic."""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from api_schema import MAX_METADATA_DEPTH, MAX_REQUEST_BYTES, MAX_URL_CHARS, GenerationRequest
from api_schema import models as api_models
from api_schema.jsonschema import SCHEMA_DIR
from tests.nodejs import node_binary

SCHEMA = json.loads((SCHEMA_DIR / "generation_request.schema.json").read_text())
KWARGS = json.loads((SCHEMA_DIR / "generate_task_kwargs.schema.json").read_text())
URL = "https://example.com/a.jpg"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()
JPEG_B64 = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(16)).decode()
# A whole 1x1 PNG ("==" padding) and a raw JPEG (FF D8 FF DB, "=" padding).
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
    "AAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
JPEG_RAW_B64 = base64.b64encode(b"\xff\xd8\xff\xdb" + bytes(15)).decode()
# Formats the worker does not take: GIF ("R0lGOD...") and WEBP ("UklGR" ... "XRUJQ").
GIF_B64 = base64.b64encode(b"GIF89a" + bytes(16)).decode()
WEBP_B64 = base64.b64encode(b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(8)).decode()
NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def test_schemas_are_valid_json_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    Draft202012Validator.check_schema(KWARGS)


def nested(depth: int) -> dict[str, Any]:
    """Metadata nesting exactly ``depth`` objects and arrays, itself included."""
    value: Any = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


def image(url: str) -> dict[str, Any]:
    return {"prompt": "x", "subject_reference_images": [url]}


GOOD: list[dict[str, Any]] = [
    {"prompt": "x", "subject_reference_images": [URL]},
    {"prompt": "x" * 1500, "subject_reference_images": [URL] * 10, "n": 9, "seed": 0},
    {"prompt": "x", "subject_reference_images": [URL], "width": 512, "height": 2048},
    {"prompt": "x", "subject_reference_images": [URL], "aspect_ratio": "21:9", "priority": 0},
    {"prompt": "x", "subject_reference_images": [URL], "metadata": {"a": [1, 2]}},
    {"prompt": "astral \U0001f600 and accents \u00e9", "subject_reference_images": [URL]},
    # width and height: both null is as good as both absent
    {"prompt": "x", "subject_reference_images": [URL], "width": None, "height": None},
    {"prompt": "x", "subject_reference_images": [URL], "width": None},
    {"prompt": "x", "subject_reference_images": [URL], "aspect_ratio": None, "seed": None},
    # prompts with some visible text among whitespace and zero-width characters
    {"prompt": " \u200b a \ufeff", "subject_reference_images": [URL]},
    {"prompt": "\u3000\U0001f600", "subject_reference_images": [URL]},
    # metadata as deep as allowed, text anywhere in it
    {"prompt": "x", "subject_reference_images": [URL], "metadata": nested(MAX_METADATA_DEPTH)},
    {"prompt": "x", "subject_reference_images": [URL], "metadata": {"é": {"k": [None, True]}}},
    # reference URLs: any case of scheme and media type, public IP literals, ports, length
    image("HTTPS://Example.COM/a.jpg"),
    image("hTtPs://example.com:8443/a.jpg?sig=a%20b&x=1#frag"),
    image("https://8.8.8.8/a.jpg"),
    image("https://100.128.0.1/a.jpg"),
    image("https://[2606:4700:4700::1111]/a.jpg"),
    image("https://[2001:4860:4860::8888]:443/a.jpg"),
    image("https://[2a00:1450:4001:80b::200e]/a.jpg"),
    image("https://xn--r8jz45g.jp/%E7%8C%AB.png"),
    image("https://example.com/é/\U0001f600.png"),
    image("https://example.com:65535"),
    image("https://example.com/" + "a" * (MAX_URL_CHARS - len("https://example.com/"))),
    image("data:image/png;base64," + PNG_B64),
    image("DATA:IMAGE/PNG;BASE64," + PNG_B64),
    image("Data:Image/Jpeg;Base64," + JPEG_B64),
    image("data:image/png;base64,iVBORw0KGgo="),
    image("data:image/png;base64," + PNG_1PX),
    image("data:image/jpeg;base64," + JPEG_RAW_B64),
    image("data:IMAGE/png;Base64," + PNG_1PX),
    image("data:image/JPEG;base64," + JPEG_RAW_B64),
    # aspect_ratio wins over width/height, which still come together
    {
        "prompt": "x",
        "subject_reference_images": [URL],
        "aspect_ratio": "1:1",
        "width": 2048,
        "height": 512,
    },
]
GOOD += [
    {
        "prompt": "x",
        "subject_reference_images": [URL],
        "metadata": {"__type__": "x", "__value__": 1, "k": 2},
    },
    {"prompt": "x", "subject_reference_images": [URL], "metadata": {"__type__": "just a key"}},
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
    # width and height: a null partner is no partner
    {"prompt": "x", "subject_reference_images": [URL], "width": 512, "height": None},
    {"prompt": "x", "subject_reference_images": [URL], "width": None, "height": 512},
    {
        "prompt": "x",
        "subject_reference_images": [URL],
        "aspect_ratio": "1:1",
        "width": 512,
        "height": None,
    },
    {"prompt": "x", "subject_reference_images": [URL], "aspect_ratio": "1:1", "height": 512},
    # prompts with nothing visible
    {"prompt": " ", "subject_reference_images": [URL]},
    {"prompt": " \t\r\n\x0b\x0c\x1c\x85\xa0\u2003\u2028\u3000", "subject_reference_images": [URL]},
    {"prompt": "\u200b\u200c\u200d\u2060\ufeff", "subject_reference_images": [URL]},
    {"prompt": "\u200b \u00a0\u200d", "subject_reference_images": [URL]},
    # idempotency keys: "$" must not let a final newline through
    {"prompt": "x", "subject_reference_images": [URL], "idempotency_key": "key\n"},
    # metadata: too deep, text PostgreSQL cannot store
    {"prompt": "x", "subject_reference_images": [URL], "metadata": nested(MAX_METADATA_DEPTH + 1)},
    {
        "prompt": "x",
        "subject_reference_images": [URL],
        "metadata": {"a": [[{"b": {}}]] * 2} | {"d": nested(8)},
    },
    {"prompt": "x", "subject_reference_images": [URL], "metadata": {"k": ["ok", "a\x00"]}},
    {"prompt": "x", "subject_reference_images": [URL], "metadata": {"a": {"\x00": 1}}},
    {"prompt": "x", "subject_reference_images": [URL], "metadata": {"a": "\ud800"}},
    # metadata: kombu type tags (the broker refuses bodies holding one)
    {
        "prompt": "x",
        "subject_reference_images": [URL],
        "metadata": {"__type__": "datetime", "__value__": "x"},
    },
    {
        "prompt": "x",
        "subject_reference_images": [URL],
        "metadata": {"a": [{"__type__": "d", "__value__": 1}]},
    },
    # webhook URLs: user info, no host
    *(
        {"prompt": "x", "subject_reference_images": [URL], "webhook": {"url": hook}}
        for hook in ("https://user@host.example/", "https:///x", "https://:443/x")
    ),
    # reference URLs: user info
    image("https://user:password@example.com/a.jpg"),
    image("https://user@example.com/a.jpg"),
    image("https://example.com@evil.example/a.jpg"),
    # non-public IP literals
    image("https://127.0.0.1/a.jpg"),
    image("https://127.255.255.254:8443/a.jpg"),
    image("https://10.0.0.1/a.jpg"),
    image("https://10.255.255.255/a.jpg"),
    image("https://172.16.0.1/a.jpg"),
    image("https://172.31.255.255/a.jpg"),
    image("https://192.168.1.1/a.jpg"),
    image("https://169.254.169.254/latest/meta-data/"),
    image("https://100.64.0.1/a.jpg"),
    image("https://0.0.0.0/a.jpg"),
    image("https://192.0.2.1/a.jpg"),
    image("https://198.18.0.1/a.jpg"),
    image("https://224.0.0.1/a.jpg"),
    image("https://240.0.0.1/a.jpg"),
    image("https://255.255.255.255/a.jpg"),
    image("https://[::1]/a.jpg"),
    image("https://[::]/a.jpg"),
    image("https://[::ffff:127.0.0.1]/a.jpg"),
    image("https://[::ffff:7f00:1]/a.jpg"),
    image("https://[::ffff:10.0.0.1]:443/a.jpg"),
    image("https://[0:0:0:0:0:ffff:a9fe:a9fe]/a.jpg"),
    image("https://[64:ff9b::a9fe:a9fe]/a.jpg"),
    image("https://[fe80::1]/a.jpg"),
    image("https://[FE80::1]/a.jpg"),
    image("https://[fe80::1%25eth0]/a.jpg"),
    image("https://[fc00::1]/a.jpg"),
    image("https://[fd12:3456::1]/a.jpg"),
    image("https://[ff02::1]/a.jpg"),
    image("https://[2001:db8::1]/a.jpg"),
    image("https://[2001:0DB8::1]/a.jpg"),
    image("https://[2001::1]/a.jpg"),
    image("https://[2002:a00:1::1]/a.jpg"),
    image("https://[3fff::1]/a.jpg"),
    # control characters, whitespace, invisible characters, backslashes anywhere
    image("https://example.com/a\x01.jpg"),
    image("https://example.com/a\x7f.jpg"),
    image("https://example.com/a\x85.jpg"),
    image("https://example.com/a.jpg\n"),
    image("https://example.com/a\t.jpg"),
    image("https://example.com/a\u00a0.jpg"),
    image("https://example.com/a\u2028.jpg"),
    image("https://example.com/a\u200b.jpg"),
    image("https://example.com/a\u202e.jpg"),
    image("https://exam ple.com/a.jpg"),
    image("https://example.com\\@evil.example/a.jpg"),
    image("https://example.com/a\ud800.jpg"),
    # too long
    image("https://example.com/" + "a" * (MAX_URL_CHARS + 1 - len("https://example.com/"))),
    # hosts that are not valid
    image("https:///a.jpg"),
    image("https://"),
    image("https://a..example.com/a.jpg"),
    image("https://.example.com/a.jpg"),
    image("https://example.com./a.jpg"),
    image("https://-example.com/a.jpg"),
    image("https://example-.com/a.jpg"),
    image("https://ex_ample.com/a.jpg"),
    image("https://" + "a" * 64 + ".com/a.jpg"),
    image("https://" + "a." * 127 + "com/a.jpg"),
    image("https://例え.jp/a.jpg"),
    image("https://localhost/a.jpg"),
    image("https://LOCALHOST:8443/a.jpg"),
    image("https://images.localhost/a.jpg"),
    image("https://intranet/a.jpg"),
    image("https://127.1/a.jpg"),
    image("https://2130706433/a.jpg"),
    image("https://0x7f.0.0.1/a.jpg"),
    image("https://010.0.0.1/a.jpg"),
    image("https://1.2.3.256/a.jpg"),
    image("https://1.2.3.4.5/a.jpg"),
    image("https://[2606:4700::1111/a.jpg"),
    image("https://[2606:4700::1111]x/a.jpg"),
    image("https://[2606:4700::1111:]/a.jpg"),
    image("https://[2606:4700::01.2.3.4]/a.jpg"),
    # ports out of range
    image("https://example.com:0/a.jpg"),
    image("https://example.com:65536/a.jpg"),
    image("https://example.com:99999999999/a.jpg"),
    image("https://example.com:/a.jpg"),
    image("https://example.com:08/a.jpg"),
    image("https://example.com:https/a.jpg"),
    image("https://example.com:443:443/a.jpg"),
    # data URLs whose bytes the schema can check: signature and base64
    image("data:image/png;base64,"),
    image("data:image/png;base64," + JPEG_B64),
    image("data:image/jpeg;base64," + PNG_B64),
    image("data:image/png;base64,iVBORw0KGgo"),
    image("data:image/png;base64,iVBORw0KGgo=\n"),
    image("data:image/png;base64,iVBORw0KGgo=AAAA"),
    image("data:image/png;base64,iVBORw0K Ggo="),
    image("data:image/png," + PNG_B64),
    image("data:image/jpg;base64," + JPEG_B64),
    # a declared media type whose bytes are another format: GIF or WEBP bytes, or the other kind
    image("data:image/png;base64," + GIF_B64),
    image("DATA:IMAGE/PNG;BASE64," + GIF_B64),
    image("data:image/jpeg;base64," + GIF_B64),
    image("data:image/png;base64," + WEBP_B64),
    image("data:image/jpeg;base64," + PNG_1PX),
    # media types the worker does not take, whatever the bytes
    image("data:image/gif;base64," + GIF_B64),
    image("data:image/webp;base64," + WEBP_B64),
    image("data:image/webp;base64," + PNG_1PX),
]


@pytest.mark.parametrize("body", GOOD)
def test_schema_and_models_accept_the_same_good_requests(body: dict[str, Any]) -> None:
    assert list(Draft202012Validator(SCHEMA).iter_errors(body)) == []
    GenerationRequest.model_validate(body)
    assert list(Draft202012Validator(KWARGS).iter_errors({"request": body})) == []


@pytest.mark.parametrize("body", BAD)
def test_schema_and_models_refuse_the_same_bad_requests(body: dict[str, Any]) -> None:
    assert list(Draft202012Validator(SCHEMA).iter_errors(body)) != []
    assert list(Draft202012Validator(KWARGS).iter_errors({"request": body})) != []
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate(body)


def test_kwargs_schema_refuses_extra_kwargs() -> None:
    body = {"request": GOOD[0], "extra": 1}
    assert list(Draft202012Validator(KWARGS).iter_errors(body)) != []


def test_schema_refuses_metadata_nested_far_too_deep() -> None:
    # 256 deep: what used to pass validation and crash the worker. (Not 100,000: Python's
    # jsonschema puts repr(instance) in its message, which Python cannot nest that deep;
    # the model's own 100,000-deep test is in test_api_schema.)
    body = {"prompt": "x", "subject_reference_images": [URL], "metadata": nested(256)}
    assert list(Draft202012Validator(SCHEMA).iter_errors(body)) != []
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate(body)


def test_schema_descriptions_say_what_it_cannot_check() -> None:
    assert "16 MiB" in SCHEMA["description"]
    assert str(MAX_REQUEST_BYTES) in SCHEMA["description"]
    assert "https://" in SCHEMA["description"]
    metadata = SCHEMA["properties"]["metadata"]["description"]
    assert "4096 bytes" in metadata
    assert "cannot" in metadata
    assert f"{MAX_METADATA_DEPTH} levels" in metadata
    images = SCHEMA["properties"]["subject_reference_images"]["items"]["description"]
    assert "resolves to a private address" in images
    assert "2048" in images


def test_metadata_depth_chain_matches_the_limit() -> None:
    defs = SCHEMA["$defs"]
    chain = sorted(name for name in defs if name.startswith("MetadataValue"))
    assert len(chain) == MAX_METADATA_DEPTH
    assert "items" not in defs["MetadataValue0"]
    top = SCHEMA["properties"]["metadata"]["anyOf"][0]
    assert top["additionalProperties"] == {"$ref": f"#/$defs/MetadataValue{MAX_METADATA_DEPTH - 1}"}


# --------------------------------------------------------------------------------------
# the patterns: the same answers from Python's re, ECMAScript with and without the u flag,
# and the model's own checks
# --------------------------------------------------------------------------------------


def _patterns(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                found.add(value)
            elif key != "properties" or isinstance(value, dict):
                found |= _patterns(value)
    elif isinstance(node, list):
        for value in node:
            found |= _patterns(value)
    return found


def _strings(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return set(node) | {s for v in node.values() for s in _strings(v)}
    if isinstance(node, list):
        return {s for v in node for s in _strings(v)}
    return set()


def test_every_pattern_means_the_same_in_ecmascript() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    patterns = sorted(_patterns(SCHEMA) | _patterns(KWARGS))
    corpus = sorted(
        _strings([body for body in GOOD + BAD if "metadata" not in body])
        | {"", "\ud800", "\udc00x", "a\ud83d\ude00", "\U0001f600", "\x1c", "\x1f", "\u180e"}
    )
    script = (
        "const [patterns, corpus] = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(patterns.map(p => [new RegExp(p, 'u'), new RegExp(p)]"
        ".map(r => corpus.map(s => r.test(s))))));"
    )
    result = subprocess.run(
        [node, "-e", script],
        input=json.dumps([patterns, corpus]),  # ensure_ascii: lone surrogates survive
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    answers = json.loads(result.stdout)
    for pattern, (unicode_mode, plain) in zip(patterns, answers, strict=True):
        python = [re.search(pattern, text) is not None for text in corpus]
        assert python == unicode_mode, pattern
        assert python == plain, pattern


def test_patterns_run_on_megabytes_in_ecmascript() -> None:
    # V8 runs out of stack on some loops over long strings ("(?:[...]{4})*"), which would
    # make ajv throw instead of answering on a big data URL.
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    limit = api_models.DATA_URL_MAX_CHARS["png"]
    cases = [  # (pattern, text as [head, repeated, count, tail])
        (
            api_models.DATA_URL_PATTERNS["png"],
            ["data:image/png;base64,iVBORw0KGgo", "A", limit - 34, "="],
        ),
        (
            api_models.DATA_URL_PATTERNS["png"],
            ["data:image/png;base64,iVBORw0KGgo", "A", limit - 35, "="],
        ),
        (
            api_models.DATA_URL_PATTERNS["jpeg"],
            ["data:image/jpeg;base64,/9j/", "AAAA", 3_000_000, ""],
        ),
        (api_models.HTTPS_URL_PATTERN, ["https://a.example/", "x\U0001f600", 2_000_000, ""]),
        (api_models.TEXT_PATTERN, ["", "p\U0001f600", 2_000_000, ""]),
        (api_models.VISIBLE_TEXT_PATTERN, ["", " \u200b", 2_000_000, "x"]),
    ]
    script = (
        "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(cases.map(([p, [head, rep, n, tail]]) => {"
        "  const text = head + rep.repeat(n) + tail;"
        "  return [new RegExp(p, 'u').test(text), new RegExp(p).test(text)]; })));"
    )
    result = subprocess.run(
        [node, "-e", script],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for (pattern, (head, repeated, count, tail)), answers in zip(
        cases, json.loads(result.stdout), strict=True
    ):
        python = re.search(pattern, head + repeated * count + tail) is not None
        assert answers == [python, python], pattern[:40]


# --------------------------------------------------------------------------------------
# ajv, as a Node.js producer validates: the same answers as the model on the same corpus
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ajv_node() -> str:
    """``node``, with ``ajv`` installed in tests/node."""
    return node_binary()


def _ajv(node: str, values: list[Any]) -> list[list[bool | str]]:
    """For each of the request and kwargs schemas, ajv's answer for each value: True, or
    its first error."""
    result = subprocess.run(
        [
            node,
            str(NODE_DIR / "validate_schema.mjs"),
            str(SCHEMA_DIR / "generation_request.schema.json"),
            str(SCHEMA_DIR / "generate_task_kwargs.schema.json"),
        ],
        input=json.dumps(values),  # ensure_ascii: lone surrogates survive
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no strict-mode warnings either
    answers: list[list[bool | str]] = json.loads(result.stdout)
    return answers


def _model_accepts(body: dict[str, Any]) -> bool:
    try:
        GenerationRequest.model_validate(body)
    except ValidationError:
        return False
    return True


def test_ajv_and_the_model_agree_on_the_corpus(ajv_node: str) -> None:
    bodies = GOOD + BAD
    requests, kwargs = _ajv(ajv_node, [*bodies, *({"request": body} for body in bodies)])
    answers = requests[: len(bodies)]
    wrapped = kwargs[len(bodies) :]
    for body, expected, answer, wrapped_answer in zip(
        bodies, [True] * len(GOOD) + [False] * len(BAD), answers, wrapped, strict=True
    ):
        assert _model_accepts(body) is expected, body
        assert (answer is True) is expected, (body, answer)
        assert (wrapped_answer is True) is expected, (body, wrapped_answer)


def test_ajv_refuses_the_known_gaps(ajv_node: str) -> None:
    # what passed ajv once while the worker refused it
    width_only = {"prompt": "x", "subject_reference_images": [URL], "width": 512, "height": None}
    png_with_gif_bytes = image("data:image/png;base64," + GIF_B64)
    assert GIF_B64.startswith("R0lGOD")
    (answers, _) = _ajv(ajv_node, [width_only, png_with_gif_bytes])
    assert answers[0] == "/height must NOT be valid"
    assert str(answers[1]).startswith("/subject_reference_images/0 must match pattern")
    for body in (width_only, png_with_gif_bytes):
        assert not _model_accepts(body)


def test_ajv_and_the_model_agree_at_the_10_mb_boundary(ajv_node: str) -> None:
    # The largest data URL whose image is under 10 MB, and one base64 quantum more: ajv must
    # answer (not throw on a megabytes-long pattern match) and agree with the model.
    limit = api_models.DATA_URL_MAX_CHARS["png"]
    head = "data:image/png;base64,iVBORw0KGgo"
    largest = head + "A" * (limit - len(head) - 1) + "="
    assert len(largest) == limit
    too_big = largest[:-1] + "AAAA="
    bodies = [image(largest), image(too_big)]
    (answers, _) = _ajv(ajv_node, bodies)
    assert answers[0] is True
    assert answers[1] is not True
    assert [_model_accepts(body) for body in bodies] == [True, False]


def test_schema_cannot_tell_an_integer_from_a_whole_float() -> None:
    # JSON Schema's "integer" is any whole number, 2.0 and 2e0 included (and ajv never sees
    # the difference: JSON.parse makes both 2); the model takes JSON integers only, so
    # producers must write integers without a fraction or an exponent.
    body = {"prompt": "x", "subject_reference_images": [URL], "n": 2.0}
    assert list(Draft202012Validator(SCHEMA).iter_errors(body)) == []
    assert not _model_accepts(body)
    assert not _model_accepts(
        json.loads('{"prompt": "x", "subject_reference_images": ["' + URL + '"], "n": 2e0}')
    )


def test_visible_text_pattern_is_python_whitespace_plus_zero_width() -> None:
    visible = re.compile(api_models.VISIBLE_TEXT_PATTERN)
    invisible = {chr(c) for c in range(sys.maxunicode + 1) if not visible.search(chr(c))}
    expected = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    expected |= {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"}
    assert invisible == expected


def test_octets_regex_is_exact() -> None:
    for low, high in [(0, 255), (64, 127), (16, 31), (224, 239), (240, 255), (18, 19), (0, 0)]:
        pattern = re.compile(api_models._octets_regex(low, high))
        for n in range(256):
            assert bool(pattern.fullmatch(str(n))) == (low <= n <= high), (low, high, n)
            assert not pattern.fullmatch(f"0{n}")


def _model_accepts_url(url: str) -> bool:
    return api_models._https_problem(url) is None


def _schema_accepts_url(url: str) -> bool:
    return len(url) <= MAX_URL_CHARS and re.search(api_models.HTTPS_URL_PATTERN, url) is not None


def _ipv4_samples() -> list[str]:
    rng = random.Random(1234)
    networks = list(api_models.BLOCKED_IPV4_NETWORKS)
    networks += [ipaddress.IPv4Network(n) for n in ("8.8.8.0/24", "100.128.0.0/9", "1.0.0.0/8")]
    addresses = set()
    for network in networks:
        first, last = int(network.network_address), int(network.broadcast_address)
        for n in (first - 1, first, first + 1, last - 1, last, last + 1):
            if 0 <= n < 2**32:
                addresses.add(str(ipaddress.IPv4Address(n)))
    addresses |= {str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(3000)}
    return sorted(addresses)


def test_ipv4_literals_agree_with_the_model() -> None:
    for text in _ipv4_samples():
        address = ipaddress.IPv4Address(text)
        blocked = any(address in network for network in api_models.BLOCKED_IPV4_NETWORKS)
        url = f"https://{text}:8443/a.jpg"
        assert _model_accepts_url(url) is not blocked, text
        assert _schema_accepts_url(url) is not blocked, text
        if not address.is_global or address.is_multicast or address.is_reserved:
            assert blocked, f"{text}: ipaddress calls it non-public, the list does not"


def _ipv6_samples() -> list[str]:
    rng = random.Random(5678)
    prefixes = ["::", "::ffff:0:0", "64:ff9b::", "100::", "2000::", "2001::", "2001:1ff::"]
    prefixes += ["2001:200::", "2001:db8::", "2001:db9::", "2002::", "2003::", "2606:4700::"]
    prefixes += ["3ffe::", "3fff::", "3fff:fff::", "3fff:1000::", "4000::", "fc00::", "fe80::"]
    prefixes += ["fec0::", "ff00::", "1fff::"]
    texts = set()
    for prefix in prefixes:
        base = int(ipaddress.IPv6Address(prefix))
        for _ in range(40):
            address = ipaddress.IPv6Address(base | rng.getrandbits(rng.choice([0, 16, 64, 96])))
            texts.add(address.compressed)
            texts.add(address.exploded)
            texts.add(address.exploded.upper())
            # a spelling with an IPv4 tail, and one with a leading-zero group
            packed = address.packed
            texts.add(f"{address.exploded[:29]}:{ipaddress.IPv4Address(packed[12:])}")
    for _ in range(400):  # random texts, mostly not addresses at all
        groups = [rng.choice(["", "0", "1", "2001", "db8", "ffff", "0:0", "1.2.3.4", "12345"])]
        groups += [rng.choice(["", "0", "a", "fe80", "2606", "01.2.3.4"]) for _ in range(7)]
        texts.add(":".join(groups[: rng.randint(2, 9)]))
    return sorted(texts)


def test_ipv6_literals_agree_with_the_model() -> None:
    for text in _ipv6_samples():
        url = f"https://[{text}]/a.jpg"
        assert _schema_accepts_url(url) == _model_accepts_url(url), text


def test_url_hosts_and_ports_agree_with_the_model() -> None:
    rng = random.Random(91)
    pieces = ["a", "Z", "0", "9", "-", ".", "_", "xn--", "com", "localhost", "1", "é", ":", "@"]
    pieces += [":0", ":1", ":443", ":65535", ":65536", ":080", "[", "]", "%", "example"]
    for _ in range(4000):
        host = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        for url in (f"https://{host}", f"https://{host}/p?q#f"):
            assert _schema_accepts_url(url) == _model_accepts_url(url), url


def test_data_urls_agree_with_the_model() -> None:
    rng = random.Random(7)
    alphabet = "AB9+/=iVBORw0KGgo"
    payloads = {PNG_B64, JPEG_B64, "iVBORw0KGgo=", "iVBORw0KGgp=", "iVBORw0KGgs=", "/9j/", "/9j"}
    payloads |= {
        prefix + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        for prefix in ("", "/9j/", "iVBORw0KGg", "iVBORw0KGgo")
        for _ in range(300)
    }
    for payload in sorted(payloads):
        for kind in ("png", "jpeg"):
            url = f"data:image/{kind};base64,{payload}"
            try:
                api_models.check_reference_image(url)
                model = True
            except ValueError:
                model = False
            schema = re.search(api_models.DATA_URL_PATTERNS[kind], url) is not None
            assert schema == model, url


def test_data_url_max_chars_is_the_10_mb_boundary() -> None:
    for kind, limit in api_models.DATA_URL_MAX_CHARS.items():
        payload_chars = limit - len(f"data:image/{kind};base64,")
        assert payload_chars % 4 == 0
        assert payload_chars // 4 * 3 < api_models.MAX_IMAGE_BYTES
        assert (payload_chars // 4 + 1) * 3 - 2 >= api_models.MAX_IMAGE_BYTES
