"""Webhooks signed here verify in Node.js with npm's ``standardwebhooks`` (a receiver's view).

Needs ``node`` and ``npm``; installs ``tests/node`` from its lock file (``npm ci``) when
``node_modules`` is missing.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.nodejs import node_binary
from worker.delivery.webhooks import Outcome, WebhookConfig, send

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "verify_webhook.mjs"
SECRET = "whsec_" + base64.b64encode(bytes(range(7, 39))).decode()
ROTATED = "whsec_" + base64.b64encode(bytes(range(200, 232))).decode()
WRONG = "whsec_" + base64.b64encode(b"q" * 32).decode()
EVENT = {
    "type": "job.succeeded",
    "timestamp": "2026-12-01T15:00:00+00:00",
    "data": {"id": "j1", "prompt": "un café ☕ «déjà vu»", "n": 2},
}


@pytest.fixture(scope="module")
def node() -> str:
    return node_binary()


@pytest.fixture(scope="module")
def wire() -> dict[str, Any]:
    """Headers and body of one webhook exactly as ``send`` puts them on the wire."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    config = WebhookConfig(secrets=(SECRET, ROTATED), allow_hosts=frozenset({"127.0.0.1"}))
    body = json.dumps(EVENT, ensure_ascii=False, separators=(",", ":")).encode()
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        result = send(
            client, "http://127.0.0.1:9/hook", msg_id="dlv_node_1", payload=body, config=config
        )
    assert result.outcome is Outcome.DELIVERED
    (request,) = seen
    return {"headers": dict(request.headers), "body": request.content.decode("utf-8")}


def verify(node: str, tmp_path: Path, case: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "case.json"
    path.write_text(json.dumps(case), encoding="utf-8")
    return subprocess.run(
        [node, str(SCRIPT), str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("secret", [SECRET, ROTATED], ids=["current", "rotated"])
def test_either_signing_secret_verifies(
    node: str, wire: dict[str, Any], tmp_path: Path, secret: str
) -> None:
    done = verify(node, tmp_path, {"secret": secret, **wire})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "job.succeeded"


def test_a_wrong_secret_fails(node: str, wire: dict[str, Any], tmp_path: Path) -> None:
    done = verify(node, tmp_path, {"secret": WRONG, **wire})
    assert done.returncode == 1
    assert "No matching signature found" in done.stderr
    assert done.stdout == ""


def test_a_tampered_body_fails(node: str, wire: dict[str, Any], tmp_path: Path) -> None:
    tampered = {**wire, "body": wire["body"].replace('"n":2', '"n":3')}
    assert tampered["body"] != wire["body"]
    done = verify(node, tmp_path, {"secret": SECRET, **tampered})
    assert done.returncode == 1
    assert "No matching signature found" in done.stderr


def test_a_changed_webhook_id_fails(node: str, wire: dict[str, Any], tmp_path: Path) -> None:
    headers = {**wire["headers"], "webhook-id": "dlv_node_2"}
    done = verify(node, tmp_path, {"secret": SECRET, "headers": headers, "body": wire["body"]})
    assert done.returncode == 1


def test_a_broken_case_is_not_a_refusal(node: str, tmp_path: Path) -> None:
    done = verify(node, tmp_path, {"secret": SECRET, "headers": {}})
    assert done.returncode == 2
    assert "body" in done.stderr
