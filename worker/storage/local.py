"""The local result store: files under one directory, served by the HTTP API.

The default. Fine for one host, or several sharing a volume; other hosts read the copies
through ``GET /v1/jobs/{id}/images/{index}``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from .base import StorageError

CHUNK: Final = 64 * 1024


class LocalStore:
    """Copies as files: ``<root>/<key>``."""

    backend = "local"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, key: str) -> Path:
        """The file of ``key``; StorageError if it would leave the root (a symlink inside)."""
        target = self.root / key
        if not target.resolve().is_relative_to(self.root):
            raise StorageError(f"{key}: the storage path leaves the storage directory")
        return target

    def put(self, key: str, data: bytes, content_type: str) -> Path:
        target = self.path(key)
        directory = target.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".part")
        try:
            # mkstemp makes it 0600: the API may run as another user on a shared volume.
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target

    def open(self, key: str) -> Iterator[bytes]:
        try:
            handle = self.path(key).open("rb")
        except FileNotFoundError:
            raise StorageError(f"{key}: no such copy", permanent=True) from None
        except OSError as exc:
            raise StorageError(f"{key}: {type(exc).__name__} reading the copy") from None
        return _chunks(handle)

    def signed_url(self, key: str) -> str | None:
        return None  # served by the API

    def ping(self) -> None:
        # Readable is enough: the API serves copies (its volume may be read-only); a worker
        # that cannot write finds out at its first copy, which is retried.
        nearest = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not os.access(nearest, os.R_OK | os.X_OK):
            raise StorageError("the storage directory is not readable")


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk
