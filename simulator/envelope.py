"""Modellix response envelope: success bodies, error bodies and the ApiError carrying them."""

import json
from typing import Any

MODEL_ID = "minimax-image-01-live-i2i"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ApiError(Exception):
    """An error answer: HTTP status, '<Category>: <detail>' message and a stats reason."""

    def __init__(
        self, status: int, category: str, detail: str, reason: str, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{category}: {detail}")
        self.status = status
        self.message = f"{category}: {detail}"
        self.reason = reason
        self.retry_after = retry_after


def invalid(detail: str) -> ApiError:
    """400 Invalid parameters."""
    return ApiError(400, "Invalid parameters", detail, "invalid")


def out_of_range(detail: str) -> ApiError:
    """400 Value out of range."""
    return ApiError(400, "Value out of range", detail, "invalid")


def bad_format(detail: str, reason: str = "invalid") -> ApiError:
    """400 Invalid format."""
    return ApiError(400, "Invalid format", detail, reason)


def not_found(detail: str) -> ApiError:
    """404 Resource not found."""
    return ApiError(404, "Resource not found", detail, "not_found")


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return _encode(data).encode("utf-8")


def success_body(data: dict[str, Any]) -> bytes:
    """The code-0 success envelope around data."""
    return dumps({"code": 0, "message": "success", "data": data})


def error_body(error: ApiError) -> bytes:
    """The error envelope: code mirrors the HTTP status, no data."""
    return dumps({"code": error.status, "message": error.message})
