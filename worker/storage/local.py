"""Copies result images out of the upstream before its URLs expire.

Layout: ``<root>/<h[:2]>/<h[2:]>/<index>.<format>`` where ``h`` is the SHA-256 (hex) of the
job id's UTF-8 bytes. No part of a path comes from raw input: the job id only ever reaches
the file system as its hash (so ``..``, ``/abs``, ``a/b`` versus ``a_b`` or any unicode id
get their own folder inside the root), the file name is the index and a format taken from
the allow-list. The two-character fan-out keeps any one directory small (256 of them); the
full path of each copy is recorded in ``job_images.stored_path``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Final

import httpx

from worker.upstream.client import IMAGE_FORMATS

MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024
#: Index of a result image (``job_images.index`` is a SmallInteger; a job has at most 9).
MAX_INDEX: Final = 9999
#: The file extension of each allowed format: constants, never the upstream's string.
_EXTENSIONS: Final = {fmt: fmt for fmt in IMAGE_FORMATS}


class StorageError(Exception):
    """A result image could not be copied."""


def job_dir(root: Path, job_id: str) -> Path:
    """The folder of a job's copies: ``root/<sha256[:2]>/<sha256[2:]>``, always inside root."""
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()
    return root / digest[:2] / digest[2:]


def image_path(root: Path, job_id: str, index: int, fmt: str) -> Path:
    """Where image ``index`` of a job is copied; StorageError if index or format is not valid."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_INDEX:
        raise StorageError(f"not an image index: {index!r:.40}")
    extension = _EXTENSIONS.get(fmt.lower()) if isinstance(fmt, str) else None
    if extension is None:
        raise StorageError(f"image {index}: not an image format")
    target = job_dir(root, job_id) / f"{index}.{extension}"
    # The parts are hex digits and constants; still, a symlink inside root must not lead out.
    if not target.resolve().is_relative_to(root.resolve()):
        raise StorageError(f"image {index}: the storage path leaves the storage directory")
    return target


def store_image(
    http: httpx.Client, root: Path, job_id: str, index: int, url: str, fmt: str
) -> Path:
    """Download ``url`` to :func:`image_path` atomically and return the path."""
    target = image_path(root, job_id, index, fmt)
    try:
        scheme = httpx.URL(url).scheme
    except httpx.InvalidURL:
        scheme = ""
    if scheme not in ("http", "https"):
        raise StorageError(f"image {index}: not an http(s) URL")
    if target.exists():
        return target  # a retried poll after a crash: already copied
    directory = target.parent
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
    except (httpx.HTTPError, httpx.StreamError) as exc:
        raise StorageError(f"{type(exc).__name__} fetching image {index}") from None
    finally:
        for leftover in directory.glob(f".{index}.*.part"):
            leftover.unlink(missing_ok=True)
    return target
