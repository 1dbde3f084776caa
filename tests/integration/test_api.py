"""``imagegen api`` as a backend on another host uses it: real API, worker and simulator
processes, the API's only client being HTTP."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api_schema import ErrorCode, JobStatus, JobView
from tests.harness import Stack, request

TOKENS = {
    "acme": "acme-token-0123456789abcdefghij",
    "globex": "globex-token-0123456789abcdefgh",
    "default": "broker-tenant-token-0123456789ab",
}
BODY_LIMIT = 256 * 1024
JSON = "application/json"


@pytest.fixture(scope="module")
def api_url(worker_stack: Stack) -> Iterator[str]:
    url = worker_stack.start_api(TOKENS, IMAGEGEN_API_MAX_BODY_BYTES=str(BODY_LIMIT))
    yield url
    worker_stack.stop_api(url)


def client(api_url: str, tenant: str | None = "acme") -> httpx.Client:
    headers = {"Authorization": f"Bearer {TOKENS[tenant]}"} if tenant else {}
    return httpx.Client(base_url=api_url, headers=headers, timeout=30)


def wait_job(http: httpx.Client, job_id: str, timeout: float = 60) -> JobView:
    deadline = time.monotonic() + timeout
    while True:
        view = JobView.model_validate(http.get(f"/v1/jobs/{job_id}").raise_for_status().json())
        if view.status.is_terminal:
            return view
        assert time.monotonic() < deadline, f"job {job_id} still {view.status}"
        time.sleep(0.1)


def test_post_get_and_download_an_image(live: Stack, api_url: str) -> None:
    with client(api_url) as http:
        answer = http.post("/v1/jobs", json=request(n=2))
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        assert answer.headers["location"] == f"/v1/jobs/{job_id}"
        assert answer.json()["replayed"] is False
        # Recorded before the answer: readable at once, whatever the workers are doing.
        first = http.get(answer.headers["location"])
        assert first.status_code == 200
        assert first.json()["tenant"] == "acme"
        view = wait_job(http, job_id)
        assert view.status is JobStatus.SUCCEEDED, view.error_message
        assert len(view.images) == 2
        for image in view.images:
            assert image.href == f"/v1/jobs/{job_id}/images/{image.index}"
            got = http.get(image.href)
            assert got.status_code == 200
            assert got.headers["content-type"] == image.content_type == "image/png"
            digest = hashlib.sha256(got.content).hexdigest()
            assert digest == image.sha256 == got.headers["x-checksum-sha256"]
            assert len(got.content) == image.size_bytes == int(got.headers["content-length"])
            assert got.content.startswith(b"\x89PNG")
        assert http.get(f"/v1/jobs/{job_id}/images/7").json()["error"] == "not_stored"


def test_idempotency_key_same_body_same_job_other_body_409(live: Stack, api_url: str) -> None:
    body = request()
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    with client(api_url) as acme, client(api_url, "globex") as globex:
        first = acme.post("/v1/jobs", json=body, headers=key)
        again = acme.post("/v1/jobs", json=body, headers=key)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["replayed"] is True
        other = acme.post("/v1/jobs", json={**body, "prompt": "another"}, headers=key)
        assert other.status_code == 409
        assert other.json()["error"] == "idempotency_conflict"
        assert other.headers["location"] == f"/v1/jobs/{first.json()['id']}"
        # Keys are per tenant: the same key elsewhere is another job, not a conflict.
        theirs = globex.post("/v1/jobs", json=body, headers=key)
        assert theirs.status_code == 202
        assert theirs.json()["id"] != first.json()["id"]
        # The header and the body's own key must agree.
        mismatch = acme.post(
            "/v1/jobs", json={**body, "idempotency_key": "something-else"}, headers=key
        )
        assert mismatch.status_code == 422
        assert mismatch.json()["errors"][0]["code"] == "idempotency_key_mismatch"
    ended = live.wait_ended([first.json()["id"], theirs.json()["id"]])
    assert {v.status for v in ended.values()} == {JobStatus.SUCCEEDED}
    assert live.sql("SELECT count(*) FROM jobs")[0][0] == 2


def test_tokens_and_tenants(live: Stack, api_url: str) -> None:
    with client(api_url) as acme:
        job_id = acme.post("/v1/jobs", json=request()).json()["id"]
        view = wait_job(acme, job_id)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"}):
        with httpx.Client(base_url=api_url, headers=headers) as anonymous:
            refused = anonymous.get(f"/v1/jobs/{job_id}")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert anonymous.post("/v1/jobs", json=request()).status_code == 401
    with client(api_url, "globex") as globex:
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/images/0"):
            assert globex.get(path).status_code == 404
        assert globex.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert globex.get("/v1/jobs").json()["items"] == []
    assert view.images[0].href is not None
    log = live.apis[api_url].log_tail(2000)
    assert not any(token in log for token in TOKENS.values())
    assert "nope" not in log


def test_bad_input_never_500(live: Stack, api_url: str) -> None:
    with client(api_url) as http:
        plain = http.post("/v1/jobs", content=b"{}", headers={"Content-Type": "text/plain"})
        assert (plain.status_code, plain.json()["error"]) == (415, "unsupported_media_type")
        big = b'{"prompt": "' + b"x" * BODY_LIMIT + b'"}'
        declared = http.post("/v1/jobs", content=big, headers={"Content-Type": JSON})
        assert (declared.status_code, declared.json()["error"]) == (413, "too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
            yield from (big[i : i + 8192] for i in range(0, len(big), 8192))

        streamed = http.post(
            "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert (streamed.status_code, streamed.json()["error"]) == (413, "too_large")
        for broken in (b"{", b'{"prompt": NaN}', b"\xff\xfe", b""):
            bad = http.post("/v1/jobs", content=broken, headers={"Content-Type": JSON})
            assert (bad.status_code, bad.json()["error"]) == (400, "malformed_json"), broken
        invalid = http.post("/v1/jobs", json={"prompt": "x", "width": 512, "height": None})
        assert invalid.status_code == 422
        errors = invalid.json()["errors"]
        assert {e["path"] for e in errors} >= {"subject_reference_images"}
        assert all(set(e) == {"path", "code", "message"} for e in errors)
        assert http.get("/v1/jobs?limit=0").status_code == 422
        assert http.get("/v1/jobs?cursor=not-a-cursor").json()["errors"][0]["code"] == (
            "invalid_cursor"
        )
        assert http.get("/v1/jobs?created_after=2026-01-01T00:00:00").status_code == 422
    assert live.sql("SELECT count(*) FROM jobs")[0][0] == 0


def test_a_refused_broker_request_keeps_the_same_error_structure(live: Stack, api_url: str) -> None:
    job_id = live.send({"prompt": "x", "width": 512, "height": None})
    live.wait_ended([job_id])
    with client(api_url, "default") as broker_tenant, client(api_url) as acme:
        view = JobView.model_validate(broker_tenant.get(f"/v1/jobs/{job_id}").json())
        answer = acme.post("/v1/jobs", json={"prompt": "x", "width": 512, "height": None})
    assert view.error_code is ErrorCode.INVALID_REQUEST
    assert view.tenant == "default"
    assert view.errors is not None
    stored = [e.model_dump() for e in view.errors]
    assert stored == answer.json()["errors"]


def test_listing_is_keyset_paginated_newest_first(live: Stack, api_url: str) -> None:
    live.sim_configure(pending_seconds=30)  # nothing ends while the list is read
    with client(api_url) as http:
        ids = [http.post("/v1/jobs", json=request()).json()["id"] for _ in range(5)]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = http.get("/v1/jobs", params=params).json()
            seen += [item["id"] for item in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == list(reversed(ids))
        created = [http.get(f"/v1/jobs/{j}").json()["created_at"] for j in ids]
        later = http.get("/v1/jobs", params={"created_after": created[2]}).json()["items"]
        assert [item["id"] for item in later] == list(reversed(ids[3:]))
        queued = http.get("/v1/jobs", params={"status": "succeeded"}).json()["items"]
        assert queued == []


def test_cancel(live: Stack, api_url: str) -> None:
    live.sim_configure(pending_seconds=30)
    with client(api_url) as http:
        job_id = http.post("/v1/jobs", json=request()).json()["id"]
        live.wait_status(job_id, {"pending"})
        done = http.post(f"/v1/jobs/{job_id}/cancel")
        assert done.status_code == 200
        assert done.json()["status"] == "cancelled"
        again = http.post(f"/v1/jobs/{job_id}/cancel")
        assert (again.status_code, again.json()["error"]) == (409, "not_cancellable")
        assert http.post(f"/v1/jobs/{uuid.uuid4()}/cancel").status_code == 404


def test_health_and_readiness(live: Stack, api_url: str) -> None:
    assert httpx.get(f"{api_url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{api_url}/readyz").json()
    assert ready == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def test_images_that_cannot_be_stored_say_so(live: Stack, api_url: str) -> None:
    with client(api_url) as http:
        # Gone for good: asked again until the job's deadline, then storage_failed.
        live.sim_configure(faults={"file_404": 1.0})
        gone = http.post("/v1/jobs", json=request(deadline_seconds=4)).json()["id"]
        view = wait_job(http, gone)
        assert (view.status, view.error_code) == (JobStatus.FAILED, ErrorCode.STORAGE_FAILED)
        assert view.images and view.images[0].url.startswith("http")  # the upstream's URL kept
        assert view.images[0].href is None
        assert view.billing_amount is not None  # paid for: the bill is recorded
        # A passing outage of the CDN is retried until the copy is made.
        live.sim_configure(faults={"file_404": 0.0, "file_503": 0.5, "seed": 7})
        flaky = http.post("/v1/jobs", json=request(n=3)).json()["id"]
        view = wait_job(http, flaky)
        assert view.status is JobStatus.SUCCEEDED, view.error_message
        assert all(i.sha256 for i in view.images)
    assert live.sim_stats()["faults_injected"].get("file_503", 0) > 0


def test_openapi_is_served(live: Stack, api_url: str) -> None:
    document = httpx.get(f"{api_url}/v1/openapi.json").json()
    assert "/v1/jobs/{job_id}/images/{index}" in document["paths"]
    assert json.dumps(document)  # serialisable as served
