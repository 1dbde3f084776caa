"""Where result images are copied before the upstream's URLs expire: the local filesystem
(the default, served by the HTTP API) or S3-compatible object storage (signed URLs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    MAX_IMAGE_BYTES,
    ResultStore,
    StorageError,
    StoredImage,
    copy_image,
    image_key,
    job_prefix,
    sniff,
)
from .local import LocalStore

if TYPE_CHECKING:
    from worker.config import Settings


def open_store(settings: Settings) -> ResultStore | None:
    """The store the settings name; None when copying is off (upstream URLs only)."""
    if settings.storage_backend == "off":
        return None
    if settings.storage_backend == "s3":
        from .s3 import S3Store

        return S3Store.from_settings(settings)
    return LocalStore(settings.storage_dir)


__all__ = [
    "MAX_IMAGE_BYTES",
    "LocalStore",
    "ResultStore",
    "StorageError",
    "StoredImage",
    "copy_image",
    "image_key",
    "job_prefix",
    "open_store",
    "sniff",
]
