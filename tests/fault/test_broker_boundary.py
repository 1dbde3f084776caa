"""Internal messages cannot be forged into effect; ids and keys cannot be reused for another
request; storage paths never come from raw input. On a real worker, by a hostile producer
that can write to every list (no Redis ACLs here: the ACL test shows producers normally
cannot even reach the internal queues)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from api_schema import (
    GENERATE_TASK,
    POLL_TASK,
    REQUESTS_QUEUE,
    SUBMIT_TASK,
    SWEEP_TASK,
    UPSTREAM_QUEUE,
    ErrorCode,
    JobStatus,
)
from tests.harness import Stack, request

pytestmark = pytest.mark.timeout(120)
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _forge(live: Stack, queue: str, task: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """An unsigned protocol 2 entry pushed straight onto ``queue``."""
    task_id = str(uuid.uuid4())
    body = json.dumps([args, kwargs, EMBED]).encode()
    entry = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": task_id, "retries": 0, "eta": None},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }
    live.redis().lpush(queue, json.dumps(entry).encode())
    return task_id


def _dropped_for(live: Stack, task_id: str) -> list[Any]:
    return live.sql("SELECT task, reason FROM dropped_messages WHERE message_id = :i", i=task_id)


def _wait_dropped(live: Stack, task_id: str) -> str:
    rows: list[Any] = []

    def found() -> bool:
        rows[:] = _dropped_for(live, task_id)
        return bool(rows)

    live.wait_for(found, timeout=20, what=f"a dropped_messages row for {task_id}")
    return str(rows[0].reason)


def test_forged_submit_cannot_take_over_a_job_in_flight(live: Stack) -> None:
    live.sim_configure(pending_seconds=0.0, processing_seconds=1.0)
    donor = live.send(request())
    done = live.wait_ended([donor], timeout=30)[donor]
    assert done.upstream_task_id is not None
    # The victim's POST is slow; while it is in flight a forged submit names the donor's task.
    live.sim_configure(faults={"latency_ms": 1500}, processing_seconds=0.3)
    victim = live.send(request())
    live.wait_for(
        lambda: (
            live.sql("SELECT submit_started_at IS NOT NULL FROM jobs WHERE id = :i", i=victim)
            == [(True,)]
        ),
        timeout=20,
        what="the victim's POST under way",
    )
    forged = _forge(
        live, UPSTREAM_QUEUE, SUBMIT_TASK, [victim], {"upstream_task_id": done.upstream_task_id}
    )
    assert "signature" in _wait_dropped(live, forged)
    job = live.wait_ended([victim], timeout=30)[victim]
    assert job.status is JobStatus.SUCCEEDED, job
    assert job.upstream_task_id not in (None, done.upstream_task_id)
    assert [i.url for i in job.images] != [i.url for i in done.images]


def test_signed_submit_for_another_post_attempt_is_not_recorded(live: Stack) -> None:
    # Even a validly signed message (a stale retry) records a task id only for the POST
    # attempt that produced it.
    live.sim_configure(processing_seconds=30)
    job_id = live.send(request())
    live.wait_status(job_id, {"pending", "processing"})
    live.sql(
        "UPDATE jobs SET status = 'submitting', upstream_task_id = NULL, submit_attempts = 2 "
        "WHERE id = :i",
        i=job_id,
    )
    live.send_signed(SUBMIT_TASK, (job_id,), {"upstream_task_id": "task_forged", "attempt": 1})
    live.send_signed(SUBMIT_TASK, (job_id,), {"upstream_task_id": "task_right", "attempt": 2})
    recorded: list[Any] = []

    def stored() -> bool:
        recorded[:] = live.sql("SELECT upstream_task_id FROM jobs WHERE id = :i", i=job_id)
        return recorded[0][0] is not None

    live.wait_for(stored, timeout=20, what="an upstream task id recorded")
    assert recorded[0][0] == "task_right"
    # both messages ran (whichever first): the forged attempt changed nothing
    live.wait_for(lambda: live.redis().llen(UPSTREAM_QUEUE) == 0, 20, "both submits consumed")


def test_forged_polls_spend_no_request_budget(live: Stack) -> None:
    # Unsigned: dropped before any work. Signed (a stale worker message) for jobs that do not
    # exist: refused by the database before a request token is taken, never retried.
    forged = [_forge(live, UPSTREAM_QUEUE, POLL_TASK, [f"ghost-{i}", 0], {}) for i in range(20)]
    for task_id in forged:
        assert "signature" in _wait_dropped(live, task_id)
    for i in range(20):
        live.send_signed(POLL_TASK, (f"ghost-signed-{i}", 0))
    job_id = live.send(request())
    job = live.wait_ended([job_id], timeout=30)[job_id]
    assert job.status is JobStatus.SUCCEEDED
    live.wait_for(lambda: live.redis().llen(UPSTREAM_QUEUE) == 0, 20, "upstream queue drained")
    log = live.workers[0].log_path.read_text(errors="replace")
    assert log.count("'stale'") >= 20  # each signed ghost poll ended at once, no retry
    assert "Retry in" not in "".join(line for line in log.splitlines() if "ghost" in line)
    # the only upstream requests are the real job's
    assert live.sim_stats()["submits_accepted"] == 1


@pytest.mark.parametrize(
    ("task", "args", "kwargs"),
    [
        ("imagegen.noop", [], {"counter": UPSTREAM_QUEUE}),
        ("imagegen.noop", [], {"counter": "unacked_mutex"}),
        (GENERATE_TASK, [], {"request": request()}),
        (SWEEP_TASK, [], {}),
        (POLL_TASK, ["job", "0"], {}),
    ],
    ids=["noop-queue", "noop-mutex", "generate-on-upstream", "sweep-on-upstream", "poll-seq-str"],
)
def test_unsigned_or_misplaced_internal_messages_are_dropped(
    live: Stack, task: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    forged = _forge(live, UPSTREAM_QUEUE, task, args, kwargs)
    reason = _wait_dropped(live, forged)
    assert "signature" in reason or "not accepted" in reason
    r = live.redis()
    assert r.type(UPSTREAM_QUEUE) in (b"list", b"none")
    assert r.type("unacked_mutex") in (b"string", b"none")
    assert live.workers[0].alive()
    probe = live.send(request())
    assert live.wait_ended([probe], timeout=30)[probe].status is JobStatus.SUCCEEDED


def test_the_same_key_with_another_request_is_refused(live: Stack) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    first = live.send(request(idempotency_key=key, metadata={"owner": "team-a"}))
    assert live.wait_ended([first], timeout=30)[first].status is JobStatus.SUCCEEDED
    same = live.send(request(idempotency_key=key, metadata={"owner": "team-a"}))  # new prompt
    again = live.wait_ended([same], timeout=30)[same]
    assert again.id == same
    assert again.status is JobStatus.FAILED
    assert again.error_code is ErrorCode.INVALID_REQUEST
    assert "idempotency_key" in (again.error_message or "")
    assert again.metadata is None  # never the first job's data
    assert again.upstream_task_id is None
    assert live.sim_stats()["submits_accepted"] == 1


def test_the_same_key_with_the_same_request_returns_the_same_job(live: Stack) -> None:
    body = request(idempotency_key=f"order-{uuid.uuid4().hex[:8]}")
    first = live.send(body)
    second = live.send(body)
    views = live.wait_ended([first, second], timeout=30)
    assert views[first].id == views[second].id
    assert views[first].status is JobStatus.SUCCEEDED
    assert live.sim_stats()["submits_accepted"] == 1


def test_the_same_job_id_with_another_request_is_refused(live: Stack) -> None:
    job_id = live.send(request(metadata={"v": 1}))
    assert live.wait_ended([job_id], timeout=30)[job_id].status is JobStatus.SUCCEEDED
    live.send(request(metadata={"v": 2}), job_id=job_id)
    reason = _wait_dropped(live, job_id)
    assert "different request" in reason
    view = live.views([job_id])[job_id]
    assert view is not None
    assert view.metadata == {"v": 1}
    assert live.sim_stats()["submits_accepted"] == 1


def test_an_alias_id_reused_with_another_key_does_not_shadow_it(live: Stack) -> None:
    key = f"k-{uuid.uuid4().hex[:8]}"
    body = request(idempotency_key=key)
    original = live.send(body)
    alias = live.send(body)  # another id, same key and request: an alias of the original
    views = live.wait_ended([original, alias], timeout=30)
    assert views[alias].id == original
    live.send(request(idempotency_key=f"other-{key}"), job_id=alias)
    assert "different request" in _wait_dropped(live, alias)
    assert live.views([alias])[alias].id == original  # type: ignore[union-attr]
    assert live.sim_stats()["submits_accepted"] == 1


@pytest.mark.parametrize("ids", [["..", "../x"], ["coll_X", "coll/X"], ["/abs", "%2e%2e"]])
def test_storage_paths_never_come_from_the_job_id(live: Stack, ids: list[str]) -> None:
    for job_id in ids:
        live.send(request(), job_id=job_id)
    views = live.wait_ended(ids, timeout=30)
    root = live.storage_dir.resolve()
    paths = [Path(v.images[0].stored_path or "") for v in views.values()]
    assert all(v.status is JobStatus.SUCCEEDED for v in views.values()), views
    assert all(p.resolve().is_relative_to(root) for p in paths), paths
    assert len({p.parent for p in paths}) == len(ids), paths
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_delayed_request_is_refused_at_once(live: Stack) -> None:
    from api_schema.producer import producer_app

    job_id = str(uuid.uuid4())
    producer_app(live.broker_url).send_task(
        GENERATE_TASK,
        kwargs={"request": request()},
        task_id=job_id,
        queue=REQUESTS_QUEUE,
        countdown=10**8,
    )
    started = time.monotonic()
    job = live.wait_ended([job_id], timeout=20)[job_id]
    assert time.monotonic() - started < 20
    assert job.error_code is ErrorCode.INVALID_REQUEST
    assert "message.eta" in (job.error_message or "")
    live.wait_for(lambda: live.redis().hlen("unacked") == 0, 20, "nothing held unacked")


# --- what a hostile or broken upstream sends back ----------------------------------------


def _key_forms(key: str) -> dict[str, str]:
    from urllib.parse import quote

    return {
        "upper": key.upper(),
        "middle": key[7:19],
        "base64": base64.b64encode(key.encode()).decode(),
        "bearer-base64": base64.b64encode(f"Bearer {key}".encode()).decode(),
        "percent": quote(key, safe=""),
        "percent-all": "".join(f"%{b:02X}" for b in key.encode()),
    }


def _leaks(text: str, key: str) -> list[str]:
    lowered = text.lower()
    return [name for name, form in _key_forms(key).items() if form.lower() in lowered]


def test_a_failed_tasks_text_is_stored_masked_in_every_form(live: Stack) -> None:
    from tests.harness import API_KEY

    echo = " | ".join(f"{name}={form}" for name, form in _key_forms(API_KEY).items())
    live.sim_configure(faults={"fail_task": 1.0, "fail_reason": f"bad credentials: {echo}"})
    job_id = live.send(request())
    job = live.wait_ended([job_id], timeout=30)[job_id]
    assert job.error_code is ErrorCode.UPSTREAM_FAILED, job
    text = job.error_message or ""
    assert "bad credentials" in text
    assert _leaks(text, API_KEY) == [], text
    events = " ".join(str(r[0]) for r in live.sql("SELECT detail FROM job_events"))
    assert _leaks(events, API_KEY) == []
    log = live.workers[0].log_path.read_text(errors="replace")
    assert _leaks(log, API_KEY) == []


@pytest.mark.parametrize("fmt", ["x" * 40, "../../../etc/passwd", "exe"])
def test_an_unusable_upstream_answer_fails_the_job_clearly(live: Stack, fmt: str) -> None:
    live.sim_configure(faults={"result_format": fmt})
    job_id = live.send(request())
    job = live.wait_ended([job_id], timeout=30)[job_id]
    assert job.status is JobStatus.FAILED, job
    assert job.error_code is ErrorCode.UPSTREAM_INVALID_RESPONSE, job
    assert "format" in (job.error_message or "")
    assert not any(live.storage_dir.rglob("passwd"))
    log = live.workers[0].log_path.read_text(errors="replace")
    assert "DataError" not in log
    probe_fmt = live.sim_configure(faults={"result_format": None})
    assert probe_fmt is None
    probe = live.send(request())
    assert live.wait_ended([probe], timeout=30)[probe].status is JobStatus.SUCCEEDED


# --- memory for the largest request ----------------------------------------------------


def _rss(pid: int) -> tuple[int, int]:
    """(resident, peak resident) bytes of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def _noise_png(size: int) -> str:
    """A real PNG of about ``size`` bytes that does not compress (random pixels)."""
    import io
    import math
    import os

    from PIL import Image

    side = int(math.sqrt(size / 3))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        buffer, format="PNG", compress_level=0
    )
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_worker_memory_for_the_largest_requests(live: Stack, report: dict[str, Any]) -> None:
    from api_schema import MAX_REQUEST_BYTES, GenerationRequest

    pid = live.workers[0].popen.pid
    rss_before, peak_before = _rss(pid)
    # The largest request accepted: two incompressible PNGs, just under the 16 MiB cap.
    largest = request(subject_reference_images=[_noise_png(5_900_000)] * 2)
    size = GenerationRequest.model_validate(largest).json_size()
    assert MAX_REQUEST_BYTES - 1024 * 1024 < size <= MAX_REQUEST_BYTES
    job_id = live.send(largest)
    job = live.wait_ended([job_id], timeout=60)[job_id]
    assert job.status is JobStatus.SUCCEEDED, job
    rss_after, peak_after = _rss(pid)
    # What the issue measured: ten 9 MiB data URLs, about 120 MiB as a message, pushed raw.
    huge = str(uuid.uuid4())
    body = json.dumps(
        [[], {"request": request(subject_reference_images=[_noise_png(9 * 2**20)] * 10)}, EMBED]
    ).encode()
    entry = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": GENERATE_TASK, "id": huge},
        "properties": {"delivery_tag": huge, "body_encoding": "base64"},
    }
    raw = json.dumps(entry).encode()
    del body, entry
    live.redis().lpush(REQUESTS_QUEUE, raw)
    assert "over the" in _wait_dropped(live, huge)
    _, peak_huge = _rss(pid)
    report.update(
        request_json_bytes=size,
        rss_before_mb=round(rss_before / 2**20),
        peak_before_mb=round(peak_before / 2**20),
        rss_after_largest_mb=round(rss_after / 2**20),
        peak_after_largest_mb=round(peak_after / 2**20),
        huge_entry_mb=round(len(raw) / 2**20),
        peak_after_huge_entry_mb=round(peak_huge / 2**20),
    )
    # A sanity bound, not a target (the figures are in the report line): the largest request
    # costs a few copies of itself at most, and the huge entry is refused unparsed.
    assert peak_after - peak_before < 16 * MAX_REQUEST_BYTES
    assert peak_huge - max(peak_after, peak_before) < 4 * len(raw)


def test_a_valid_request_reusing_a_refused_jobs_id_is_refused(live: Stack) -> None:
    invalid = request(n=0)
    job_id = live.send(invalid)
    first = live.wait_ended([job_id], timeout=30)[job_id]
    assert first.error_code is ErrorCode.INVALID_REQUEST
    live.send(invalid, job_id=job_id)  # the same message again: a redelivery
    live.send(request(), job_id=job_id)  # another request under the taken id
    assert "already names a different request" in _wait_dropped(live, job_id)
    live.wait_for(lambda: live.redis().llen(REQUESTS_QUEUE) == 0, 20, "requests consumed")
    assert len(_dropped_for(live, job_id)) == 1
    assert live.views([job_id])[job_id].error_code is ErrorCode.INVALID_REQUEST  # type: ignore[union-attr]
    assert live.sim_stats()["submits_accepted"] == 0
