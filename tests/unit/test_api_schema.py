"""Unit tests of the producer contract package ``api_schema``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from api_schema import (
    ALL_QUEUES,
    ASPECT_RATIO_SIZES,
    GENERATE_TASK,
    REQUESTS_QUEUE,
    TERMINAL_STATUSES,
    AspectRatio,
    ErrorCode,
    GenerateKwargs,
    GenerationRequest,
    JobStatus,
    describe_validation_error,
    request_fingerprint,
)
from api_schema import jsonschema as api_jsonschema
from api_schema import models as api_models
from api_schema import producer as api_producer

MAX_IMAGE_BYTES = api_models.MAX_IMAGE_BYTES
MAX_METADATA_BYTES = api_models.MAX_METADATA_BYTES
MAX_METADATA_DEPTH = api_models.MAX_METADATA_DEPTH
MAX_REQUEST_BYTES = api_models.MAX_REQUEST_BYTES
MAX_URL_CHARS = api_models.MAX_URL_CHARS
IDEMPOTENCY_NAMESPACE = api_producer.IDEMPOTENCY_NAMESPACE
enqueue = api_producer.enqueue
job_id_for = api_producer.job_id_for

HTTPS_IMAGE = "https://images.example.test/ref/cat.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def image_bytes(fmt: str, size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def data_url(kind: str, data: bytes) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


PNG_BYTES = image_bytes("PNG")
JPEG_BYTES = image_bytes("JPEG")
PNG_URL = data_url("png", PNG_BYTES)
JPEG_URL = data_url("jpeg", JPEG_BYTES)


def big_png_data_url(decoded_size: int) -> str:
    """A data:image/png URL whose payload decodes to exactly ``decoded_size`` bytes.

    Built from the PNG signature plus zero bytes ("AAAA" is base64 of three zero bytes), so
    no 10 MB buffer is ever encoded.
    """
    head = PNG_MAGIC + b"\0"  # 9 bytes: a whole number of base64 quanta
    rest = decoded_size - len(head)
    quanta, tail = divmod(rest, 3)
    tail_b64 = {0: "", 1: "AA==", 2: "AAA="}[tail]
    payload = base64.b64encode(head).decode() + "AAAA" * quanta + tail_b64
    return "data:image/png;base64," + payload


def valid(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "prompt": "a cat in a hat",
        "subject_reference_images": [HTTPS_IMAGE],
    }
    request.update(overrides)
    return request


def error_text(data: Any) -> str:
    with pytest.raises(ValidationError) as info:
        GenerationRequest.model_validate(data)
    return describe_validation_error(info.value)


def nested_metadata(depth: int) -> dict[str, Any]:
    """Metadata nesting exactly ``depth`` objects and arrays, itself included; built without
    recursion, so any depth."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


def image_error(url: str) -> str:
    return error_text(valid(subject_reference_images=[url]))


# --------------------------------------------------------------------------------------
# invalid requests: each message names the offending field
# --------------------------------------------------------------------------------------

INVALID: list[Any] = [
    # prompt
    pytest.param(valid(prompt=""), "prompt", id="prompt-empty"),
    pytest.param(valid(prompt="x" * 1501), "prompt", id="prompt-1501-chars"),
    pytest.param(valid(prompt="猫" * 1501), "prompt", id="prompt-1501-cjk-chars"),
    pytest.param(valid(prompt=42), "prompt", id="prompt-int"),
    pytest.param(valid(prompt=["a"]), "prompt", id="prompt-list"),
    pytest.param(valid(prompt=None), "prompt", id="prompt-null"),
    pytest.param({"subject_reference_images": [HTTPS_IMAGE]}, "prompt", id="prompt-missing"),
    # subject_reference_images: the list
    pytest.param(valid(subject_reference_images=[]), "subject_reference_images", id="images-0"),
    pytest.param(
        valid(subject_reference_images=[HTTPS_IMAGE] * 11),
        "subject_reference_images",
        id="images-11",
    ),
    pytest.param(
        valid(subject_reference_images=HTTPS_IMAGE), "subject_reference_images", id="images-str"
    ),
    pytest.param({"prompt": "p"}, "subject_reference_images", id="images-missing"),
    # subject_reference_images: one bad item, named by index
    pytest.param(
        valid(subject_reference_images=[HTTPS_IMAGE] * 3 + ["http://images.example.test/x.png"]),
        "subject_reference_images.3",
        id="image-http",
    ),
    pytest.param(
        valid(subject_reference_images=["ftp://images.example.test/x.png"]),
        "subject_reference_images.0",
        id="image-ftp",
    ),
    pytest.param(
        valid(subject_reference_images=[HTTPS_IMAGE, "https://"]),
        "subject_reference_images.1",
        id="image-https-no-host",
    ),
    pytest.param(
        valid(subject_reference_images=["https:///path/x.png"]),
        "subject_reference_images.0",
        id="image-https-empty-host",
    ),
    pytest.param(
        valid(subject_reference_images=["https://images.example.test/a b.png"]),
        "subject_reference_images.0",
        id="image-https-space",
    ),
    pytest.param(
        valid(subject_reference_images=[data_url("gif", b"GIF89a\x01\x00\x01\x00")]),
        "subject_reference_images.0",
        id="image-data-gif",
    ),
    pytest.param(
        valid(subject_reference_images=["data:image/png;base64,@@not*base64@@"]),
        "subject_reference_images.0",
        id="image-data-not-base64",
    ),
    pytest.param(
        valid(subject_reference_images=["data:image/png," + "iVBORw0KGgo="]),
        "subject_reference_images.0",
        id="image-data-not-declared-base64",
    ),
    pytest.param(
        valid(subject_reference_images=[data_url("png", b"hello, not an image")]),
        "subject_reference_images.0",
        id="image-data-non-image-bytes",
    ),
    pytest.param(
        valid(subject_reference_images=[data_url("png", JPEG_BYTES)]),
        "subject_reference_images.0",
        id="image-data-png-label-jpeg-bytes",
    ),
    pytest.param(
        valid(subject_reference_images=[data_url("jpeg", PNG_BYTES)]),
        "subject_reference_images.0",
        id="image-data-jpeg-label-png-bytes",
    ),
    pytest.param(
        valid(subject_reference_images=["data:image/png;base64,"]),
        "subject_reference_images.0",
        id="image-data-empty",
    ),
    pytest.param(
        valid(subject_reference_images=[HTTPS_IMAGE, 7]),
        "subject_reference_images.1",
        id="image-not-string",
    ),
    # aspect_ratio / width / height
    pytest.param(valid(aspect_ratio="5:4"), "aspect_ratio", id="aspect-not-in-enum"),
    pytest.param(valid(aspect_ratio="1:1 "), "aspect_ratio", id="aspect-trailing-space"),
    pytest.param(valid(aspect_ratio=1.5), "aspect_ratio", id="aspect-float"),
    pytest.param(valid(aspect_ratio=["1:1"]), "aspect_ratio", id="aspect-list"),
    pytest.param(valid(width=1024), "width", id="width-without-height"),
    pytest.param(valid(height=1024), "height", id="height-without-width"),
    pytest.param(valid(width=511, height=512), "width", id="width-511"),
    pytest.param(valid(width=2049, height=512), "width", id="width-2049"),
    pytest.param(valid(width=1001, height=1000), "width", id="width-1001-not-multiple-of-8"),
    pytest.param(valid(width=1024, height=2056), "height", id="height-2056"),
    pytest.param(valid(width="1024", height=1024), "width", id="width-str"),
    # seed / n / prompt_optimizer
    pytest.param(valid(seed=-1), "seed", id="seed-negative"),
    pytest.param(valid(seed="5"), "seed", id="seed-str"),
    pytest.param(valid(seed=2**63), "seed", id="seed-too-big"),
    pytest.param(valid(seed=1.0), "seed", id="seed-float"),
    pytest.param(valid(n=0), "n", id="n-0"),
    pytest.param(valid(n=10), "n", id="n-10"),
    pytest.param(valid(n=True), "n", id="n-bool"),
    pytest.param(valid(n=2.5), "n", id="n-float"),
    pytest.param(valid(n="2"), "n", id="n-str"),
    pytest.param(valid(prompt_optimizer="yes"), "prompt_optimizer", id="optimizer-yes"),
    pytest.param(valid(prompt_optimizer=1), "prompt_optimizer", id="optimizer-int"),
    # envelope
    pytest.param(valid(priority=10), "priority", id="priority-10"),
    pytest.param(valid(priority=-1), "priority", id="priority-negative"),
    pytest.param(valid(priority=True), "priority", id="priority-bool"),
    pytest.param(valid(deadline_seconds=0), "deadline_seconds", id="deadline-0"),
    pytest.param(
        valid(deadline_seconds=7 * 24 * 3600 + 1), "deadline_seconds", id="deadline-over-week"
    ),
    pytest.param(valid(deadline_seconds="60"), "deadline_seconds", id="deadline-str"),
    pytest.param(valid(idempotency_key=""), "idempotency_key", id="idem-empty"),
    pytest.param(valid(idempotency_key="a" * 201), "idempotency_key", id="idem-201"),
    pytest.param(valid(idempotency_key="has space"), "idempotency_key", id="idem-space"),
    pytest.param(valid(idempotency_key="key\n"), "idempotency_key", id="idem-trailing-newline"),
    pytest.param(valid(idempotency_key="clé"), "idempotency_key", id="idem-non-ascii"),
    pytest.param(valid(idempotency_key=123), "idempotency_key", id="idem-int"),
    pytest.param(
        valid(metadata={"blob": "x" * MAX_METADATA_BYTES}), "metadata", id="metadata-too-large"
    ),
    pytest.param(valid(metadata=["not", "a", "dict"]), "metadata", id="metadata-list"),
    pytest.param(valid(metadata="{}"), "metadata", id="metadata-str"),
    pytest.param(valid(metadata={"when": {1, 2}}), "metadata", id="metadata-set-value"),
    pytest.param(valid(metadata={"x": float("nan")}), "metadata", id="metadata-nan"),
    # text PostgreSQL cannot store is refused at the producer, not only by the worker
    pytest.param(valid(prompt="a\x00b"), "prompt", id="prompt-nul"),
    pytest.param(valid(prompt="a \ud800"), "prompt", id="prompt-lone-surrogate"),
    pytest.param(valid(metadata={"k": ["ok", "a\x00"]}), "metadata", id="metadata-nested-nul"),
    pytest.param(valid(metadata={"\udc80": 1}), "metadata", id="metadata-key-surrogate"),
    pytest.param(
        valid(subject_reference_images=["https://example.com/a\x00.jpg"]),
        "subject_reference_images",
        id="image-url-nul",
    ),
    # prompts with nothing visible
    pytest.param(valid(prompt="   "), "prompt", id="prompt-spaces"),
    pytest.param(valid(prompt="\t\n\r\u3000\u00a0"), "prompt", id="prompt-whitespace"),
    pytest.param(valid(prompt="\u200b\u200c\u200d\u2060\ufeff"), "prompt", id="prompt-zero-width"),
    pytest.param(valid(prompt=" \u200b \ufeff "), "prompt", id="prompt-zero-width-and-spaces"),
    # metadata nested too deep, or not JSON
    pytest.param(
        valid(metadata=nested_metadata(MAX_METADATA_DEPTH + 1)), "metadata", id="metadata-9-deep"
    ),
    pytest.param(valid(metadata=nested_metadata(256)), "metadata", id="metadata-256-deep"),
    pytest.param(valid(metadata=nested_metadata(100_000)), "metadata", id="metadata-100k-deep"),
    pytest.param(valid(metadata={"a": {1: "x"}}), "metadata", id="metadata-nested-int-key"),
    # reference URLs: user info, non-public IP literals, bad hosts and ports, bad characters
    pytest.param(
        valid(subject_reference_images=["https://user:pass@images.example.test/x.png"]),
        "subject_reference_images.0",
        id="image-userinfo",
    ),
    pytest.param(
        valid(subject_reference_images=[HTTPS_IMAGE, "https://127.0.0.1/x.png"]),
        "subject_reference_images.1",
        id="image-loopback",
    ),
    pytest.param(
        valid(subject_reference_images=["https://10.1.2.3/x.png"]),
        "subject_reference_images.0",
        id="image-private-10",
    ),
    pytest.param(
        valid(subject_reference_images=["https://169.254.169.254/latest/meta-data/"]),
        "subject_reference_images.0",
        id="image-link-local-metadata-service",
    ),
    pytest.param(
        valid(subject_reference_images=["https://[::1]/x.png"]),
        "subject_reference_images.0",
        id="image-ipv6-loopback",
    ),
    pytest.param(
        valid(subject_reference_images=["https://[::ffff:127.0.0.1]/x.png"]),
        "subject_reference_images.0",
        id="image-ipv4-mapped-loopback",
    ),
    pytest.param(
        valid(subject_reference_images=["https://0.0.0.0/x.png"]),
        "subject_reference_images.0",
        id="image-unspecified",
    ),
    pytest.param(
        valid(subject_reference_images=["https://images.example.test/a\x01.png"]),
        "subject_reference_images.0",
        id="image-control-char",
    ),
    pytest.param(
        valid(subject_reference_images=["https://images.example.test/a.png\n"]),
        "subject_reference_images.0",
        id="image-trailing-newline",
    ),
    pytest.param(
        valid(subject_reference_images=["https://a.example/" + "x" * (MAX_URL_CHARS - 17)]),
        "subject_reference_images.0",
        id="image-url-2049-chars",
    ),
    pytest.param(
        valid(subject_reference_images=["https://images..example.test/x.png"]),
        "subject_reference_images.0",
        id="image-empty-host-label",
    ),
    pytest.param(
        valid(subject_reference_images=["https://localhost/x.png"]),
        "subject_reference_images.0",
        id="image-localhost",
    ),
    pytest.param(
        valid(subject_reference_images=["https://images.example.test:70000/x.png"]),
        "subject_reference_images.0",
        id="image-port-out-of-range",
    ),
    # width with a null height is no pair
    pytest.param(valid(width=1024, height=None), "width", id="width-with-null-height"),
    # shape
    pytest.param(valid(steps=30), "steps", id="unknown-field"),
    pytest.param(valid(model="other"), "model", id="unknown-field-model"),
    pytest.param(["prompt", "x"], "request", id="request-list"),
    pytest.param("a cat", "request", id="request-str"),
    pytest.param(None, "request", id="request-none"),
]


@pytest.mark.parametrize(("data", "field_name"), INVALID)
def test_invalid_request_message_names_field(data: Any, field_name: str) -> None:
    message = error_text(data)
    assert field_name in message
    assert message.strip()


def test_invalid_item_located_exactly() -> None:
    message = error_text(
        valid(subject_reference_images=[HTTPS_IMAGE] * 3 + ["http://images.example.test/x.png"])
    )
    assert message.startswith("subject_reference_images.3: ")
    assert "https://" in message


def test_invalid_messages_are_readable() -> None:
    assert error_text(valid(steps=1)) == "steps: unknown field"
    assert error_text(valid(width=1024)).startswith("request: ")
    assert "width and height must be given together" in error_text(valid(width=1024))
    assert error_text(valid(prompt="")).startswith("prompt: ")
    msg = error_text(valid(aspect_ratio=5))
    assert msg.startswith("aspect_ratio: ")
    assert all(a.value in msg for a in AspectRatio)
    assert "Value error" not in error_text(valid(subject_reference_images=["ftp://x/y"]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            valid(prompt="\u200b \ufeff"),
            "prompt: must contain visible text, not only whitespace or zero-width characters",
            id="prompt-invisible",
        ),
        pytest.param(
            valid(metadata=nested_metadata(MAX_METADATA_DEPTH + 1)),
            f"metadata: must nest at most {MAX_METADATA_DEPTH} levels of objects and arrays",
            id="metadata-too-deep",
        ),
        pytest.param(
            valid(metadata={"a": [{2: 1}]}),
            "metadata: must be a JSON object: every key, however deep, must be a string",
            id="metadata-int-key",
        ),
    ],
)
def test_new_refusals_are_readable(data: dict[str, Any], message: str) -> None:
    assert error_text(data) == message


PUBLIC_ADDRESS = (
    "URL host must be a public address, not a private, loopback, link-local, unspecified, "
    "multicast or reserved one"
)
BAD_HOST = (
    "URL host must be a DNS name like images.example.com (letters, digits and hyphens, at "
    "least one dot, internationalised names as xn-- punycode) or a public IP address"
)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:pass@images.example.test/x.png", "user name or password"),
        ("https://user@images.example.test/x.png", "user name or password"),
        ("https://127.0.0.1/x.png", PUBLIC_ADDRESS),
        ("https://127.0.0.1:8443/x.png", PUBLIC_ADDRESS),
        ("https://10.0.0.1/x.png", PUBLIC_ADDRESS),
        ("https://10.255.255.255/x.png", PUBLIC_ADDRESS),
        ("https://172.16.5.4/x.png", PUBLIC_ADDRESS),
        ("https://192.168.0.1/x.png", PUBLIC_ADDRESS),
        ("https://169.254.169.254/latest/meta-data/", PUBLIC_ADDRESS),
        ("https://100.64.0.1/x.png", PUBLIC_ADDRESS),
        ("https://0.0.0.0/x.png", PUBLIC_ADDRESS),
        ("https://224.0.0.251/x.png", PUBLIC_ADDRESS),
        ("https://240.0.0.1/x.png", PUBLIC_ADDRESS),
        ("https://255.255.255.255/x.png", PUBLIC_ADDRESS),
        ("https://[::1]/x.png", PUBLIC_ADDRESS),
        ("https://[::]/x.png", PUBLIC_ADDRESS),
        ("https://[0:0:0:0:0:0:0:1]:443/x.png", PUBLIC_ADDRESS),
        ("https://[::ffff:127.0.0.1]/x.png", PUBLIC_ADDRESS),
        ("https://[::ffff:a00:1]/x.png", PUBLIC_ADDRESS),
        ("https://[::ffff:8.8.8.8]/x.png", PUBLIC_ADDRESS),
        ("https://[fe80::1]/x.png", PUBLIC_ADDRESS),
        ("https://[fd00::1]/x.png", PUBLIC_ADDRESS),
        ("https://[ff02::1]/x.png", PUBLIC_ADDRESS),
        ("https://[64:ff9b::7f00:1]/x.png", PUBLIC_ADDRESS),
        ("https://[2001:db8::1]/x.png", PUBLIC_ADDRESS),
        ("https://[2002:7f00:1::1]/x.png", PUBLIC_ADDRESS),
        ("https://[fe80::1%25eth0]/x.png", "not a valid IPv6 address"),
        ("https://[::1/x.png", "not a valid IPv6 address"),
        ("https://[12345::1]/x.png", "not a valid IPv6 address"),
        ("https://images.example.test/a\x00.png", "NUL"),
        ("https://images.example.test/a\x01.png", "control"),
        ("https://images.example.test/a\x7f.png", "control"),
        ("https://images.example.test/a\x9b.png", "control"),
        ("https://images.example.test/a\tb.png", "whitespace"),
        ("https://images.example.test/a b.png", "whitespace"),
        ("https://images.example.test/a\u2003b.png", "whitespace"),
        ("https://images.example.test/a\u200bb.png", "invisible"),
        ("https://images.example.test\\@evil.example/x.png", "backslash"),
        ("https://a.example/" + "x" * (MAX_URL_CHARS - 17), "at most 2048 characters"),
        ("https://", "must name a host"),
        ("https:///x.png", "must name a host"),
        ("https://:443/x.png", "must name a host"),
        ("https://images..example.test/x.png", BAD_HOST),
        ("https://.example.test/x.png", BAD_HOST),
        ("https://example.test./x.png", BAD_HOST),
        ("https://-images.example.test/x.png", BAD_HOST),
        ("https://images-.example.test/x.png", BAD_HOST),
        ("https://im_ages.example.test/x.png", BAD_HOST),
        ("https://" + "a" * 64 + ".example.test/x.png", BAD_HOST),
        ("https://" + "a." * 126 + "test/x.png", BAD_HOST),
        ("https://bücher.example/x.png", BAD_HOST),
        ("https://intranet/x.png", BAD_HOST),
        ("https://0x7f.0.0.1/x.png", BAD_HOST),
        ("https://localhost/x.png", "must not be localhost"),
        ("https://LocalHost./x.png", "must not be localhost"),
        ("https://cdn.localhost/x.png", "must not be localhost"),
        ("https://127.1/x.png", "not a valid IPv4 address"),
        ("https://2130706433/x.png", "not a valid IPv4 address"),
        ("https://010.0.0.1/x.png", "not a valid IPv4 address"),
        ("https://1.2.3.256/x.png", "not a valid IPv4 address"),
        ("https://images.example.test:0/x.png", "port must be a number from 1 to 65535"),
        ("https://images.example.test:65536/x.png", "port must be a number from 1 to 65535"),
        ("https://images.example.test:-1/x.png", "port must be a number from 1 to 65535"),
        ("https://images.example.test:/x.png", "port must be a number from 1 to 65535"),
        ("https://images.example.test:0443/x.png", "port must be a number from 1 to 65535"),
        ("https://images.example.test:http/x.png", "port must be a number from 1 to 65535"),
    ],
)
def test_https_reference_refusals(url: str, message: str) -> None:
    text = image_error(url)
    assert text.startswith("subject_reference_images.0: ")
    assert message in text


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("HTTPS://images.example.test/X.png", "https://images.example.test/X.png"),
        ("Https://Images.Example.TEST:8443/a?B=C#D", "https://Images.Example.TEST:8443/a?B=C#D"),
        ("hTTpS://8.8.8.8/x.png", "https://8.8.8.8/x.png"),
        ("https://1.1.1.1:443/x.png", "https://1.1.1.1:443/x.png"),
        ("https://[2606:4700:4700::1111]/x.png", "https://[2606:4700:4700::1111]/x.png"),
        ("https://[2001:4860:4860::8888]:8443/x.png", "https://[2001:4860:4860::8888]:8443/x.png"),
        ("https://xn--bcher-kva.example/x.png", "https://xn--bcher-kva.example/x.png"),
        ("https://images.example.test/caf\u00e9/\U0001f600.png", None),
        ("https://images.example.test:65535", None),
        ("https://images.example.test?x=1", None),
        ("https://a.example/" + "x" * (MAX_URL_CHARS - 18), None),
        (PNG_URL.replace("data:image/png;base64,", "DATA:IMAGE/PNG;BASE64,"), PNG_URL),
        (JPEG_URL.replace("data:image/jpeg;base64,", "Data:Image/JPEG;Base64,"), JPEG_URL),
        (PNG_URL.replace("data:image/png;base64,", "data:image/PNG;base64,"), PNG_URL),
    ],
)
def test_reference_case_variants_and_public_ips_accepted(url: str, normalized: str | None) -> None:
    request = GenerationRequest.model_validate(valid(subject_reference_images=[url]))
    assert request.subject_reference_images == [normalized or url]
    # normalizing is idempotent, and what is sent validates to the same request
    again = GenerationRequest.model_validate(request.model_dump(mode="json"))
    assert again == request


def test_url_length_boundary() -> None:
    at_limit = "https://a.example/" + "x" * (MAX_URL_CHARS - 18)
    assert len(at_limit) == MAX_URL_CHARS
    GenerationRequest.model_validate(valid(subject_reference_images=[at_limit]))
    assert "2048" in image_error(at_limit + "x")


def test_data_url_with_excess_padding_refused() -> None:
    assert "base64" in image_error("data:image/jpeg;base64,/9j/=")


def test_describe_limits_to_five_and_counts_the_rest() -> None:
    message = error_text(
        {
            "prompt": "",
            "subject_reference_images": [],
            "n": 0,
            "seed": -1,
            "priority": 99,
            "deadline_seconds": 0,
            "steps": 1,
        }
    )
    parts = message.split("; ")
    assert len(parts) == 6
    assert parts[-1] == "and 2 more"


def test_describe_custom_limit() -> None:
    with pytest.raises(ValidationError) as info:
        GenerationRequest.model_validate({"prompt": "", "subject_reference_images": [], "n": 0})
    assert describe_validation_error(info.value, limit=1).endswith("; and 2 more")


def test_image_data_url_over_10_mb_rejected() -> None:
    url = big_png_data_url(MAX_IMAGE_BYTES)  # exactly 10 MiB decoded: not "under"
    message = error_text(valid(subject_reference_images=[HTTPS_IMAGE, url]))
    assert message.startswith("subject_reference_images.1: ")
    assert "10 MB" in message


def test_image_data_url_far_over_10_mb_rejected_before_decoding() -> None:
    url = big_png_data_url(MAX_IMAGE_BYTES + 3 * 1000)
    message = error_text(valid(subject_reference_images=[url]))
    assert message.startswith("subject_reference_images.0: ")
    assert "10 MB" in message


def test_image_data_url_just_under_10_mb_accepted() -> None:
    url = big_png_data_url(MAX_IMAGE_BYTES - 1)
    request = GenerationRequest.model_validate(valid(subject_reference_images=[url]))
    assert request.subject_reference_images == [url]


def test_metadata_depth_boundary() -> None:
    deepest = nested_metadata(MAX_METADATA_DEPTH)
    assert GenerationRequest.model_validate(valid(metadata=deepest)).metadata == deepest
    objects: dict[str, Any] = {"k": "v"}
    for _ in range(MAX_METADATA_DEPTH - 1):
        objects = {"k": objects}
    GenerationRequest.model_validate(valid(metadata=objects))
    assert "levels" in error_text(valid(metadata={"k": objects}))
    assert "levels" in error_text(valid(metadata=nested_metadata(MAX_METADATA_DEPTH + 1)))


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_metadata_nested_far_too_deep_is_a_clean_validation_error(depth: int) -> None:
    limit = sys.getrecursionlimit()
    with pytest.raises(ValidationError) as info:
        GenerationRequest.model_validate(valid(metadata=nested_metadata(depth)))
    assert describe_validation_error(info.value) == (
        f"metadata: must nest at most {MAX_METADATA_DEPTH} levels of objects and arrays"
    )
    assert sys.getrecursionlimit() == limit


def test_metadata_cycle_and_shared_blowup_refused_quickly() -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    assert "levels" in error_text(valid(metadata=cycle))
    shared: Any = [1]
    for _ in range(MAX_METADATA_DEPTH - 2):
        shared = [shared] * 1000  # 10**18 values if walked naively
    assert error_text(valid(metadata={"a": shared})) == (
        f"metadata: must be at most {MAX_METADATA_BYTES} bytes as JSON"
    )


def test_metadata_from_json_nested_too_deep_is_a_validation_error() -> None:
    text = json.dumps(valid())[:-1] + ', "metadata": {"a": ' + "[" * 5000 + "]" * 5000 + "}}"
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate_json(text)


def test_metadata_size_boundary() -> None:
    # {"k":"..."} encodes to 8 bytes plus the value
    at_limit = {"k": "x" * (MAX_METADATA_BYTES - 8)}
    assert len(json.dumps(at_limit, separators=(",", ":")).encode()) == MAX_METADATA_BYTES
    assert GenerationRequest.model_validate(valid(metadata=at_limit)).metadata == at_limit
    over = {"k": "x" * (MAX_METADATA_BYTES - 7)}
    assert "metadata" in error_text(valid(metadata=over))


# --------------------------------------------------------------------------------------
# valid requests
# --------------------------------------------------------------------------------------


def test_pillow_images_are_real() -> None:
    assert PNG_BYTES.startswith(PNG_MAGIC)
    assert JPEG_BYTES.startswith(JPEG_MAGIC)


@pytest.mark.parametrize(
    "images",
    [
        pytest.param([HTTPS_IMAGE], id="https"),
        pytest.param(
            ["https://images.example.test:8443/a/b.jpg?sig=abc&x=1"], id="https-port-query"
        ),
        pytest.param([PNG_URL], id="png-data-url"),
        pytest.param([JPEG_URL], id="jpeg-data-url"),
        pytest.param([HTTPS_IMAGE, PNG_URL, JPEG_URL], id="mixed"),
        pytest.param([HTTPS_IMAGE] * 10, id="ten"),
    ],
)
def test_valid_images(images: list[str]) -> None:
    request = GenerationRequest.model_validate(valid(subject_reference_images=images))
    assert list(request.subject_reference_images) == images


def test_valid_full_request_and_defaults() -> None:
    minimal = GenerationRequest.model_validate(valid())
    assert minimal.n == 1
    assert minimal.prompt_optimizer is False
    assert minimal.priority == 5
    assert minimal.aspect_ratio is None
    assert minimal.width is None
    assert minimal.height is None
    assert minimal.seed is None
    assert minimal.deadline_seconds is None
    assert minimal.idempotency_key is None
    assert minimal.metadata is None

    full = GenerationRequest.model_validate(
        valid(
            prompt="猫" * 1500,
            subject_reference_images=[PNG_URL],
            aspect_ratio="21:9",
            width=2048,
            height=512,
            seed=0,
            n=9,
            prompt_optimizer=True,
            idempotency_key="order-42/item-7",
            metadata={"order": 42, "tags": ["a", "b"], "nested": {"ok": True}},
            priority=0,
            deadline_seconds=7 * 24 * 3600,
        )
    )
    assert full.aspect_ratio is AspectRatio.R21_9
    assert full.n == 9
    assert full.seed == 0


@pytest.mark.parametrize(
    "prompt", ["x", " x ", "\u200bx\u200b", "\U0001f600", "\u3000猫", "a\u200d\u2060\ufeff"]
)
def test_prompt_with_some_visible_text_accepted(prompt: str) -> None:
    assert GenerationRequest.model_validate(valid(prompt=prompt)).prompt == prompt


def _request_of_json_size(size: int) -> dict[str, Any]:
    """A valid-looking request whose compact JSON is exactly ``size`` bytes: a data URL at
    the 10 MB limit, a second one and the prompt padded to fit."""
    biggest = big_png_data_url(MAX_IMAGE_BYTES - 1)
    probe = GenerationRequest.model_validate(
        valid(prompt="p", subject_reference_images=[biggest, big_png_data_url(9)])
    )
    quanta, rest = divmod(size - probe.json_size(), 4)
    return valid(
        prompt="p" * (1 + rest),
        subject_reference_images=[biggest, big_png_data_url(9 + 3 * quanta)],
    )


def test_request_size_boundary() -> None:
    at_limit = GenerationRequest.model_validate(_request_of_json_size(MAX_REQUEST_BYTES))
    assert at_limit.json_size() == MAX_REQUEST_BYTES
    assert len(at_limit.model_dump_json(exclude_none=True).encode()) == MAX_REQUEST_BYTES
    message = error_text(_request_of_json_size(MAX_REQUEST_BYTES + 1))
    assert message == (
        f"request: must be at most {MAX_REQUEST_BYTES} bytes (16 MiB) as JSON: send large "
        "reference images as https:// URLs, not data: URLs"
    )


def test_request_far_over_the_size_cap_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("decoded a data URL of a request already known to be too big")

    monkeypatch.setattr(base64, "b64decode", no_decoding)
    url = big_png_data_url(MAX_IMAGE_BYTES - 1)
    message = error_text(valid(subject_reference_images=[url] * 2))
    assert message.startswith(f"request: must be at most {MAX_REQUEST_BYTES} bytes")


@pytest.mark.parametrize(
    "request_data",
    [
        valid(),
        valid(
            prompt='"quoted" \\ back\tslash \u2028 猫 \U0001f600',
            subject_reference_images=[
                HTTPS_IMAGE,
                PNG_URL,
                'https://images.example.test/a"b/caf\u00e9',
                "HTTPS://images.example.test/x",
            ],
            aspect_ratio="4:3",
            seed=2**63 - 1,
            idempotency_key="k-1",
            metadata={"é": [1.5, None, True, {"x": "\u2028"}], "n": 10**30},
            deadline_seconds=60,
        ),
    ],
)
def test_json_size_is_the_compact_json_length(request_data: dict[str, Any]) -> None:
    request = GenerationRequest.model_validate(request_data)
    assert request.json_size() == len(request.model_dump_json(exclude_none=True).encode())


def test_valid_request_from_json() -> None:
    text = json.dumps(valid(aspect_ratio="9:16", seed=7, metadata={"a": 1}))
    request = GenerationRequest.model_validate_json(text)
    assert request.aspect_ratio is AspectRatio.R9_16
    assert request.metadata == {"a": 1}


def test_request_is_frozen() -> None:
    request = GenerationRequest.model_validate(valid())
    with pytest.raises(ValidationError):
        request.prompt = "changed"  # type: ignore[misc]


def test_upstream_payload_excludes_envelope_and_none() -> None:
    request = GenerationRequest.model_validate(
        valid(
            subject_reference_images=[HTTPS_IMAGE, JPEG_URL],
            seed=11,
            idempotency_key="k-1",
            metadata={"m": 1},
            priority=9,
            deadline_seconds=60,
        )
    )
    payload = request.upstream_payload()
    assert payload == {
        "prompt": "a cat in a hat",
        "subject_reference_images": [HTTPS_IMAGE, JPEG_URL],
        "seed": 11,
        "n": 1,
        "prompt_optimizer": False,
    }
    json.dumps(payload)  # the upstream receives it as JSON


def test_upstream_payload_drops_width_height_when_aspect_ratio_set() -> None:
    request = GenerationRequest.model_validate(valid(aspect_ratio="16:9", width=512, height=512))
    payload = request.upstream_payload()
    assert payload["aspect_ratio"] == "16:9"
    assert "width" not in payload
    assert "height" not in payload
    assert request.image_size() == (1280, 720)


def test_upstream_payload_keeps_width_height_without_aspect_ratio() -> None:
    request = GenerationRequest.model_validate(valid(width=768, height=1344, n=3))
    payload = request.upstream_payload()
    assert payload["width"] == 768
    assert payload["height"] == 1344
    assert payload["n"] == 3
    assert "aspect_ratio" not in payload
    assert "seed" not in payload


EXPECTED_SIZES = {
    "1:1": (1024, 1024),
    "16:9": (1280, 720),
    "4:3": (1152, 864),
    "3:2": (1248, 832),
    "2:3": (832, 1248),
    "3:4": (864, 1152),
    "9:16": (720, 1280),
    "21:9": (1344, 576),
}


@pytest.mark.parametrize(("ratio", "size"), EXPECTED_SIZES.items(), ids=list(EXPECTED_SIZES))
def test_image_size_per_aspect_ratio(ratio: str, size: tuple[int, int]) -> None:
    request = GenerationRequest.model_validate(valid(aspect_ratio=ratio))
    assert request.image_size() == size
    assert ASPECT_RATIO_SIZES[AspectRatio(ratio)] == size


def test_aspect_ratio_enum_matches_contract() -> None:
    assert {a.value for a in AspectRatio} == set(EXPECTED_SIZES)
    assert set(ASPECT_RATIO_SIZES) == set(AspectRatio)


def test_image_size_from_width_height_and_default() -> None:
    assert GenerationRequest.model_validate(valid(width=512, height=2048)).image_size() == (
        512,
        2048,
    )
    assert GenerationRequest.model_validate(valid()).image_size() == (1024, 1024)


# --------------------------------------------------------------------------------------
# enums and names
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (JobStatus.QUEUED, False),
        (JobStatus.SUBMITTING, False),
        (JobStatus.PENDING, False),
        (JobStatus.PROCESSING, False),
        (JobStatus.SUCCEEDED, True),
        (JobStatus.FAILED, True),
        (JobStatus.CANCELLED, True),
    ],
    ids=lambda v: str(v),
)
def test_job_status_is_terminal(status: JobStatus, terminal: bool) -> None:
    assert status.is_terminal is terminal
    assert (status in TERMINAL_STATUSES) is terminal


def test_job_status_values() -> None:
    assert JobStatus("succeeded") is JobStatus.SUCCEEDED
    assert len(JobStatus) == 7


def test_error_codes_present() -> None:
    required = {
        "invalid_request",
        "upstream_rejected",
        "upstream_auth",
        "upstream_payment",
        "upstream_failed",
        "upstream_not_found",
        "submit_outcome_unknown",
        "deadline_exceeded",
        "cancelled",
    }
    assert required <= {code.value for code in ErrorCode}
    assert ErrorCode("upstream_auth") == "upstream_auth"


def test_queue_and_task_names() -> None:
    assert GENERATE_TASK == "imagegen.generate"
    assert REQUESTS_QUEUE == "imagegen.requests"
    assert REQUESTS_QUEUE in ALL_QUEUES
    assert len(set(ALL_QUEUES)) == len(ALL_QUEUES)


# --------------------------------------------------------------------------------------
# JSON Schema files
# --------------------------------------------------------------------------------------

REGENERATE = "run `uv run python -m api_schema.jsonschema` to regenerate"


@pytest.mark.parametrize("name", list(api_jsonschema.MODELS))
def test_checked_in_schema_matches_models(name: str) -> None:
    path = api_jsonschema.SCHEMA_DIR / name
    assert path.is_file(), f"{path} is missing; {REGENERATE}"
    expected = api_jsonschema.render(api_jsonschema.build()[name])
    assert path.read_text(encoding="utf-8") == expected, f"{path} is stale; {REGENERATE}"


def test_schema_dir_has_no_stray_files() -> None:
    on_disk = {p.name for p in api_jsonschema.SCHEMA_DIR.glob("*.json")}
    assert on_disk == set(api_jsonschema.MODELS), REGENERATE


def test_render_is_stable() -> None:
    schemas = api_jsonschema.build()
    for schema in schemas.values():
        text = api_jsonschema.render(schema)
        assert text.endswith("\n")
        assert json.loads(text) == schema
        assert api_jsonschema.render(json.loads(text)) == text


def test_write_into_temp_dir_matches_render(tmp_path: Any) -> None:
    written = api_jsonschema.write(tmp_path)
    assert {p.name for p in written} == set(api_jsonschema.MODELS)
    for path in written:
        assert path.read_text(encoding="utf-8") == api_jsonschema.render(
            api_jsonschema.build()[path.name]
        )


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in prop:
        options = [o for o in prop["anyOf"] if o.get("type") != "null"]
        assert len(options) == 1
        return options[0]
    return prop


def test_generation_request_schema_structure() -> None:
    path = api_jsonschema.SCHEMA_DIR / "generation_request.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"prompt", "subject_reference_images"}
    props = schema["properties"]
    assert set(props) == set(GenerationRequest.model_fields)

    assert props["prompt"]["type"] == "string"
    assert props["prompt"]["minLength"] == 1
    assert props["prompt"]["maxLength"] == 1500

    images = props["subject_reference_images"]
    assert images["type"] == "array"
    assert images["minItems"] == 1
    assert images["maxItems"] == 10
    assert images["items"]["type"] == "string"
    assert images["items"]["pattern"].startswith("^")
    assert "https://" in images["items"]["pattern"]

    aspect = _non_null(props["aspect_ratio"])
    if "$ref" in aspect:
        aspect = schema["$defs"][aspect["$ref"].rsplit("/", 1)[-1]]
    assert aspect["enum"] == list(EXPECTED_SIZES)

    for dim in ("width", "height"):
        d = _non_null(props[dim])
        assert (d["type"], d["minimum"], d["maximum"], d["multipleOf"]) == (
            "integer",
            512,
            2048,
            8,
        )
    n = _non_null(props["n"])
    assert (n["minimum"], n["maximum"], n["default"]) == (1, 9, 1)
    assert _non_null(props["seed"])["minimum"] == 0
    priority = _non_null(props["priority"])
    assert (priority["minimum"], priority["maximum"]) == (0, 9)
    assert _non_null(props["deadline_seconds"])["minimum"] == 1
    assert _non_null(props["prompt_optimizer"])["type"] == "boolean"
    assert _non_null(props["idempotency_key"])["maxLength"] == 200


def test_generate_kwargs_schema_wraps_request() -> None:
    path = api_jsonschema.SCHEMA_DIR / "generate_task_kwargs.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["required"] == ["request"]
    assert schema["additionalProperties"] is False
    ref = schema["properties"]["request"]["$ref"].rsplit("/", 1)[-1]
    inner = schema["$defs"][ref]
    assert inner["additionalProperties"] is False
    assert inner["properties"]["prompt"]["maxLength"] == 1500


# --------------------------------------------------------------------------------------
# producer
# --------------------------------------------------------------------------------------


@dataclass
class FakeApp:
    """Stands in for a Celery app; records send_task calls."""

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def send_task(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


def test_job_id_for_is_stable_with_idempotency_key() -> None:
    a = GenerationRequest.model_validate(valid(idempotency_key="order-1"))
    same = GenerationRequest.model_validate(
        {
            "subject_reference_images": [HTTPS_IMAGE.replace("https", "HTTPS")],
            "n": 1,
            "priority": 5,
            "idempotency_key": "order-1",
            "prompt": "a cat in a hat",
            "seed": None,
        }
    )
    b = GenerationRequest.model_validate(valid(idempotency_key="order-1", prompt="other"))
    c = GenerationRequest.model_validate(valid(idempotency_key="order-2"))
    assert job_id_for(a) == job_id_for(a) == job_id_for(same)
    # the same key for a different request: another id, an idempotency conflict for the worker
    assert job_id_for(a) != job_id_for(b)
    assert job_id_for(a) != job_id_for(c)
    expected = uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"order-1\n{request_fingerprint(a)}")
    assert job_id_for(a) == str(expected)
    assert uuid.UUID(job_id_for(a)).version == 5


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "a dog in a hat"},
        {"subject_reference_images": [PNG_URL]},
        {"n": 2},
        {"seed": 1},
        {"aspect_ratio": "1:1"},
        {"metadata": {"order": 1}},
        {"priority": 9},
        {"deadline_seconds": 60},
        {"prompt_optimizer": True},
    ],
    ids=lambda change: next(iter(change)),
)
def test_job_id_for_changes_with_any_field(change: dict[str, Any]) -> None:
    base = GenerationRequest.model_validate(valid(idempotency_key="order-1"))
    changed = GenerationRequest.model_validate(valid(idempotency_key="order-1", **change))
    assert request_fingerprint(changed) != request_fingerprint(base)
    assert job_id_for(changed) != job_id_for(base)


def test_request_fingerprint_is_sha256_of_canonical_json() -> None:
    request = GenerationRequest.model_validate(
        valid(metadata={"b": 1, "a": ["猫", 1.0]}, idempotency_key="k", aspect_ratio="16:9")
    )
    canonical = json.dumps(
        request.model_dump(mode="json", exclude_none=True),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert request_fingerprint(request) == hashlib.sha256(canonical.encode()).hexdigest()
    assert len(request_fingerprint(request)) == 64
    # what the worker sees (the request as sent, validated again) has the same fingerprint
    sent = json.loads(json.dumps({"request": request.model_dump(mode="json", exclude_none=True)}))
    assert request_fingerprint(GenerationRequest.model_validate(sent["request"])) == (
        request_fingerprint(request)
    )


def test_request_fingerprint_ignores_spelling() -> None:
    a = GenerationRequest.model_validate(
        valid(subject_reference_images=[PNG_URL], metadata={"x": 1, "y": [1, 2]})
    )
    b = GenerationRequest.model_validate_json(
        json.dumps(
            {
                "metadata": {"y": (1, 2), "x": 1},
                "subject_reference_images": [PNG_URL.replace("data:image/png", "DATA:image/PNG")],
                "prompt": "a cat in a hat",
                "n": 1,
                "width": None,
            }
        )
    )
    assert request_fingerprint(a) == request_fingerprint(b)


def test_job_id_for_is_random_without_key() -> None:
    request = GenerationRequest.model_validate(valid())
    ids = {job_id_for(request) for _ in range(20)}
    assert len(ids) == 20
    assert all(uuid.UUID(i).version == 4 for i in ids)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(valid(prompt=""), id="empty-prompt"),
        pytest.param(valid(subject_reference_images=["http://x/y.png"]), id="http-image"),
        pytest.param(valid(steps=3), id="unknown-field"),
        pytest.param({}, id="empty"),
        pytest.param(valid(prompt="\u200b \u200b"), id="invisible-prompt"),
        pytest.param(valid(subject_reference_images=["https://127.0.0.1/x.png"]), id="loopback"),
        pytest.param(valid(metadata=nested_metadata(100_000)), id="metadata-100k-deep"),
        pytest.param("a cat", id="str"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
        pytest.param(["prompt", "x"], id="list"),
        pytest.param([("prompt", "x"), ("subject_reference_images", [HTTPS_IMAGE])], id="pairs"),
    ],
)
def test_enqueue_invalid_raises_and_sends_nothing(bad: Any) -> None:
    app = FakeApp()
    with pytest.raises(ValidationError):
        enqueue(bad, app=app)  # type: ignore[arg-type]
    assert app.calls == []


def test_enqueue_invalid_without_app_still_validation_error() -> None:
    with pytest.raises(ValidationError):
        enqueue(valid(n=0))


def test_enqueue_needs_app_or_broker() -> None:
    with pytest.raises(ValueError, match="broker_url or app"):
        enqueue(valid())


def test_enqueue_valid_dict_sends_generate_task() -> None:
    app = FakeApp()
    data = valid(
        subject_reference_images=[HTTPS_IMAGE, PNG_URL],
        aspect_ratio="4:3",
        idempotency_key="order-77",
        metadata={"order": 77},
        priority=8,
    )
    job_id = enqueue(data, app=app)  # type: ignore[arg-type]

    fingerprint = request_fingerprint(GenerationRequest.model_validate(data))
    assert job_id == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"order-77\n{fingerprint}"))
    assert len(app.calls) == 1
    args, kwargs = app.calls[0]
    assert args == (GENERATE_TASK,)
    assert args == ("imagegen.generate",)
    assert set(kwargs) == {"kwargs", "task_id", "queue"}
    assert kwargs["task_id"] == job_id
    assert kwargs["queue"] == "imagegen.requests"
    assert set(kwargs["kwargs"]) == {"request"}
    sent = kwargs["kwargs"]["request"]

    # JSON-serialisable, round-trips to the same request, and matches the task-kwargs model
    text = json.dumps(kwargs["kwargs"])
    assert json.loads(text)["request"] == sent
    assert GenerationRequest.model_validate(sent) == GenerationRequest.model_validate(data)
    assert GenerateKwargs.model_validate_json(text).request.idempotency_key == "order-77"
    assert sent["aspect_ratio"] == "4:3"
    assert sent["priority"] == 8
    assert sent["metadata"] == {"order": 77}
    assert None not in sent.values()

    # the same call retried: the same job id; the same key for another request: another id
    assert enqueue(data, app=app) == job_id  # type: ignore[arg-type]
    assert enqueue({**data, "n": 2}, app=app) != job_id  # type: ignore[arg-type]


def test_enqueue_sends_normalized_urls() -> None:
    app = FakeApp()
    data = valid(subject_reference_images=["HTTPS://images.example.test/X.png"])
    enqueue(data, app=app)  # type: ignore[arg-type]
    sent = app.calls[0][1]["kwargs"]["request"]
    assert sent["subject_reference_images"] == ["https://images.example.test/X.png"]


def test_enqueue_model_instance_random_and_explicit_job_id() -> None:
    app = FakeApp()
    request = GenerationRequest.model_validate(valid())
    first = enqueue(request, app=app)  # type: ignore[arg-type]
    second = enqueue(request, app=app)  # type: ignore[arg-type]
    assert first != second
    assert uuid.UUID(first).version == 4
    explicit = enqueue(request, app=app, job_id="job-fixed")  # type: ignore[arg-type]
    assert explicit == "job-fixed"
    assert [c[1]["task_id"] for c in app.calls] == [first, second, "job-fixed"]
    assert all(json.dumps(c[1]["kwargs"]) for c in app.calls)
