"""Pydantic models of the producer contract: the request a producer sends, the job it gets back."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .enums import ErrorCode, JobStatus

#: The upstream's size limit for one reference image, decoded.
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
#: Largest JSON encoding of ``metadata`` a job carries around.
MAX_METADATA_BYTES: Final = 4096
MAX_DEADLINE_SECONDS: Final = 7 * 24 * 3600

_DATA_URL = re.compile(r"data:image/(?P<kind>jpeg|png);base64,", re.ASCII)
_MAGIC: Final = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
# base64 of MAX_IMAGE_BYTES, rounded up, so oversized payloads are refused before decoding.
_MAX_B64_CHARS: Final = (MAX_IMAGE_BYTES + 2) // 3 * 4
_IMAGE_PATTERN: Final = r"^(https://|data:image/(jpeg|png);base64,)"
#: Text PostgreSQL can store: no NUL, no unpaired UTF-16 surrogate (a lone JSON \\udXXX).
#: Written for both readers: Python's re sees code points, ECMAScript's UTF-16 code units.
TEXT_PATTERN: Final = r"^(?:[^\u0000\ud800-\udfff]|[\ud800-\udbff][\udc00-\udfff])*$"


def storable_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as PostgreSQL text, or None when it can."""
    if "\x00" in text:
        return "must not contain a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "must not contain an unpaired surrogate"
    return None


def check_storable(value: str) -> str:
    """Return ``value`` if PostgreSQL can store it as text."""
    problem = storable_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def unstorable_at(value: object, path: str = "") -> str | None:
    """Where in a JSON-like ``value`` (keys included, however deep) is text PostgreSQL
    cannot store, as a dotted path under ``path``; None when there is none."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str) and storable_problem(item) is not None:
            return where
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and storable_problem(key) is not None:
                    return f"{where}.{key!a}" if where else ascii(key)
                stack.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}.{i}") for i, child in enumerate(item))
    return None


class AspectRatio(StrEnum):
    """Aspect ratios the upstream accepts."""

    R1_1 = "1:1"
    R16_9 = "16:9"
    R4_3 = "4:3"
    R3_2 = "3:2"
    R2_3 = "2:3"
    R3_4 = "3:4"
    R9_16 = "9:16"
    R21_9 = "21:9"


#: Pixel size of each aspect ratio, as the upstream renders it.
ASPECT_RATIO_SIZES: Final[dict[AspectRatio, tuple[int, int]]] = {
    AspectRatio.R1_1: (1024, 1024),
    AspectRatio.R16_9: (1280, 720),
    AspectRatio.R4_3: (1152, 864),
    AspectRatio.R3_2: (1248, 832),
    AspectRatio.R2_3: (832, 1248),
    AspectRatio.R3_4: (864, 1152),
    AspectRatio.R9_16: (720, 1280),
    AspectRatio.R21_9: (1344, 576),
}


def check_reference_image(value: str) -> str:
    """Return ``value`` if it is an https URL or a real JPEG/PNG data URL under 10 MB."""
    check_storable(value)
    if value.startswith("https://"):
        parts = urlsplit(value)
        if not parts.hostname or any(c.isspace() for c in value):
            raise ValueError("must be a valid https:// URL")
        return value
    match = _DATA_URL.match(value)
    if match is None:
        raise ValueError(
            "must be an https:// URL or a data:image/jpeg;base64 / data:image/png;base64 URL"
        )
    payload = value[match.end() :]
    if len(payload) > _MAX_B64_CHARS:
        raise ValueError("image must be under 10 MB")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data URL payload is not valid base64") from None
    if len(data) >= MAX_IMAGE_BYTES:
        raise ValueError("image must be under 10 MB")
    kind = match.group("kind")
    if not data.startswith(_MAGIC[kind]):
        raise ValueError(f"data URL says image/{kind} but its bytes are not a {kind.upper()} image")
    return value


ReferenceImage = Annotated[
    StrictStr,
    AfterValidator(check_reference_image),
    Field(
        description="An https:// URL, or a data:image/jpeg|png;base64 URL (under 10 MB decoded).",
        json_schema_extra={"pattern": _IMAGE_PATTERN},
    ),
]
Dimension = Annotated[StrictInt, Field(ge=512, le=2048, multiple_of=8)]


class GenerationRequest(BaseModel):
    """One image-to-image generation, as a producer enqueues it.

    The upstream fields carry the upstream's own constraints; ``idempotency_key``,
    ``metadata``, ``priority`` and ``deadline_seconds`` are this service's envelope.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"dependentRequired": {"width": ["height"], "height": ["width"]}},
    )

    prompt: Annotated[
        StrictStr,
        AfterValidator(check_storable),
        Field(min_length=1, max_length=1500, json_schema_extra={"pattern": TEXT_PATTERN}),
    ]
    subject_reference_images: Annotated[list[ReferenceImage], Field(min_length=1, max_length=10)]
    aspect_ratio: AspectRatio | None = Field(
        default=None, description="Wins over width/height when both are given."
    )
    width: Dimension | None = Field(default=None, description="Only together with height.")
    height: Dimension | None = Field(default=None, description="Only together with width.")
    seed: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=9)] = 1
    prompt_optimizer: StrictBool = False

    idempotency_key: (
        Annotated[StrictStr, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")] | None
    ) = Field(
        default=None,
        description="A second request with the same key returns the first job; never a second "
        "upstream task.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="Small JSON object (<= 4 KiB encoded), returned with the job; no text in "
        "it may contain a NUL character or an unpaired surrogate.",
    )
    priority: Annotated[StrictInt, Field(ge=0, le=9)] = Field(
        default=5, description="0..9; higher is admitted first, then oldest first."
    )
    deadline_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_DEADLINE_SECONDS)] | None = Field(
        default=None,
        description="Seconds from acceptance after which the job stops and fails "
        "deadline_exceeded; the worker's default when unset.",
    )

    @field_validator("aspect_ratio", mode="before")
    @classmethod
    def _aspect_ratio_is_text(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be one of " + ", ".join(a.value for a in AspectRatio))
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError("must be a JSON object") from None
            where = unstorable_at(value)
            if where is not None:
                raise ValueError(
                    f"text at {where} must not contain a NUL character or an unpaired surrogate"
                )
            if len(encoded.encode()) > MAX_METADATA_BYTES:
                raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value

    @model_validator(mode="after")
    def _width_with_height(self) -> GenerationRequest:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be given together")
        return self

    def upstream_payload(self) -> dict[str, Any]:
        """The JSON body the upstream's submit endpoint receives."""
        body = self.model_dump(
            mode="json",
            exclude_none=True,
            exclude={"idempotency_key", "metadata", "priority", "deadline_seconds"},
        )
        if self.aspect_ratio is not None:
            # The upstream ignores width/height then; not sending them keeps the request honest.
            body.pop("width", None)
            body.pop("height", None)
        return body

    def image_size(self) -> tuple[int, int]:
        """Pixel size the upstream renders for this request."""
        if self.aspect_ratio is not None:
            return ASPECT_RATIO_SIZES[self.aspect_ratio]
        if self.width is not None and self.height is not None:
            return (self.width, self.height)
        return ASPECT_RATIO_SIZES[AspectRatio.R1_1]


class GenerateKwargs(BaseModel):
    """The kwargs of an ``imagegen.generate`` message."""

    model_config = ConfigDict(extra="forbid")

    request: GenerationRequest


class ImageView(BaseModel):
    """One generated image."""

    index: int
    url: str = Field(description="The upstream's URL; it expires at the job's result_expires_at.")
    width: int
    height: int
    format: str
    stored_path: str | None = Field(
        default=None, description="Where the worker copied the file, when storage is enabled."
    )


class JobView(BaseModel):
    """A job as producers, the CLI and operators see it."""

    id: str
    status: JobStatus
    priority: int
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime
    upstream_task_id: str | None = None
    images: list[ImageView] = Field(default_factory=list)
    billing_amount: Decimal | None = Field(default=None, description="What the upstream charged.")
    duration_ms: int | None = None
    result_expires_at: datetime | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """One line naming each bad field and what is wrong with it."""
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False)[:limit]:
        location = ".".join(str(p) for p in error["loc"]) or "request"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{location}: {message}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


__all__ = [
    "ASPECT_RATIO_SIZES",
    "MAX_IMAGE_BYTES",
    "AspectRatio",
    "ErrorCode",
    "GenerateKwargs",
    "GenerationRequest",
    "ImageView",
    "JobStatus",
    "JobView",
    "check_reference_image",
    "describe_validation_error",
]
