"""Copies result images out of the upstream before its URLs expire."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Final

import httpx

_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")
MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024


class StorageError(Exception):
    """A result image could not be copied."""


def store_image(
    http: httpx.Client, root: Path, job_id: str, index: int, url: str, fmt: str
) -> Path:
    """Download ``url`` to ``root/<job_id>/<index>.<fmt>`` atomically and return the path."""
    directory = root / _SAFE.sub("_", job_id)
    target = directory / f"{index}.{_SAFE.sub('', fmt) or 'png'}"
    if target.exists():
        return target  # a retried poll after a crash: already copied
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise StorageError(f"HTTP {response.status_code} fetching image {index}")
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{index}.", suffix=".part")
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise StorageError(f"image {index} is larger than {MAX_IMAGE_BYTES} bytes")
                    out.write(chunk)
            os.replace(tmp, target)
    except httpx.HTTPError as exc:
        raise StorageError(f"{type(exc).__name__} fetching image {index}") from None
    finally:
        for leftover in directory.glob(f".{index}.*.part"):
            leftover.unlink(missing_ok=True)
    return target
