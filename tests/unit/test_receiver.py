"""The webhook receiver (``devtools/receiver.py``): in process through Starlette's TestClient,
and once as its own process (``python -m devtools.receiver``) over a real local socket."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient and warns when it falls back to httpx
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

from devtools.receiver import Receiver, create_app
from worker.delivery.webhooks import Attempt, Outcome, WebhookConfig, send

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
NEW_SECRET = "whsec_" + base64.b64encode(bytes(range(50, 82))).decode()
WRONG = "whsec_" + base64.b64encode(b"z" * 32).decode()
EVENT = {"type": "job.succeeded", "timestamp": "2026-12-01T15:00:00+00:00", "data": {"id": "j1"}}
BODY = json.dumps(EVENT, separators=(",", ":"))


def signed(
    body: str = BODY,
    *,
    secrets: tuple[str, ...] = (SECRET,),
    msg_id: str = "dlv_1",
    at: float | None = None,
) -> dict[str, str]:
    """Headers a Standard Webhooks sender puts on ``body``, signed by the library."""
    timestamp = int(time.time() if at is None else at)
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(Webhook(s).sign(msg_id, when, body) for s in secrets),
    }


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "hooks.jsonl"


@pytest.fixture
def receiver(log: Path) -> Receiver:
    return Receiver([SECRET], log)


@pytest.fixture
def client(receiver: Receiver) -> Iterator[TestClient]:
    with TestClient(create_app(receiver)) as test_client:
        yield test_client


def test_a_signed_request_is_verified_answered_and_logged(client: TestClient, log: Path) -> None:
    before = time.time()
    signed_headers = signed()
    response = client.post("/hook", content=BODY, headers=signed_headers)
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    [entry] = read_log(log)
    assert entry["webhook_id"] == "dlv_1"
    assert entry["verified"] is True
    assert entry["status"] == 200
    assert entry["body"] == EVENT
    assert entry["path"] == "/hook"
    assert entry["error"] is None
    assert entry["seen_before"] is False
    assert before <= entry["at"] <= time.time()
    assert entry["raw"] == BODY
    assert {k: entry["headers"][k] for k in signed_headers} == signed_headers
    # what was logged verifies again, as another receiver (Node.js) would check it
    assert Webhook(SECRET).verify(entry["raw"], entry["headers"]) == EVENT


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (BODY, signed(secrets=(WRONG,))),
        (BODY.replace("j1", "j2"), signed()),
        (BODY, {**signed(), "webhook-id": "dlv_other"}),
        (BODY, signed(at=time.time() - 600)),  # older than the library's 5 min tolerance
        (BODY, {"content-type": "application/json"}),
        (BODY, {**signed(), "webhook-signature": "garbage"}),
        (BODY, {**signed(), "webhook-signature": "v1,not base64!"}),
    ],
    ids=["wrong-secret", "tampered-body", "other-id", "stale", "unsigned", "garbage", "bad-b64"],
)
def test_an_unverified_request_is_refused_and_logged(
    client: TestClient, log: Path, body: str, headers: dict[str, str]
) -> None:
    response = client.post("/hook", content=body, headers=headers)
    assert response.status_code == 401
    [entry] = read_log(log)
    assert entry["verified"] is False
    assert entry["status"] == 401
    assert entry["error"]
    assert SECRET.removeprefix("whsec_") not in json.dumps(entry)


def test_503_while_failing_then_200(client: TestClient, receiver: Receiver, log: Path) -> None:
    receiver.fail_until = time.time() + 3600
    assert client.post("/hook", content=BODY, headers=signed()).status_code == 503
    # a bad signature is refused as such even while failing
    assert client.post("/hook", content=BODY, headers=signed(secrets=(WRONG,))).status_code == 401
    answer = client.post("/config", json={"fail_until": 0})
    assert answer.json() == {"fail_until": 0.0}
    assert client.post("/hook", content=BODY, headers=signed()).status_code == 200
    entries = read_log(log)
    assert [(e["status"], e["verified"], e["seen_before"]) for e in entries] == [
        (503, True, False),
        (401, False, True),
        (200, True, True),
    ]
    assert all(e["webhook_id"] == "dlv_1" for e in entries)


def test_fail_until_from_the_constructor_and_config(log: Path) -> None:
    receiver = Receiver([SECRET], log, fail_until=time.time() + 60)
    with TestClient(create_app(receiver)) as client:
        assert client.get("/health").json()["fail_until"] == receiver.fail_until
        assert client.post("/hook", content=BODY, headers=signed()).status_code == 503
        client.post("/config", json={"fail_until": time.time() + 3600})
        assert client.post("/hook", content=BODY, headers=signed()).status_code == 503
        client.post("/config", json={"fail_until": time.time() - 1})
        assert client.post("/hook", content=BODY, headers=signed()).status_code == 200


@pytest.mark.parametrize(
    "payload", [{}, {"fail_until": "soon"}, {"fail_until": True}, {"fail_until": None}, [1]]
)
def test_config_refuses_nonsense(client: TestClient, payload: Any) -> None:
    assert client.post("/config", json=payload).status_code == 400


def test_health(client: TestClient, log: Path) -> None:
    assert client.get("/health").json() == {"ok": True, "fail_until": 0.0}
    assert not log.exists() or read_log(log) == []


def test_either_secret_verifies_during_a_rotation(log: Path) -> None:
    receiver = Receiver([SECRET, NEW_SECRET], log)
    with TestClient(create_app(receiver)) as client:
        for secrets in ((SECRET,), (NEW_SECRET,), (SECRET, NEW_SECRET)):
            headers = signed(secrets=secrets)
            assert client.post("/hook", content=BODY, headers=headers).status_code == 200
        assert client.post("/", content=BODY, headers=signed(secrets=(WRONG,))).status_code == 401


def test_a_non_json_body_is_logged_as_null(client: TestClient, log: Path) -> None:
    assert client.post("/hook", content="plain", headers=signed("plain")).status_code == 200
    assert read_log(log)[0]["body"] is None


def test_the_sender_and_the_receiver_agree(client: TestClient, receiver: Receiver) -> None:
    """worker.delivery.webhooks.send through the TestClient (an httpx.Client)."""
    if not isinstance(client, httpx.Client):
        pytest.skip("this Starlette's TestClient is not an httpx.Client")
    config = WebhookConfig(secrets=(NEW_SECRET, SECRET), allow_hosts=frozenset({"testserver"}))

    def deliver() -> Attempt:
        return send(
            client,
            "http://testserver/hooks/imagegen",
            msg_id="dlv_e2e",
            payload=BODY.encode(),
            config=config,
        )

    assert deliver() == Attempt(Outcome.DELIVERED, 200, None)
    receiver.fail_until = time.time() + 60
    assert deliver() == Attempt(
        Outcome.RETRY, 503, f'HTTP 503: {{"error":"failing until {receiver.fail_until}"}}'
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_command_line_receiver(tmp_path: Path) -> None:
    """``python -m devtools.receiver`` serves a real socket; the sender reaches it over TCP."""
    port = _free_port()
    log = tmp_path / "cli.jsonl"
    fail_until = time.time() + 3600
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.receiver",
            "--port",
            str(port),
            "--secret",
            SECRET,
            "--log",
            str(log),
            "--fail-until",
            str(fail_until),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.communicate(timeout=5)
                assert time.monotonic() < deadline, "the receiver did not come up"
                time.sleep(0.05)
            assert http.get(f"{base}/health").json() == {"ok": True, "fail_until": fail_until}

            config = WebhookConfig(secrets=(SECRET,), allow_hosts=frozenset({"127.0.0.1"}))
            first = send(
                http, f"{base}/hook", msg_id="dlv_cli", payload=BODY.encode(), config=config
            )
            assert first.outcome is Outcome.RETRY
            assert first.status == 503
            http.post(f"{base}/config", json={"fail_until": 0})
            second = send(
                http, f"{base}/hook", msg_id="dlv_cli", payload=BODY.encode(), config=config
            )
            assert second == Attempt(Outcome.DELIVERED, 200, None)
    finally:
        process.terminate()
        process.communicate(timeout=10)
    entries = read_log(log)
    assert [(e["status"], e["webhook_id"], e["verified"]) for e in entries] == [
        (503, "dlv_cli", True),
        (200, "dlv_cli", True),
    ]
    assert entries[1]["seen_before"] is True
    assert entries[1]["body"] == EVENT
