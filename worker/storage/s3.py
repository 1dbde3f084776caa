"""The S3-compatible result store: objects in a bucket (AWS S3, MinIO, R2, ...), read by
other hosts through presigned GET URLs.

Credentials are never passed in: obstore reads them the way the AWS SDKs do
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, or a role).
Errors are reduced to the exception's class and a few tokens picked out of obstore's text
(HTTP status, S3 error code, transport failure kind): that text quotes URLs and response
bodies, which may name the access key or carry a signature.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Final, TypeVar

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    InvalidPathError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
    UnknownConfigurationKeyError,
)
from obstore.store import S3Store as _ObjectStore

from .base import StorageError

if TYPE_CHECKING:
    from obstore import BytesStream
    from obstore.store import ClientConfig, RetryConfig, S3Config

    from worker.config import Settings

T = TypeVar("T")

#: Chunks of :meth:`S3Store.open`: small enough for an HTTP response, few enough calls.
CHUNK: Final = 256 * 1024
#: What S3 accepts as the lifetime of a SigV4 presigned URL.
MAX_URL_TTL: Final = timedelta(days=7)
#: obstore retries 5xx and connection errors itself; kept short because a failed step is
#: retried by its Celery task too, and a worker thread should not hang for obstore's
#: default three minutes.
RETRY: Final[RetryConfig] = {
    "max_retries": 3,
    "retry_timeout": timedelta(seconds=30),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2)},
}

_STATUS = re.compile(r"(?:non-2xx status code: |status: )(\d{3})\b")
_S3_CODE = re.compile(r"<Code>([A-Za-z]{1,64})</Code>")
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: ([A-Za-z]{1,32})")
#: The client's word that a request cannot even be built (e.g. http:// without allow_http).
_BUILDER = re.compile(r"kind: Builder\b")
#: Answers worth asking again for; any other 4xx is the server's final word.
_TRANSIENT_STATUS: Final = frozenset({408, 425, 429})
_PERMANENT_TYPES: Final = (
    FileNotFoundError,
    PermissionError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnknownConfigurationKeyError,
    InvalidPathError,
    NotSupportedError,
    AlreadyExistsError,
    PreconditionError,
    ValueError,
)
#: What obstore raises: its own errors, and built-in ones for not-found and bad input.
_OBSTORE_ERRORS: Final = (BaseError, OSError, ValueError)


class S3Store:
    """Copies as objects: ``s3://<bucket>/<prefix>/<key>``."""

    backend = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        url_ttl: timedelta | float = 900,
        connect_timeout: timedelta = timedelta(seconds=5),
        timeout: timedelta = timedelta(seconds=120),
    ) -> None:
        if not bucket:
            raise ValueError("an S3 store needs a bucket")
        ttl = url_ttl if isinstance(url_ttl, timedelta) else timedelta(seconds=url_ttl)
        if not timedelta(seconds=1) <= ttl <= MAX_URL_TTL:
            raise ValueError("the signed URL lifetime must be between 1 second and 7 days")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.url_ttl = ttl
        client: ClientConfig = {"connect_timeout": connect_timeout, "timeout": timeout}
        if self.endpoint_url and self.endpoint_url.lower().startswith("http://"):
            # A local MinIO or a test server; AWS and hosted services are https only.
            client["allow_http"] = True
        config: S3Config = {"region": region}
        if self.endpoint_url:
            config["endpoint"] = self.endpoint_url
        self._store = _call(
            f"configuring S3 bucket {bucket!r}",
            lambda: _ObjectStore(
                bucket,
                prefix=self.prefix or None,
                config=config,
                client_options=client,
                retry_config=RETRY,
            ),
            permanent=True,  # a configuration obstore refuses stays refused
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """The store the ``IMAGEGEN_S3_*`` settings describe."""
        if not settings.s3_bucket:
            raise StorageError("IMAGEGEN_S3_BUCKET is not set", permanent=True)
        return cls(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            url_ttl=settings.storage_url_ttl_seconds,
        )

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # One PUT, not a multipart upload: images are at most MAX_IMAGE_BYTES (far below
        # S3's 5 GB single-PUT limit), a PUT is atomic and retried whole, and an abandoned
        # multipart upload would linger (and be billed) in the bucket.
        _call(
            f"storing {key}",
            lambda: obstore.put(
                self._store,
                key,
                data,
                attributes={"Content-Type": content_type},
                mode="overwrite",
                use_multipart=False,
            ),
        )

    def open(self, key: str) -> Iterator[bytes]:
        # The GET is sent here, so a missing object fails now rather than at the first chunk.
        result = _call(f"reading {key}", lambda: obstore.get(self._store, key))
        return _chunks(key, result.stream(min_chunk_size=CHUNK))

    def signed_url(self, key: str) -> str:
        return _call(f"signing {key}", lambda: obstore.sign(self._store, "GET", key, self.url_ttl))

    def ping(self) -> None:
        # A listing, not a HEAD of some key: it tells a missing bucket (404 NoSuchBucket)
        # from a missing object. It starts after "z", which sorts after every key this
        # store writes (lowercase hex folders), so the answer is an empty page however full
        # the bucket is. Not "~": obstore sends it as %7E, and moto's signature check
        # (at least) then disagrees with obstore's and answers 403.
        def first_page() -> None:
            next(iter(obstore.list(self._store, offset="z", chunk_size=1)), None)

        _call(f"reaching S3 bucket {self.bucket!r}", first_page)


def _chunks(key: str, stream: BytesStream) -> Iterator[bytes]:
    while True:
        try:
            chunk = next(stream)
        except StopIteration:
            return
        except _OBSTORE_ERRORS as exc:
            raise _storage_error(f"reading {key}", exc) from None
        yield bytes(chunk)


def _call(what: str, action: Callable[[], T], *, permanent: bool | None = None) -> T:
    try:
        return action()
    except _OBSTORE_ERRORS as exc:
        # ``from None``: the original's text (URLs, response bodies) must not reach logs
        # through the exception chain either.
        raise _storage_error(what, exc, permanent) from None


def _storage_error(what: str, exc: BaseException, permanent: bool | None = None) -> StorageError:
    """A short StorageError for an obstore failure, made only of safe tokens."""
    text = str(exc)
    status_match = _STATUS.search(text)
    status = int(status_match.group(1)) if status_match else None
    code = _S3_CODE.search(text)
    kind = _HTTP_KIND.search(text)
    details = []
    if status is not None:
        details.append(f"HTTP {status}")
    if code:
        details.append(code.group(1))
    if kind and status is None:
        details.append(kind.group(1).lower())
    reason = type(exc).__name__ + (f" ({' '.join(details)})" if details else "")
    if permanent is None:
        permanent = _is_permanent(exc, status, text)
    return StorageError(f"{what}: {reason}", permanent=permanent)


def _is_permanent(exc: BaseException, status: int | None, text: str) -> bool:
    if isinstance(exc, _PERMANENT_TYPES):
        return True
    if status is not None:
        return 400 <= status < 500 and status not in _TRANSIENT_STATUS
    # No answer from the server: a refused or dropped connection or a timeout is worth
    # another try, a request the client cannot build (bad scheme or URL) is not.
    return bool(_BUILDER.search(text))
