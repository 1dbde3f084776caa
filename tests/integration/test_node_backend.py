"""A Node.js backend integrates both ways: through the HTTP API (submit, poll, download and
check images) and through the broker (a raw LPUSH of the checked-in example message, read
back through the API). Real ``node`` (built-in fetch and node:crypto, npm's ``redis``)
against a real API, worker and simulator.

Needs ``node`` and ``npm``; installs ``tests/node`` from its lock file (``npm ci``) when
``node_modules`` is missing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_schema import JobStatus
from tests.harness import Stack
from tests.nodejs import node_binary

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "node"
SCRIPT = NODE_DIR / "api_backend.mjs"
MESSAGE_FILE = REPO / "api_schema" / "examples" / "generate-message.json"
TOKENS = {
    "acme": "acme-node-token-0123456789abcdefgh",
    # jobs pushed onto the broker belong to IMAGEGEN_BROKER_TENANT, "default" when unset
    "default": "broker-node-token-0123456789abcd",
}
#: The Node script's own deadline; the subprocess gets a little more.
SCRIPT_TIMEOUT = 90


@pytest.fixture(scope="module")
def node() -> str:
    return node_binary()


@pytest.fixture(scope="module")
def api_url(worker_stack: Stack) -> Iterator[str]:
    url = worker_stack.start_api(TOKENS, name="node-api")
    yield url
    worker_stack.stop_api(url)


def run_backend(node: str, live: Stack, api_url: str) -> dict[str, Any]:
    config = live.root / "node-backend.json"
    config.write_text(
        json.dumps(
            {
                "api_url": api_url,
                "token": TOKENS["acme"],
                "broker_token": TOKENS["default"],
                "redis_url": live.broker_url,
                "message_file": str(MESSAGE_FILE),
                "timeout_seconds": SCRIPT_TIMEOUT,
            }
        )
    )
    done = subprocess.run(
        [node, str(SCRIPT), str(config)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT + 30,
    )
    assert done.returncode == 0, f"node exited {done.returncode}:\n{done.stderr}\n{done.stdout}"
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    observed: dict[str, Any] = json.loads(lines[0])
    return observed


def test_a_node_backend_over_http_and_raw_redis(node: str, live: Stack, api_url: str) -> None:
    seen = run_backend(node, live, api_url)
    submitted, job, raw = seen["submitted"], seen["job"], seen["raw"]

    # 1. POST /v1/jobs: 202 with Location; the retried POST is the same job.
    assert submitted["status"] == 202
    assert submitted["location"] == f"/v1/jobs/{submitted['id']}"
    assert submitted["replayed"] is False
    assert (submitted["retry_status"], submitted["retry_id"]) == (202, submitted["id"])
    assert submitted["retry_replayed"] is True
    # 2. polled until it ended
    assert job["id"] == submitted["id"]
    assert job["status"] == "succeeded"
    assert job["tenant"] == "acme"
    assert job["idempotency_key"] == submitted["idempotency_key"]
    assert job["metadata"] == {"backend": "node", "order": 1001}
    # 3. each image downloaded through its href, its checksum and size as the JobView says
    assert [i["index"] for i in job["images"]] == [0, 1]
    for image in job["images"]:
        assert image["href"] == f"/v1/jobs/{job['id']}/images/{image['index']}"
        assert image["sha256"] == image["header_sha256"]
        assert image["size"] == image["size_bytes"] > 0
        assert image["content_type"] == "image/png"
        assert image["png"] is True
    # 4. the raw message, read back with the broker tenant's token; hidden from acme's
    assert raw["status"] == "succeeded"
    assert raw["tenant"] == "default"
    assert raw["other_tenant_status"] == 404
    assert raw["queue_length_after_push"] >= 1
    assert len(raw["images"]) == 1

    # The database, independently of the API.
    views = live.views([job["id"], raw["id"]])
    api_view, raw_view = views[job["id"]], views[raw["id"]]
    assert api_view is not None and raw_view is not None
    assert api_view.status is raw_view.status is JobStatus.SUCCEEDED
    assert {i.sha256 for i in api_view.images} == {i["sha256"] for i in job["images"]}
    assert {i.size_bytes for i in api_view.images} == {i["size"] for i in job["images"]}
    assert [i.sha256 for i in raw_view.images] == [i["sha256"] for i in raw["images"]]
    rows = live.sql("SELECT id, tenant, status, idempotency_key FROM jobs ORDER BY tenant")
    assert [tuple(r) for r in rows] == [
        (job["id"], "acme", "succeeded", submitted["idempotency_key"]),
        (raw["id"], "default", "succeeded", None),
    ]
    # The raw job ran the example's request as it is (only the id was changed).
    message = json.loads(MESSAGE_FILE.read_text(encoding="utf-8"))
    assert raw["id"] != message["headers"]["id"]
    (stored,) = live.sql("SELECT request FROM jobs WHERE id = :id", id=raw["id"])
    assert "watercolour portrait" in stored.request["prompt"]
    stored_images = live.sql(
        "SELECT job_id, index, sha256, size_bytes FROM job_images ORDER BY job_id, index"
    )
    assert len(stored_images) == 3
    assert all(r.sha256 and r.size_bytes for r in stored_images)
    assert live.sql("SELECT count(*) FROM dropped_messages")[0][0] == 0
