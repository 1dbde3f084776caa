"""Secrets: a recognisable fake API key, sent through every job path, ends up nowhere.

One real worker runs jobs that succeed, fail upstream, get a submit 500 and get their key
refused, next to Flower behind basic auth. Then every place an operator or another
process can read is searched for the key (plain, its first 16 characters, base64 at any
alignment): the logs of the worker, Flower and the simulator (which legitimately receives
the key in headers but must not write it down), every database row, every Redis key and
value (kombu message bodies decoded), every Flower page and API answer, and the argv of
every process the stack started. Flower's password is searched for the same way, and
Flower must refuse anyone without it.

The services' logs are JSON (one object per line): every line must parse, and its decoded
values are searched too (an escape in JSON text could hide a needle from the raw search),
along with the payload of a data URL one job was sent with (its request may be stored, in
the database and Redis, but never logged).

Run it on a Redis db nobody else uses (IMAGEGEN_TEST_REDIS_DB) when other test runs share
the machine: workers of another run on the same db would take this run's messages.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis import Redis

from api_schema import ErrorCode, JobStatus, names
from tests.flower import Flower, running_flower, wait_value
from tests.harness import API_KEY, Stack, request, tiny_png

FLOWER_USER = "ops"


# --- what is searched for --------------------------------------------------------------
def _base64_forms(secret: str) -> list[str]:
    """The secret's base64 at each of the 3 byte alignments it can have inside a longer
    encoded blob (the edge characters depend on the neighbours, so they are cut off)."""
    raw = secret.encode()
    forms = [base64.b64encode(raw).decode().rstrip("=")]
    for shift in (1, 2):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        forms.append(encoded[4:-4])
    for encoded in list(forms):
        forms.append(encoded.replace("+", "-").replace("/", "_"))  # urlsafe
    return sorted(set(forms))


def _needles(password: str) -> dict[str, str]:
    needles = {"API key": API_KEY, "API key prefix": API_KEY[:16]}
    for i, form in enumerate(_base64_forms(API_KEY)):
        needles[f"API key base64 #{i}"] = form
    needles["Flower password"] = password
    return needles


def _json_log_texts(log: str, where: str) -> list[str]:
    """Every line of a JSON log, and every string decoded from it (keys and values)."""
    texts: list[str] = []
    for number, line in enumerate(log.splitlines(), start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{where} line {number} is not JSON: {line[:200]!r}") from None
        assert isinstance(entry, dict) and "event" in entry, (where, line[:200])
        texts.append(line)
        stack: list[Any] = [entry]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                texts.extend(str(k) for k in node)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
            elif isinstance(node, str):
                texts.append(node)
    return texts


def _find(needles: dict[str, str], where: str, texts: Iterable[str]) -> list[str]:
    """Every (needle, place) hit, with a little context."""
    hits = []
    for text in texts:
        for label, needle in needles.items():
            at = text.find(needle)
            if at >= 0:
                context = text[max(0, at - 80) : at + len(needle) + 80]
                hits.append(f"{label} in {where}: ...{context!r}...")
    return hits


# --- collecting what can be read ---------------------------------------------------------
def _expand(raw: bytes | str, bodies: list[str]) -> Iterator[str]:
    """The text of a stored value, plus every base64 kombu body inside it, decoded."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    yield text
    try:
        parsed = json.loads(text)
    except ValueError:
        return
    stack: list[Any] = [parsed]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            body, props = node.get("body"), node.get("properties")
            if (
                isinstance(body, str)
                and isinstance(props, dict)
                and props.get("body_encoding") == "base64"
            ):
                decoded = base64.b64decode(body).decode("utf-8", errors="replace")
                bodies.append(decoded)
                yield from _expand(decoded, bodies)
            stack.extend(node.values())


def _redis_dump(redis: Redis) -> tuple[list[str], list[str]]:
    """Every key and value of the stack's Redis db, and the kombu bodies found in them."""
    texts: list[str] = []
    bodies: list[str] = []
    for key in cast(Iterable[bytes], redis.scan_iter(count=1000)):
        texts.append(key.decode(errors="replace"))
        kind = cast(bytes, redis.type(key)).decode()
        values: list[bytes] = []
        if kind == "string":
            value = cast(bytes | None, redis.get(key))
            values = [value] if value is not None else []
        elif kind == "list":
            values = cast(list[bytes], redis.lrange(key, 0, -1))
        elif kind == "hash":
            items = cast(dict[bytes, bytes], redis.hgetall(cast(str, key))).items()
            values = [part for item in items for part in item]
        elif kind == "set":
            values = list(cast(set[bytes], redis.smembers(key)))
        elif kind == "zset":
            values = [
                m
                for m, _ in cast(
                    list[tuple[bytes, float]], redis.zrange(key, 0, -1, withscores=True)
                )
            ]
        elif kind == "stream":
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis.xrange(key))
            values = [p for _, fields in entries for item in fields.items() for p in item]
        # "none": the key vanished between SCAN and TYPE
        for value in values:
            texts.extend(_expand(value, bodies))
    return texts, bodies


def _db_dump(live: Stack) -> list[str]:
    """Every row of every table of the stack's database, as JSON text."""
    tables = [
        r[0]
        for r in live.sql(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
    ]
    assert {"jobs", "job_events", "job_images", "job_aliases"} <= set(tables), tables
    rows: list[str] = []
    for table in tables:  # names from information_schema, not from input
        statement = f'SELECT row_to_json(t)::text FROM "{table}" t'  # noqa: S608
        rows += [r[0] for r in live.sql(statement)]
    return rows


def _session_members(leaders: Iterable[int]) -> list[int]:
    """Every live process in the sessions the given processes lead (their children too)."""
    wanted = set(leaders)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) in wanted:
            found.append(int(entry.name))
    return found


def _cmdlines(pids: Iterable[int]) -> dict[int, str]:
    lines = {}
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        lines[pid] = raw.replace(b"\0", b" ").decode(errors="replace")
    return lines


# --- waiting -----------------------------------------------------------------------------
@pytest.fixture
def flower(live: Stack) -> Iterator[Flower]:
    """``imagegen flower`` behind basic auth on a free port."""
    with running_flower(live, FLOWER_USER) as flower:
        yield flower


def test_api_key_and_flower_password_leak_nowhere(live: Stack, flower: Flower) -> None:
    flower_proc, password, client = flower.proc, flower.password, flower.client
    needles = _needles(password)
    hits: list[str] = []
    worker = live.workers[0]
    assert live.sim is not None
    # Positive controls: the worker really holds the key and Flower the password (in their
    # environment, where they belong), so finding them nowhere else means something.
    assert API_KEY.encode() in Path(f"/proc/{worker.popen.pid}/environ").read_bytes()
    assert password.encode() in Path(f"/proc/{flower_proc.popen.pid}/environ").read_bytes()

    # --- Flower refuses anyone without the right credentials ------------------------------
    bad_auths: list[tuple[str, str] | None] = [
        None,
        (FLOWER_USER, "wrong-" + password),
        ("intruder", password),
        (FLOWER_USER, ""),
    ]
    for path in ("/", "/api/workers", "/api/tasks", "/tasks", "/broker"):
        for auth in bad_auths:
            response = httpx.get(f"{flower.url}{path}", auth=auth, timeout=10)
            assert response.status_code == 401, (path, auth, response.status_code)
        # a malformed header is refused too, not an error page
        response = httpx.get(
            f"{flower.url}{path}", headers={"Authorization": "Basic !!!"}, timeout=10
        )
        assert response.status_code == 401, (path, "malformed", response.status_code)

    def worker_seen() -> bool | None:
        # Flower's events receiver is connected once it has heard the worker's heartbeat
        data = client.get("/workers", params={"json": 1}).json()["data"]
        return True if any(w["hostname"].startswith("w1@") for w in data) else None

    wait_value(worker_seen, 30, "Flower hearing the worker's events")

    # --- a job in flight: every Redis key and message, bodies decoded ----------------------
    # A slow submit holds the generate message (unacked, acks are late) while the POST is
    # under way; a long task then keeps poll messages coming.
    live.sim_configure(processing_seconds=60, faults={"latency_ms": 1000})
    body = request()
    in_flight = live.send(body)
    redis = live.redis()

    def dump_holding(marker: str) -> Callable[[], tuple[list[str], list[str]] | None]:
        def probe() -> tuple[list[str], list[str]] | None:
            texts, bodies = _redis_dump(redis)
            return (texts, bodies) if any(marker in b for b in bodies) else None

        return probe

    # the generate body holds the request (the prompt), not the job id (that is a header)
    texts, _ = wait_value(dump_holding(body["prompt"]), 15, "the generate message in Redis")
    hits += _find(needles, "Redis while a job is submitted", texts)
    live.sim_configure(faults={"latency_ms": 0})
    live.wait_status(in_flight, {"pending", "processing"})
    # a poll body is [[job_id, seq], {}, {...}]
    texts, _ = wait_value(dump_holding(in_flight), 15, "the in-flight job's poll message in Redis")
    hits += _find(needles, "Redis while a job is polled", texts)

    from worker import jobs
    from worker.db import session_scope

    with session_scope() as session:
        done, _ = jobs.cancel(session, in_flight)
    assert done
    ended = live.wait_ended([in_flight], timeout=20)[in_flight]
    assert (ended.status, ended.error_code) == (JobStatus.CANCELLED, ErrorCode.CANCELLED)
    live.sim_reset()

    # --- jobs down every path that writes an error message ---------------------------------
    data_url = tiny_png()
    log_needles = {"data URL payload": data_url.split(",", 1)[1][:40]}
    expected: dict[str, tuple[JobStatus, ErrorCode | None]] = {
        in_flight: (JobStatus.CANCELLED, ErrorCode.CANCELLED)
    }
    scenarios: list[tuple[dict[str, Any], dict[str, Any], JobStatus, ErrorCode | None]] = [
        ({}, request(n=2), JobStatus.SUCCEEDED, None),
        ({}, request(n=2, subject_reference_images=[data_url]), JobStatus.SUCCEEDED, None),
        ({"faults": {"fail_task": 1.0}}, request(), JobStatus.FAILED, ErrorCode.UPSTREAM_FAILED),
        (
            {"faults": {"submit_500": 1.0}},
            request(),
            JobStatus.FAILED,
            ErrorCode.SUBMIT_OUTCOME_UNKNOWN,
        ),
        ({"keys": {"other": "team-b"}}, request(), JobStatus.FAILED, ErrorCode.UPSTREAM_AUTH),
        ({}, request(width=1000), JobStatus.FAILED, ErrorCode.INVALID_REQUEST),
    ]
    for sim_changes, job_body, status, code in scenarios:
        if sim_changes:
            live.sim_configure(**sim_changes)
        job_id = live.send(job_body)
        job = live.wait_ended([job_id], timeout=30)[job_id]
        assert (job.status, job.error_code) == (status, code), job.error_message
        if status is JobStatus.SUCCEEDED:
            assert len(job.images) == 2
        expected[job_id] = (status, code)
        live.sim_reset()

    # --- the HTTP API: a job through it, every kind of answer, its log -----------------------
    token = f"audit-token-{secrets.token_hex(16)}"
    needles["HTTP API token"] = token
    api = live.start_api({"audit": token})
    api_proc = live.apis[api]
    assert API_KEY.encode() in Path(f"/proc/{api_proc.popen.pid}/environ").read_bytes()
    answers: list[str] = []
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}) as http:
        posted = http.post("/v1/jobs", json=request(), headers={"Idempotency-Key": "audit-1"})
        assert posted.status_code == 202, posted.text
        via_api = posted.json()["id"]
        job = live.wait_ended([via_api], timeout=30)[via_api]
        assert job.status is JobStatus.SUCCEEDED, job.error_message
        expected[via_api] = (JobStatus.SUCCEEDED, None)
        image = http.get(f"/v1/jobs/{via_api}/images/0")
        assert image.status_code == 200
        answers += [posted.text, str(image.headers)]
        for method, path in (
            ("GET", f"/v1/jobs/{via_api}"),
            ("GET", "/v1/jobs?limit=200"),
            ("POST", f"/v1/jobs/{via_api}/cancel"),
            ("GET", "/readyz"),
            ("GET", "/v1/openapi.json"),
            ("GET", f"/v1/jobs/{in_flight}"),  # another tenant's: 404
        ):
            response = http.request(method, path)
            assert response.status_code < 500, (path, response.status_code)
            answers += [response.text, str(response.headers)]
        for bad in ("Bearer " + token[:-1], "Bearer " + token.upper(), "Basic " + token):
            refused = httpx.get(f"{api}/v1/jobs", headers={"Authorization": bad})
            assert refused.status_code == 401
            answers += [refused.text, str(refused.headers)]
        invalid = http.post("/v1/jobs", json={"prompt": API_KEY, "subject_reference_images": []})
        assert invalid.status_code == 422
        # The refusal names the field, never echoes the value (which may be anything).
        answers.append(invalid.text)
    hits += _find(needles, "the HTTP API's answers", answers)

    # --- Flower saw all of it ------------------------------------------------------------------
    def flower_tasks() -> dict[str, Any] | None:
        tasks = cast(dict[str, Any], client.get("/api/tasks").json())
        generated = [tasks.get(j, {}).get("state") for j in expected]
        kinds = {t.get("name") for t in tasks.values()}
        # (a request whose own task failed its job, invalid or POSTed inline, is a FAILURE)
        seen = all(s in ("SUCCESS", "FAILURE") for s in generated)
        # (a job admitted by its own accept is submitted inline, so no submit task may exist)
        return tasks if seen and names.POLL_TASK in kinds else None

    tasks = wait_value(flower_tasks, 30, "Flower recording every job's tasks")

    # --- search everything ------------------------------------------------------------------
    pages = [
        "/",
        "/workers",
        "/workers?json=1",
        "/workers?refresh=1",
        "/dashboard",
        "/tasks",
        "/tasks/datatable?draw=1&start=0&length=1000&order%5B0%5D%5Bcolumn%5D=0"
        "&columns%5B0%5D%5Bdata%5D=name&order%5B0%5D%5Bdir%5D=asc",
        "/broker",
        "/metrics",
        "/healthcheck",
        "/api/workers",
        "/api/workers?refresh=1",
        "/api/tasks",
        "/api/task/types",
        "/api/queues/length",
    ]
    worker_names = list(client.get("/api/workers", params={"refresh": 1}).json())
    assert any(n.startswith("w1@") for n in worker_names), worker_names
    pages += [f"/worker/{n}" for n in worker_names]
    pages += [f"/api/task/info/{t}" for t in tasks] + [f"/task/{t}" for t in tasks]
    not_ok = {}
    for page in pages:
        response = client.get(page)
        if response.status_code != 200:
            not_ok[page] = response.status_code
        hits += _find(needles, f"Flower {page}", [response.text])
    assert not_ok == {"/dashboard": 404}, not_ok  # Flower 2 has no /dashboard any more

    texts, _ = _redis_dump(redis)
    hits += _find(needles, "Redis after the jobs", texts)
    hits += _find(needles, "the database", _db_dump(live))
    for proc in (worker, flower_proc, live.sim, api_proc):
        log = proc.log_path.read_text(errors="replace")
        assert log.strip(), f"{proc.name} wrote no log at {proc.log_path}"
        texts = _json_log_texts(log, f"{proc.name}'s log")
        hits += _find(needles | log_needles, f"{proc.name}'s log", texts)

    # --- nothing secret in any argv of the stack's processes (what `ps` shows) --------------
    leaders = [p.popen.pid for p in live.sup.procs if p.alive()]
    assert {worker.popen.pid, flower_proc.popen.pid, live.sim.popen.pid, api_proc.popen.pid} <= set(
        leaders
    )
    cmdlines = _cmdlines(_session_members(leaders))
    for proc, word in (
        (worker, "worker"),
        (flower_proc, "flower"),
        (live.sim, "simulator"),
        (api_proc, "api"),
    ):
        assert word in cmdlines.get(proc.popen.pid, ""), (proc.name, cmdlines)
    for pid, line in cmdlines.items():
        hits += _find(needles, f"argv of pid {pid}", [line])

    live.stop_api(api)
    assert not hits, "secret leaked:\n" + "\n".join(hits)
