"""What every result store does, and the copy of one upstream image into a store.

A store holds bytes under a key; the key of image ``index`` of a job is
``<h[:2]>/<h[2:]>/<index>.<format>`` with ``h`` the SHA-256 (hex) of the job id's UTF-8 bytes.
No part of a key comes from raw input: the job id only ever appears as its hash (so ``..``,
``/abs``, ``a/b`` versus ``a_b`` or any unicode id get their own folder), the file name is
the index and a format from the allow-list. The two-character fan-out keeps any one
directory (or listing prefix) small.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import httpx

from worker.upstream.client import IMAGE_FORMATS

MAX_IMAGE_BYTES: Final = 64 * 1024 * 1024
#: Index of a result image (``job_images.index`` is a SmallInteger; a job has at most 9).
MAX_INDEX: Final = 9999
#: The key's extension of each allowed format: constants, never the upstream's string.
_EXTENSIONS: Final = {fmt: fmt for fmt in IMAGE_FORMATS}
#: Media types recognised from an image's first bytes (never from the upstream's word).
_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class StorageError(Exception):
    """A result image could not be copied; ``permanent``: asking again will not help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class StoredImage:
    """One copied image: where it is and what it is."""

    key: str
    sha256: str
    size_bytes: int
    content_type: str
    path: Path | None = None  # local storage only


class ResultStore(Protocol):
    """A place for result images that the API (and other hosts) can read back."""

    backend: str

    def put(self, key: str, data: bytes, content_type: str) -> Path | None:
        """Store ``data`` under ``key`` atomically (replacing a copy a crashed attempt left);
        the local file's path, or None for object storage."""
        ...

    def open(self, key: str) -> Iterator[bytes]:
        """The stored bytes, in chunks; :class:`StorageError` when there is no such copy."""
        ...

    def signed_url(self, key: str) -> str | None:
        """A time-limited URL another host can GET the copy from; None when the API serves it."""
        ...

    def ping(self) -> None:
        """Raise :class:`StorageError` when the store cannot be reached."""
        ...


def job_prefix(job_id: str) -> str:
    """The folder of a job's copies: ``<sha256[:2]>/<sha256[2:]>``."""
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{digest[:2]}/{digest[2:]}"


def image_key(job_id: str, index: int, fmt: str) -> str:
    """The key of image ``index`` of a job; StorageError if index or format is not valid."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_INDEX:
        raise StorageError(f"not an image index: {index!r:.40}", permanent=True)
    extension = _EXTENSIONS.get(fmt.lower()) if isinstance(fmt, str) else None
    if extension is None:
        raise StorageError(f"image {index}: not an image format", permanent=True)
    return f"{job_prefix(job_id)}/{index}.{extension}"


def sniff(data: bytes) -> str | None:
    """The media type of an image's bytes, or None if they are no image we know."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def fetch(http: httpx.Client, url: str, index: int) -> bytes:
    """Download one upstream image, at most :data:`MAX_IMAGE_BYTES`."""
    try:
        scheme = httpx.URL(url).scheme
    except httpx.InvalidURL:
        scheme = ""
    if scheme not in ("http", "https"):
        raise StorageError(f"image {index}: not an http(s) URL", permanent=True)
    body = bytearray()
    try:
        with http.stream("GET", url) as response:
            status = response.status_code
            if status != 200:
                # Retried, whatever the status: a CDN may answer 403/404 for a moment after
                # the task ends, and the job's deadline bounds the retries.
                raise StorageError(f"HTTP {status} fetching image {index}")
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_IMAGE_BYTES:
                    raise StorageError(
                        f"image {index} is larger than {MAX_IMAGE_BYTES} bytes", permanent=True
                    )
    except (httpx.HTTPError, httpx.StreamError) as exc:
        raise StorageError(f"{type(exc).__name__} fetching image {index}") from None
    return bytes(body)


def copy_image(
    http: httpx.Client, store: ResultStore, job_id: str, index: int, url: str, fmt: str
) -> StoredImage:
    """Copy image ``index`` of a job from the upstream's ``url`` into ``store``.

    Downloaded again on a retry (the bytes are the same; a store's put replaces atomically),
    so a crash between the copy and the database leaves nothing half-known.
    """
    key = image_key(job_id, index, fmt)
    data = fetch(http, url, index)
    content_type = sniff(data)
    if content_type is None:
        raise StorageError(f"image {index}: the upstream's bytes are not an image", permanent=True)
    try:
        path = store.put(key, data, content_type)
    except StorageError as exc:
        # The store's trouble (credentials, a bucket, a full disk) is retried like any
        # other until the job's deadline: it is not this image's fault.
        raise StorageError(f"image {index}: {exc}") from None
    except OSError as exc:
        raise StorageError(f"image {index}: {type(exc).__name__} writing the copy") from None
    return StoredImage(
        key=key,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        content_type=content_type,
        path=path,
    )
