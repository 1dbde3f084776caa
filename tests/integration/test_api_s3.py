"""Images in S3-compatible object storage, end to end: a real worker copies them into a
real S3 HTTP server (moto's standalone server), the API answers with a signed URL, and the
bytes fetched from it over HTTP match the checksum recorded for them."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest

from api_schema import JobStatus, JobView
from tests.harness import Stack, request
from tests.s3server import S3Server, live_s3_fixture  # noqa: F401 - a fixture

TOKEN = "s3-tenant-token-0123456789abcdef"


@pytest.fixture(scope="module")
def s3_api(stack: Stack, live_s3: S3Server) -> Iterator[str]:
    stack.clean()
    env = {**live_s3.worker_env(), "IMAGEGEN_STORAGE_URL_TTL_SECONDS": "120"}
    stack.start_worker("s3w", **env)
    url = stack.start_api({"acme": TOKEN}, name="s3-api", **env)
    try:
        yield url
    finally:
        stack.stop_workers()
        stack.stop_api(url)


def test_images_are_copied_to_s3_and_served_by_signed_url(
    stack: Stack, s3_api: str, live_s3: S3Server
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=s3_api, headers=headers, timeout=30) as http:
        job_id = http.post("/v1/jobs", json=request(n=2)).raise_for_status().json()["id"]
        deadline = time.monotonic() + 60
        while not (
            view := JobView.model_validate(http.get(f"/v1/jobs/{job_id}").json())
        ).status.is_terminal:
            assert time.monotonic() < deadline, view.status
            time.sleep(0.1)
        assert view.status is JobStatus.SUCCEEDED, view.error_message
        objects = live_s3.client("s3").list_objects_v2(Bucket=live_s3.bucket)["Contents"]
        keys = {o["Key"] for o in objects}
        for image in view.images:
            assert image.storage_key in keys
            assert image.stored_path is None  # nothing on the worker's disk
            assert image.href is not None
            redirect = http.get(image.href)
            assert redirect.status_code == 307
            assert redirect.headers["x-checksum-sha256"] == image.sha256
            signed = redirect.headers["location"]
            assert signed.startswith(live_s3.endpoint_url)
            assert "X-Amz-Expires=120" in signed and "X-Amz-Signature=" in signed
            # Another host: a plain client, no credentials of its own.
            fetched = httpx.get(signed, timeout=30)
            assert fetched.status_code == 200
            assert hashlib.sha256(fetched.content).hexdigest() == image.sha256
            assert len(fetched.content) == image.size_bytes
            assert fetched.headers["content-type"] == image.content_type == "image/png"
    ready = httpx.get(f"{s3_api}/readyz").json()
    assert ready["checks"]["storage"] == "ok"
