"""Submit-body parsing and validation with Modellix's error-message templates."""

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from simulator.envelope import bad_format, invalid, out_of_range
from simulator.images import ASPECT_RATIOS

MAX_PROMPT_CHARS = 1500
MAX_IMAGES = 10
MAX_IMAGE_BYTES = 10 * 1024 * 1024
_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,", re.IGNORECASE)
_ALLOWED_MIME = frozenset({"image/jpeg", "image/jpg", "image/png"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True, slots=True)
class SubmitParams:
    """A validated submit request, reduced to what the simulator needs."""

    prompt: str
    n: int
    width: int
    height: int
    seed: int | None
    prompt_optimizer: bool
    image_count: int
    reference: bytes | None
    reference_key: str


def parse_submit(body: bytes) -> SubmitParams:
    """Parse and validate a submit body; raise ApiError(400) on the first problem."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_format("invalid JSON format", reason="invalid_json") from None
    if not isinstance(payload, dict):
        raise bad_format("request body must be a JSON object", reason="invalid_json")
    prompt = _prompt(payload.get("prompt"))
    reference, reference_key, image_count = _images(payload.get("subject_reference_images"))
    width, height = _size(payload)
    seed = _optional_int(payload, "seed")
    if seed is not None and seed < 0:
        raise out_of_range(f"parameter 'seed' must be greater than or equal to 0, got {seed}")
    n = _optional_int(payload, "n")
    if n is None:
        n = 1
    elif not 1 <= n <= 9:
        raise out_of_range(f"parameter 'n' must be between 1 and 9, got {n}")
    optimizer = payload.get("prompt_optimizer")
    if optimizer is not None and not isinstance(optimizer, bool):
        raise invalid("parameter 'prompt_optimizer' must be a boolean")
    return SubmitParams(
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        seed=seed,
        prompt_optimizer=bool(optimizer),
        image_count=image_count,
        reference=reference,
        reference_key=reference_key,
    )


def _prompt(value: Any) -> str:
    if value is None:
        raise invalid("parameter 'prompt' is required")
    if not isinstance(value, str):
        raise invalid("parameter 'prompt' must be a string")
    if not 1 <= len(value) <= MAX_PROMPT_CHARS:
        raise out_of_range(
            f"parameter 'prompt' length must be between 1 and {MAX_PROMPT_CHARS}, got {len(value)}"
        )
    return value


def _images(value: Any) -> tuple[bytes | None, str, int]:
    name = "subject_reference_images"
    if value is None:
        raise invalid(f"parameter '{name}' is required")
    if not isinstance(value, list):
        raise invalid(f"parameter '{name}' must be an array of strings")
    if not 1 <= len(value) <= MAX_IMAGES:
        raise out_of_range(
            f"parameter '{name}' must contain between 1 and {MAX_IMAGES} items, got {len(value)}"
        )
    first: tuple[bytes | None, str] = (None, "")
    for index, item in enumerate(value):
        checked = _image(f"{name}[{index}]", item)
        if index == 0:
            first = checked
    return first[0], first[1], len(value)


def _image(name: str, item: Any) -> tuple[bytes | None, str]:
    """Validate one reference; return (decoded bytes for a data URL, cache key)."""
    if not isinstance(item, str):
        raise invalid(f"parameter '{name}' must be a string")
    match = _DATA_URL.match(item)
    if match is None:
        if item[:5].lower() == "data:":
            raise invalid(f"parameter '{name}' must be a data URL of a JPG/JPEG/PNG image")
        parts = urlsplit(item)
        if parts.scheme.lower() != "https" or not parts.hostname:
            raise invalid(f"parameter '{name}' must be an https URL or a base64 data URL")
        return None, "url:" + item
    if match.group(1).lower() not in _ALLOWED_MIME:
        raise invalid(f"parameter '{name}' must be a JPG/JPEG/PNG image, got {match.group(1)}")
    encoded = item[match.end() :]
    # The decoded size follows from the text length, so oversized images are never decoded.
    padding = 2 if encoded.endswith("==") else 1 if encoded.endswith("=") else 0
    size = len(encoded) * 3 // 4 - padding
    if size >= MAX_IMAGE_BYTES:
        raise out_of_range(f"parameter '{name}' must be under 10MB, got {size} bytes")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad_format(f"parameter '{name}' is not valid base64") from None
    if not (raw.startswith(_PNG_MAGIC) or raw.startswith(_JPEG_MAGIC)):
        raise invalid(f"parameter '{name}' is not a valid JPG/JPEG/PNG image")
    return raw, "data:" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def _size(payload: dict[str, Any]) -> tuple[int, int]:
    ratio = payload.get("aspect_ratio")
    if ratio is not None:
        if not isinstance(ratio, str) or ratio not in ASPECT_RATIOS:
            shown = ratio if isinstance(ratio, str) else json.dumps(ratio)
            raise invalid(
                f"parameter 'aspect_ratio' must be one of {', '.join(ASPECT_RATIOS)}, got '{shown}'"
            )
        # aspect_ratio wins: width/height are ignored entirely, as the docs say.
        return ASPECT_RATIOS[ratio]
    width = _optional_int(payload, "width")
    height = _optional_int(payload, "height")
    if width is None and height is None:
        return ASPECT_RATIOS["1:1"]
    if width is None:
        raise invalid("parameter 'width' is required when 'height' is given")
    if height is None:
        raise invalid("parameter 'height' is required when 'width' is given")
    for name, value in (("width", width), ("height", height)):
        if not 512 <= value <= 2048:
            raise out_of_range(f"parameter '{name}' must be between 512 and 2048, got {value}")
        if value % 8:
            raise invalid(f"parameter '{name}' must be divisible by 8, got {value}")
    return width, height


def _optional_int(payload: dict[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"parameter '{name}' must be an integer")
    return value
