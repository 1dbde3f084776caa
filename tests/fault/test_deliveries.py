"""Results reach the producer: the outbox, Celery reply tasks and signed webhooks, on real
processes (workers, beat, a webhook receiver verifying every signature with the
``standardwebhooks`` library, a producer's own Celery worker, a Node.js consumer)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api_schema import DeliveryState, ErrorCode, JobStatus, JobView
from devtools.procs import Proc, free_port, imagegen_argv
from tests.fault.conftest import FAULT_ENV
from tests.harness import Stack, request
from tests.nodejs import node_binary

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
#: Short delivery schedule for the tests (the default spans more than a day).
SCHEDULE = (0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0)
REPLY_QUEUE = "backend.results"
REPLY_TASK = "backend.job_done"


@dataclass
class Receiver:
    """A webhook receiver process and the log it keeps of every request."""

    proc: Proc
    url: str
    log: Path

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def delivered(self) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r["verified"] and r["status"] == 200]


def _start_receiver(st: Stack, name: str, secret: str, host: str = "127.0.0.1") -> Receiver:
    port = free_port()
    log = st.root / f"{name}.jsonl"
    argv = [sys.executable, "-m", "devtools.receiver", "--host", host, "--port", str(port)]
    argv += ["--secret", secret, "--log", str(log)]
    proc = st.sup.start(name, argv, env=os.environ.copy())
    url = f"http://{host}:{port}"
    st.sup.wait_http(proc, f"{url}/health")
    return Receiver(proc, f"{url}/hooks", log)


class DeliveryStack(Stack):
    """The session stack with workers that deliver, beat, receivers and a reply consumer."""

    receiver: Receiver
    wrong: Receiver
    private: Receiver
    consumer: Proc
    reply_log: Path
    beat: Proc

    def delivery_env(self) -> dict[str, str]:
        return {
            **FAULT_ENV,
            "IMAGEGEN_WEBHOOK_SECRETS": f"{SECRET},{OLD_SECRET}",
            "IMAGEGEN_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            "IMAGEGEN_DELIVERY_SCHEDULE": ",".join(str(s) for s in SCHEDULE),
        }

    def start_delivering_worker(self, name: str) -> Proc:
        return self.start_worker(name, concurrency=8, **self.delivery_env())

    def with_channels(self, **fields: Any) -> dict[str, Any]:
        """A valid request asking for both channels."""
        return request(
            webhook={"url": self.receiver.url},
            reply_to={"task": REPLY_TASK, "queue": REPLY_QUEUE},
            **fields,
        )

    def replies(self) -> list[dict[str, Any]]:
        if not self.reply_log.exists():
            return []
        return [json.loads(line) for line in self.reply_log.read_text().splitlines() if line]

    def deliveries(self) -> list[Any]:
        return self.sql(
            "SELECT id, job_id, channel, state, attempts, last_error FROM job_deliveries"
        )

    def set_failing(self, seconds: float) -> None:
        response = self.http.post(
            self.receiver.url.replace("/hooks", "/config"),
            json={"fail_until": time.time() + seconds},
        )
        assert response.status_code == 200


@pytest.fixture(scope="module")
def dstack(stack: Stack) -> Iterator[DeliveryStack]:
    stack.__class__ = DeliveryStack
    ds: DeliveryStack = stack  # type: ignore[assignment]
    ds.clean()
    ds.receiver = _start_receiver(ds, "receiver", SECRET)
    ds.wrong = _start_receiver(ds, "wrong-secret", "whsec_" + base64.b64encode(b"w" * 32).decode())
    ds.private = _start_receiver(ds, "not-allowed", SECRET, host="127.0.0.2")
    ds.reply_log = ds.root / "replies.jsonl"
    consumer_env = {
        **os.environ,
        "REPLY_BROKER_URL": ds.broker_url,
        "REPLY_LOG": str(ds.reply_log),
    }
    ds.consumer = ds.sup.start(
        "reply-consumer",
        [
            sys.executable, "-m", "celery", "-A", "devtools.reply_consumer", "worker",
            "-Q", REPLY_QUEUE, "--pool", "solo", "--hostname", "backend@%h",
            "--without-gossip", "--without-mingle",
        ],
        env=consumer_env,
    )  # fmt: skip
    ds.beat = ds.sup.start("beat", imagegen_argv("beat"), env=ds.env(**ds.delivery_env()))
    ds.start_delivering_worker("d1")
    ds.start_delivering_worker("d2")
    try:
        yield ds
    finally:
        ds.stop_workers()
        for proc in (ds.beat, ds.consumer, ds.receiver.proc, ds.wrong.proc, ds.private.proc):
            proc.stop()
        stack.__class__ = Stack


@pytest.fixture
def ds(dstack: DeliveryStack) -> DeliveryStack:
    dstack.clean()
    dstack.reply_log.unlink(missing_ok=True)
    dstack.receiver.log.unlink(missing_ok=True)
    dstack.set_failing(0)
    return dstack


def _wait_delivered(ds: DeliveryStack, count: int, timeout: float = 60) -> None:
    def done() -> bool:
        rows = ds.deliveries()
        return len(rows) == count and all(r.state == "delivered" for r in rows)

    try:
        ds.wait_for(done, timeout, f"{count} deliveries delivered")
    except TimeoutError as exc:
        raise AssertionError(f"{ds.deliveries()}\n{exc}") from None


def test_every_end_reaches_both_channels(ds: DeliveryStack) -> None:
    ok = ds.send(ds.with_channels())
    invalid = ds.send(ds.with_channels(n=0))
    views = ds.wait_ended([ok, invalid], timeout=30)
    assert views[ok].status is JobStatus.SUCCEEDED
    assert views[invalid].error_code is ErrorCode.INVALID_REQUEST
    ds.sim_configure(processing_seconds=30)
    running = ds.send(ds.with_channels())
    ds.wait_status(running, {"pending", "processing"})
    cancel = subprocess.run(
        imagegen_argv("cancel", running), env=ds.env(), capture_output=True, text=True, timeout=60
    )
    assert cancel.returncode == 0, cancel.stderr
    _wait_delivered(ds, 6)
    hooks = {r["body"]["data"]["id"]: r for r in ds.receiver.delivered()}
    assert {k: v["body"]["type"] for k, v in hooks.items()} == {
        ok: "job.succeeded",
        invalid: "job.failed",
        running: "job.cancelled",
    }
    assert hooks[ok]["body"]["data"]["images"][0]["stored_path"]
    assert "deliveries" not in hooks[ok]["body"]["data"]
    ds.wait_for(lambda: len(ds.replies()) == 3, 30, "three replies")
    replies = {r["job"]["id"]: r for r in ds.replies()}
    assert {k: v["job"]["status"] for k, v in replies.items()} == {
        ok: "succeeded",
        invalid: "failed",
        running: "cancelled",
    }
    # The webhook id and the reply's task id are the delivery's id: stable across retries.
    ids = {(r.job_id, r.channel): r.id for r in ds.deliveries()}
    assert hooks[ok]["webhook_id"] == ids[(ok, "webhook")]
    assert replies[ok]["task_id"] == ids[(ok, "reply")]
    # the job's view shows its deliveries
    view = ds.views([ok])[ok]
    assert view is not None
    assert {(d.channel, d.state) for d in view.deliveries} == {
        ("reply", DeliveryState.DELIVERED),
        ("webhook", DeliveryState.DELIVERED),
    }


def test_status_json_shows_each_delivery(ds: DeliveryStack) -> None:
    job_id = ds.send(ds.with_channels())
    ds.wait_ended([job_id], timeout=30)
    _wait_delivered(ds, 2)
    shown = subprocess.run(
        imagegen_argv("status", job_id, "--json"),
        env=ds.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    view = JobView.model_validate_json(shown.stdout)
    assert sorted((d.channel, d.state.value, d.attempts) for d in view.deliveries) == [
        ("reply", "delivered", 1),
        ("webhook", "delivered", 1),
    ]


def test_a_receiver_down_for_a_while_gets_every_delivery(
    ds: DeliveryStack, report: dict[str, Any]
) -> None:
    ds.set_failing(4.0)
    ids = [ds.send(request(webhook={"url": ds.receiver.url})) for _ in range(5)]
    ds.wait_ended(ids, timeout=30)
    _wait_delivered(ds, 5, timeout=90)
    attempts = ds.receiver.requests()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        by_id.setdefault(a["webhook_id"], []).append(a)
    assert len(by_id) == 5
    for tries in by_id.values():
        assert all(t["verified"] for t in tries)
        assert [t["status"] for t in tries][-1] == 200
        assert all(t["status"] == 503 for t in tries[:-1])
        assert len(tries) >= 2  # it was down when the first attempt came
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(tries)]
        for n, gap in enumerate(gaps):
            assert gap >= SCHEDULE[n] * 0.8 - 0.05, (n, gaps)  # the schedule, minus jitter
    rows = {r.id: r for r in ds.deliveries()}
    assert {k: rows[k].attempts for k in by_id} == {k: len(v) for k, v in by_id.items()}
    report.update(
        deliveries_expected=5,
        delivered=len(by_id),
        duplicated=sum(len([t for t in v if t["status"] == 200]) - 1 for v in by_id.values()),
        lost=5 - len(by_id),
        attempts=sorted(len(v) for v in by_id.values()),
    )


def test_a_wrong_secret_is_refused_and_the_delivery_dies_with_its_error(
    ds: DeliveryStack,
) -> None:
    job_id = ds.send(request(webhook={"url": ds.wrong.url}))
    ds.wait_ended([job_id], timeout=30)

    def dead() -> bool:
        return [r.state for r in ds.deliveries()] == ["dead"]

    ds.wait_for(dead, 30, "the delivery dead")
    (row,) = ds.deliveries()
    assert row.attempts == 1  # a 401 is permanent: not retried
    assert "HTTP 401" in row.last_error
    refused = ds.wrong.requests()
    assert len(refused) == 1
    assert refused[0]["verified"] is False
    assert refused[0]["status"] == 401


@pytest.mark.parametrize(
    "url",
    ["private", "http://10.0.0.1/hook", "https://169.254.169.254/latest", "https://localhost/x"],
)
def test_a_webhook_to_a_private_address_is_refused_and_never_called(
    ds: DeliveryStack, url: str
) -> None:
    target = ds.private.url if url == "private" else url
    job_id = ds.send(request(webhook={"url": target}))
    job = ds.wait_ended([job_id], timeout=30)[job_id]
    assert job.error_code is ErrorCode.INVALID_REQUEST
    assert "webhook.url" in (job.error_message or "")
    assert ds.deliveries() == []
    assert ds.private.requests() == []
    assert ds.sim_stats()["submits_accepted"] == 0


def _run_deliveries_through(ds: DeliveryStack, fault: str, report: dict[str, Any]) -> None:
    """Thirty jobs with both channels; ``fault`` strikes while every webhook is still pending
    (the receiver answers 503 until after it)."""
    ds.set_failing(600)
    ids = [ds.send(ds.with_channels()) for _ in range(30)]
    ds.wait_ended(ids, timeout=60)

    def all_tried() -> bool:
        hooks = [r for r in ds.deliveries() if r.channel == "webhook"]
        return len(hooks) == 30 and all(r.attempts >= 1 and r.state == "pending" for r in hooks)

    ds.wait_for(all_tried, 30, "every webhook tried once and pending")
    ds.wait_for(lambda: len(ds.replies()) >= 30, 30, "the replies consumed")
    if fault == "sigkill":
        victim = ds.workers[0]
        victim.kill()
        ds.workers.remove(victim)
        ds.start_delivering_worker(f"d-after-{uuid.uuid4().hex[:4]}")
    else:
        ds.redis().flushdb()
    ds.set_failing(0)
    _wait_delivered(ds, 60, timeout=150)
    hooks = Counter(r["webhook_id"] for r in ds.receiver.delivered())
    replies = Counter(r["task_id"] for r in ds.replies())
    expected = {r.id for r in ds.deliveries()}
    got = set(hooks) | set(replies)
    report.update(
        fault=fault,
        deliveries_expected=len(expected),
        delivered=len(got & expected),
        duplicated=sum(n - 1 for n in hooks.values()) + sum(n - 1 for n in replies.values()),
        lost=len(expected - got),
    )
    assert got == expected
    assert {r["body"]["data"]["id"] for r in ds.receiver.delivered()} == set(ids)


def test_a_worker_killed_in_the_middle_of_deliveries_loses_none(
    ds: DeliveryStack, report: dict[str, Any]
) -> None:
    _run_deliveries_through(ds, "sigkill", report)


def test_redis_flushed_with_deliveries_pending_loses_none(
    ds: DeliveryStack, report: dict[str, Any]
) -> None:
    _run_deliveries_through(ds, "flush", report)


def _node(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    node = node_binary()
    return subprocess.run(
        [node, str(REPO / "tests" / "node" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_node_backend_gets_its_replies_and_verifies_webhooks(ds: DeliveryStack) -> None:
    ids = [
        ds.send(
            request(
                webhook={"url": ds.receiver.url},
                reply_to={"task": "node.job_done", "queue": "node.results"},
            )
        )
        for _ in range(3)
    ]
    ds.wait_ended(ids, timeout=30)
    consumed = _node("reply_consumer.mjs", ds.broker_url, "node.results", "3", "60")
    assert consumed.returncode == 0, consumed.stderr
    lines = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert {line["job"]["id"] for line in lines} == set(ids)
    assert {line["task"] for line in lines} == {"node.job_done"}
    assert all(line["job"]["status"] == "succeeded" for line in lines)
    # the webhooks, as received, verified again by Node's own standardwebhooks
    _wait_delivered(ds, 6)
    for hook in ds.receiver.delivered():
        case = ds.root / f"verify-{hook['webhook_id']}.json"
        case.write_text(
            json.dumps({"secret": SECRET, "headers": hook["headers"], "body": hook["raw"]})
        )
        verified = _node("verify_webhook.mjs", str(case))
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.strip() == "job.succeeded"
        case.write_text(
            json.dumps({"secret": OLD_SECRET, "headers": hook["headers"], "body": hook["raw"]})
        )
        assert _node("verify_webhook.mjs", str(case)).returncode == 0  # rotated: both sign
        wrong = "whsec_" + base64.b64encode(b"x" * 32).decode()
        case.write_text(
            json.dumps({"secret": wrong, "headers": hook["headers"], "body": hook["raw"]})
        )
        assert _node("verify_webhook.mjs", str(case)).returncode == 1
