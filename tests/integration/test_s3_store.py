"""The S3 result store against a real S3-compatible server (moto's, over HTTP on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import pytest
from obstore.exceptions import GenericError, PermissionDeniedError

from tests.s3server import S3Server, live_s3_fixture, s3_server  # noqa: F401 - a fixture
from worker.config import Settings
from worker.storage import StorageError, image_key, open_store
from worker.storage.s3 import S3Store, _storage_error

pytestmark = pytest.mark.integration

PREFIX = "results"
TTL = 600
AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_TOKEN",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_SKIP_SIGNATURE",
)


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (30, 160, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def new_key(fmt: str = "png") -> str:
    return image_key(f"job-{uuid.uuid4()}", 0, fmt)


def use_credentials(mp: pytest.MonkeyPatch, access_key: str, secret_key: str) -> None:
    """Credentials as a worker gets them: environment variables, read when a store is built."""
    for name in AWS_ENV:
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", access_key)
    mp.setenv("AWS_SECRET_ACCESS_KEY", secret_key)


def assert_no_secret(error: StorageError, server: S3Server) -> None:
    text = str(error)
    assert server.secret_key not in text
    assert server.access_key not in text
    assert "X-Amz-" not in text
    assert len(text) < 200


@pytest.fixture
def store(live_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    use_credentials(monkeypatch, live_s3.access_key, live_s3.secret_key)
    return S3Store(
        live_s3.bucket,
        prefix=PREFIX,
        endpoint_url=live_s3.endpoint_url,
        region=live_s3.region,
        url_ttl=TTL,
    )


@pytest.fixture(scope="module")
def verifying_s3() -> Iterator[S3Server]:
    """A server of its own that checks every request's signature and access key."""
    with s3_server("imagegen-auth", verify_signatures=True) as server:
        yield server


def test_presigned_url_serves_the_stored_png(store: S3Store, live_s3: S3Server) -> None:
    data = png_bytes()
    key = new_key()

    assert store.put(key, data, "image/png") is None
    url = store.signed_url(key)

    assert urlsplit(url).path == f"/{live_s3.bucket}/{PREFIX}/{key}"
    # A plain client with no AWS credentials: the URL alone must be enough.
    with httpx.Client(trust_env=False) as http:
        response = http.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(data).hexdigest()
    assert response.headers["content-type"] == "image/png"


def test_object_lands_under_the_prefix_with_its_content_type(
    store: S3Store, live_s3: S3Server
) -> None:
    data = png_bytes()
    key = new_key()
    store.put(key, data, "image/png")

    head = live_s3.client().head_object(Bucket=live_s3.bucket, Key=f"{PREFIX}/{key}")
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(data)


def test_put_replaces_an_earlier_copy(store: S3Store) -> None:
    key = new_key()
    store.put(key, b"\x89PNG\r\n\x1a\n first attempt", "image/png")
    data = png_bytes()
    store.put(key, data, "image/png")

    assert b"".join(store.open(key)) == data


def test_open_streams_the_bytes_in_chunks(store: S3Store) -> None:
    small = png_bytes()
    small_key = new_key()
    store.put(small_key, small, "image/png")
    assert b"".join(store.open(small_key)) == small

    large = os.urandom(700 * 1024)
    large_key = new_key("webp")
    store.put(large_key, large, "image/webp")
    chunks = list(store.open(large_key))
    assert len(chunks) > 1
    assert all(isinstance(chunk, bytes) for chunk in chunks)
    assert b"".join(chunks) == large


def test_open_of_a_missing_key_is_a_permanent_error(store: S3Store, live_s3: S3Server) -> None:
    key = new_key()
    with pytest.raises(StorageError) as caught:
        store.open(key)

    assert caught.value.permanent is True
    assert key in str(caught.value)
    assert "404" in str(caught.value)
    assert caught.value.__cause__ is None
    assert_no_secret(caught.value, live_s3)


def test_signed_url_carries_the_lifetime_and_a_valid_signature(
    store: S3Store, live_s3: S3Server
) -> None:
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    key = new_key()
    store.put(key, png_bytes(), "image/png")
    url = store.signed_url(key)
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))

    assert query["X-Amz-Expires"] == str(TTL)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Credential"].startswith(f"{live_s3.access_key}/")
    assert f"/{live_s3.region}/s3/aws4_request" in query["X-Amz-Credential"]
    assert live_s3.secret_key not in url

    # moto 5.2 serves presigned URLs without checking their signature or expiry (and fails
    # them with 500 once its IAM checks are on), so a tampered URL cannot be shown refused
    # here; instead botocore, AWS's own signer, recomputes this one from the same inputs:
    # what AWS or MinIO would accept.
    request = AWSRequest(
        method="GET", url=urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    )
    request.context["timestamp"] = query["X-Amz-Date"]
    credentials = Credentials(live_s3.access_key, live_s3.secret_key)
    S3SigV4QueryAuth(credentials, "s3", live_s3.region, expires=TTL).add_auth(request)
    expected = dict(parse_qsl(urlsplit(request.url).query))
    assert query["X-Amz-Signature"] == expected["X-Amz-Signature"]


def test_ping_passes_for_the_bucket(store: S3Store) -> None:
    store.ping()


def test_ping_of_a_missing_bucket_is_a_permanent_error(
    live_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_credentials(monkeypatch, live_s3.access_key, live_s3.secret_key)
    missing = S3Store("no-such-bucket", endpoint_url=live_s3.endpoint_url, region=live_s3.region)

    with pytest.raises(StorageError) as caught:
        missing.ping()

    assert caught.value.permanent is True
    assert "NoSuchBucket" in str(caught.value)
    assert_no_secret(caught.value, live_s3)


def test_an_unreachable_server_is_a_transient_error(
    live_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_credentials(monkeypatch, live_s3.access_key, live_s3.secret_key)
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        away = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1")
        with pytest.raises(StorageError) as caught:
            away.ping()

    assert caught.value.permanent is False
    assert_no_secret(caught.value, live_s3)


def test_right_credentials_pass_a_verifying_server(
    verifying_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_credentials(monkeypatch, verifying_s3.access_key, verifying_s3.secret_key)
    store = S3Store(
        verifying_s3.bucket, endpoint_url=verifying_s3.endpoint_url, region=verifying_s3.region
    )
    store.ping()
    key = new_key()
    data = png_bytes()
    store.put(key, data, "image/png")
    assert b"".join(store.open(key)) == data


@pytest.mark.parametrize("wrong", ["secret", "access key"])
def test_refused_credentials_are_a_permanent_error(
    verifying_s3: S3Server, monkeypatch: pytest.MonkeyPatch, wrong: str
) -> None:
    wrong_secret = "wrong-secret-9876543210-" + verifying_s3.secret_key[:8]
    if wrong == "secret":
        use_credentials(monkeypatch, verifying_s3.access_key, wrong_secret)
        expected_code = "SignatureDoesNotMatch"
    else:
        use_credentials(monkeypatch, "AKIAUNKNOWN000000000", verifying_s3.secret_key)
        expected_code = "InvalidAccessKeyId"
    store = S3Store(
        verifying_s3.bucket, endpoint_url=verifying_s3.endpoint_url, region=verifying_s3.region
    )

    errors = []
    for action in (store.ping, lambda: store.put(new_key(), png_bytes(), "image/png")):
        with pytest.raises(StorageError) as caught:
            action()
        errors.append(caught.value)

    for error in errors:
        assert error.permanent is True
        assert "403" in str(error)
        assert_no_secret(error, verifying_s3)
        assert wrong_secret not in str(error)
        assert "AKIAUNKNOWN000000000" not in str(error)
    assert expected_code in str(errors[0])


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (FileNotFoundError("Object at location k not found: 404 Not Found"), True),
        (PermissionDeniedError("Server returned non-2xx status code: 403 Forbidden"), True),
        (GenericError("Server returned non-2xx status code: 503 Service Unavailable"), False),
        (GenericError("Server returned non-2xx status code: 429 Too Many Requests"), False),
        (GenericError("Server returned non-2xx status code: 400 Bad Request"), True),
        (GenericError("HttpError {\n kind: Timeout,\n source: reqwest::Error"), False),
        (GenericError("HttpError {\n kind: Unknown, source: reqwest::Error { kind: Builder"), True),
    ],
)
def test_obstore_errors_are_mapped_and_stripped(error: Exception, permanent: bool) -> None:
    secret = "SECRET-wJalrXUtnFEMI-K7MDENG"
    # obstore quotes URLs and response bodies: neither may reach the StorageError.
    error.args = (
        f"{error.args[0]} GET http://h/b/k?X-Amz-Credential=AKIA0000%2F&X-Amz-Signature=ab "
        f"<Error><Code>SignatureDoesNotMatch</Code><StringToSign>{secret}</StringToSign>"
        f"<AWSAccessKeyId>AKIA0000</AWSAccessKeyId></Error>",
    )

    mapped = _storage_error("reading k", error)

    assert mapped.permanent is permanent
    assert str(mapped).startswith(f"reading k: {type(error).__name__}")
    assert secret not in str(mapped)
    assert "AKIA0000" not in str(mapped)
    assert "X-Amz-" not in str(mapped)


def test_open_store_builds_a_working_s3_store(
    live_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_credentials(monkeypatch, live_s3.access_key, live_s3.secret_key)
    settings = Settings(
        storage_backend="s3",
        s3_bucket=live_s3.bucket,
        s3_prefix="from-settings/",
        s3_endpoint_url=live_s3.endpoint_url,
        s3_region=live_s3.region,
        storage_url_ttl_seconds=120,
    )

    store = open_store(settings)

    assert isinstance(store, S3Store)
    assert store.backend == "s3"
    store.ping()
    key = new_key()
    data = png_bytes()
    assert store.put(key, data, "image/png") is None
    assert b"".join(store.open(key)) == data
    url = store.signed_url(key)
    assert urlsplit(url).path == f"/{live_s3.bucket}/from-settings/{key}"
    assert dict(parse_qsl(urlsplit(url).query))["X-Amz-Expires"] == "120"
    with httpx.Client(trust_env=False) as http:
        assert http.get(url).content == data
    assert live_s3.secret_key not in repr(store)
