"""``python -m devtools bench api``: the HTTP API's requests/s and latency, next to a trivial
endpoint of the same server in the same run.

``imagegen api`` runs as a user starts it (one process, default settings) over a fresh
stack with one worker, so POSTed jobs are accepted and queue behind the upstream's limit.
Each cell (endpoint x concurrency) is a fixed time of closed-loop clients, after a warm-up:

* ``GET /healthz``: async, a constant body; the baseline of the same server stack.
* ``POST /v1/jobs``: a user's request (a prompt, one https reference, sometimes ``n`` and
  ``aspect_ratio``), a different prompt each time; once without and once with an
  ``Idempotency-Key`` (a new key each time, so each makes a job).
* ``GET /v1/jobs/{id}``: a mix of the jobs the POSTs made.

The load generator is a process of its own (spawned, so it shares no GIL and imports
nothing of the stack): uvloop, and hand-written keep-alive HTTP/1.1 on asyncio protocols,
one connection per client. It measures its own CPU (getrusage) and that of the API process,
the worker, the stack's PostgreSQL backends and the whole box over each window, so a reader
can judge whether it was the bottleneck (and how busy the box was with anything else).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import resource
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

if TYPE_CHECKING:
    from rich.console import Console

    from .stack import LocalStack

TENANT: Final = "bench"
TOKEN: Final = "bench-api-token-0123456789abcdef"  # noqa: S105 - a throwaway local stack's
REFERENCE: Final = "https://example.com/reference.jpg"
REDIS_DB: Final = 13

HEALTHZ: Final = "healthz"
POST: Final = "post"
POST_KEY: Final = "post_key"
GET: Final = "get"
#: In the order they are measured at each concurrency (GET reads what the POSTs made).
ENDPOINTS: Final = (HEALTHZ, POST, POST_KEY, GET)
LABELS: Final = {
    HEALTHZ: "GET /healthz",
    POST: "POST /v1/jobs",
    POST_KEY: "POST /v1/jobs +key",
    GET: "GET /v1/jobs/{id}",
}
SHORT: Final = {HEALTHZ: "healthz", POST: "POST", POST_KEY: "POST+key", GET: "GET job"}
EXPECTED: Final = {HEALTHZ: 200, POST: 202, POST_KEY: 202, GET: 200}
#: Rate of the endpoint / rate of /healthz at the same concurrency, at least.
RATIO_TARGETS: Final = {GET: 0.5, POST: 0.3, POST_KEY: 0.3}
P99_TARGET_MS: Final = 50.0
P99_TARGET_CLIENTS: Final = 16
#: Extra request fields, in turn: what users send besides the prompt and the reference.
VARIANTS: Final = ("", ',"n":2', ',"aspect_ratio":"16:9"', ',"n":4,"aspect_ratio":"3:4"')
SUBJECTS: Final = ("a lighthouse keeper", "a violinist", "a red fox", "an old sailor")
#: Seconds a client waits for its last answer after the window before it counts as an error.
STRAGGLER_SECONDS: Final = 30.0
MAX_GET_IDS: Final = 20_000


# --- the load generator (runs in its own process) -----------------------------------------


@dataclass(frozen=True)
class CellSpec:
    """One cell's load: sent to the load process."""

    host: str
    port: int
    endpoint: str
    clients: int
    warmup: float
    seconds: float
    run: str
    ids: tuple[str, ...] = ()
    #: pids whose CPU time is read at the window's edges, by name (a process with children
    #: lists them all).
    watch: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: The stack's database: the CPU of its PostgreSQL backends is measured too.
    database: str = ""


@dataclass
class CellResult:
    """What one cell measured (latencies of the good answers, in seconds)."""

    endpoint: str
    clients: int
    window: float
    ok: int
    errors: int
    statuses: dict[str, int]
    latencies: list[float]
    client_cpu: float  # CPU seconds of the load process in the window
    cpu: dict[str, float]  # CPU seconds of each watched group in the window
    box_busy: float  # busy share of all CPUs in the window (0..1)
    stragglers: int


class ProtocolError(Exception):
    """An answer this client does not understand (no Content-Length, a bad status line)."""


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request, then its answer, in turn."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            answer = self._parse()
        except (ProtocolError, ValueError) as exc:
            self.waiter.set_exception(ProtocolError(str(exc)))
            return
        if answer is not None:
            self.waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def _parse(self) -> tuple[int, bytes] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0 or not head.startswith(b"http/1.1 "):
            raise ProtocolError(head[:200].decode("latin-1"))
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buf) < total:
            return None
        status = int(head[9:12])
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        return status, body

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        if self.closed:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Requests:
    """The bytes of each client's next request."""

    def __init__(self, spec: CellSpec) -> None:
        self.spec = spec
        host = f"Host: {spec.host}:{spec.port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        self.head = host.encode()
        self.healthz = b"GET /healthz HTTP/1.1\r\n" + self.head + b"\r\n"
        self.gets = [
            f"GET /v1/jobs/{job_id} HTTP/1.1\r\n".encode() + self.head + b"\r\n"
            for job_id in spec.ids
        ]
        self.post_head = b"POST /v1/jobs HTTP/1.1\r\n" + self.head
        self.post_head += b"Content-Type: application/json\r\n"

    def next(self, client: int, seq: int) -> bytes:
        endpoint = self.spec.endpoint
        if endpoint == HEALTHZ:
            return self.healthz
        if endpoint == GET:
            offset = client * len(self.gets) // self.spec.clients
            return self.gets[(offset + seq * 7919) % len(self.gets)]
        subject = SUBJECTS[seq % len(SUBJECTS)]
        prompt = f"{self.spec.run} {client}-{seq}: portrait of {subject}, soft window light"
        body = (
            f'{{"prompt":"{prompt}","subject_reference_images":["{REFERENCE}"]'
            f"{VARIANTS[(client + seq) % len(VARIANTS)]}}}"
        ).encode()
        key = ""
        if endpoint == POST_KEY:
            key = f"Idempotency-Key: {self.spec.run}-{self.spec.clients}-{client}-{seq}\r\n"
        return b"%b%bContent-Length: %d\r\n\r\n%b" % (
            self.post_head,
            key.encode(),
            len(body),
            body,
        )


def _ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _box() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def _usage() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class _Sample:
    at: float
    client: float
    groups: dict[str, int]
    box: tuple[int, int]

    backends: dict[int, int]

    @classmethod
    def take(cls, spec: CellSpec) -> _Sample:
        groups = {name: sum(_ticks(p) for p in pids) for name, pids in spec.watch.items()}
        backends = {p: _ticks(p) for p in _backends(spec.database)} if spec.database else {}
        return cls(time.perf_counter(), _usage(), groups, _box(), backends)

    def backend_ticks_since(self, start: _Sample) -> int:
        """CPU ticks of the database's backends (one that began in the window: all of it)."""
        return sum(t - start.backends.get(p, 0) for p, t in self.backends.items())


def _backends(database: str) -> list[int]:
    """PostgreSQL backends serving ``database`` (their title names it)."""
    found = []
    marker = f" {database} ".encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    title = f.read(200)
            except OSError:
                continue
            if title.startswith(b"postgres: ") and marker in title:
                found.append(int(entry.name))
    return found


async def _run_cell(spec: CellSpec) -> CellResult:
    loop = asyncio.get_running_loop()
    requests = _Requests(spec)
    expected = EXPECTED[spec.endpoint]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    window: dict[str, _Sample] = {}
    errors = 0

    async def connect() -> _Conn:
        _, conn = await loop.create_connection(_Conn, spec.host, spec.port)
        return conn

    async def client(index: int) -> None:
        nonlocal errors
        conn = await connect()
        seq = 0
        perf = time.perf_counter
        try:
            while "end" not in window:
                data = requests.next(index, seq)
                seq += 1
                started = perf()
                try:
                    status, _ = await conn.request(data)
                except (OSError, ProtocolError):
                    if "start" in window:
                        errors += 1
                        statuses["connection"] += 1
                    conn.close()
                    conn = await connect()
                    continue
                if "start" in window and "end" not in window:
                    if status == expected:
                        latencies.append(perf() - started)
                    else:
                        errors += 1
                        statuses[str(status)] += 1
        finally:
            conn.close()

    tasks = [asyncio.ensure_future(client(i)) for i in range(spec.clients)]
    await asyncio.sleep(spec.warmup)
    window["start"] = _Sample.take(spec)
    await asyncio.sleep(spec.seconds)
    window["end"] = _Sample.take(spec)
    _, pending = await asyncio.wait(tasks, timeout=STRAGGLER_SECONDS)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure
    start, end = window["start"], window["end"]
    hz = os.sysconf("SC_CLK_TCK")
    busy, total = end.box[0] - start.box[0], end.box[1] - start.box[1]
    return CellResult(
        endpoint=spec.endpoint,
        clients=spec.clients,
        window=end.at - start.at,
        ok=len(latencies),
        errors=errors + len(pending),
        statuses={"ok": len(latencies), **statuses, "unanswered": len(pending)},
        latencies=latencies,
        client_cpu=end.client - start.client,
        cpu={
            **{name: (end.groups[name] - start.groups[name]) / hz for name in spec.watch},
            "postgres": end.backend_ticks_since(start) / hz,
        },
        box_busy=busy / total if total else 0.0,
        stragglers=len(pending),
    )


def load_process(pipe: Connection) -> None:
    """The load generator's main loop: a CellSpec in, a CellResult out; None ends it."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    while True:
        spec = pipe.recv()
        if spec is None:
            return
        try:
            pipe.send(asyncio.run(_run_cell(spec)))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            pipe.send(exc)


class LoadProcess:
    """The spawned load generator."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.proc = context.Process(target=load_process, args=(child,), name="bench-api-load")
        self.proc.start()
        child.close()

    def run(self, spec: CellSpec) -> CellResult:
        self.pipe.send(spec)
        answer = self.pipe.recv()
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, CellResult)
        return answer

    def close(self) -> None:
        if self.proc.is_alive():
            self.pipe.send(None)
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# --- the benchmark (the parent process) ----------------------------------------------------


def _tree(pid: int) -> tuple[int, ...]:
    """A process and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return tuple(found)


def _requests_waiting(stack: LocalStack) -> int:
    """Requests not yet taken by the worker: the requests queue and the requests it reserved
    (not the polls it holds until their countdown: jobs keep running meanwhile)."""
    from api_schema import REQUESTS_QUEUE

    redis = stack.redis()
    keys = cast(list[bytes], list(redis.scan_iter(f"{REQUESTS_QUEUE}*")))
    waiting = sum(cast(int, redis.llen(key)) for key in keys)
    reserved = cast(dict[bytes, bytes], redis.hgetall("unacked"))
    for entry in reserved.values():
        try:
            _message, _exchange, routing_key = json.loads(entry)
        except ValueError:
            continue
        waiting += routing_key == REQUESTS_QUEUE
    return waiting


def _settle(stack: LocalStack, progress: Console, timeout: float) -> float:
    """Wait until the worker has taken every message the last cell made; the seconds."""
    start = time.perf_counter()
    waiting = _requests_waiting(stack)
    if waiting:
        progress.print(f"  [dim]waiting for the worker to take {waiting} messages[/]")
    while waiting and time.perf_counter() - start < timeout:
        time.sleep(0.2)
        waiting = _requests_waiting(stack)
    if waiting:
        progress.print(f"  [yellow]{waiting} messages still waiting after {timeout:.0f} s[/]")
    return time.perf_counter() - start


def _ms(seconds: float) -> float:
    return seconds * 1000


def _summary(result: CellResult, baseline: CellResult | None) -> dict[str, Any]:
    from .report import percentile

    rate = result.ok / result.window
    base_rate = baseline.ok / baseline.window if baseline is not None else None
    window = result.window
    return {
        "endpoint": result.endpoint,
        "label": LABELS[result.endpoint],
        "clients": result.clients,
        "seconds": window,
        "requests": result.ok,
        "requests_per_second": rate,
        "p50_ms": _ms(percentile(result.latencies, 50)),
        "p90_ms": _ms(percentile(result.latencies, 90)),
        "p99_ms": _ms(percentile(result.latencies, 99)),
        "max_ms": _ms(max(result.latencies, default=0.0)),
        "errors": result.errors,
        "statuses": result.statuses,
        "ratio_to_trivial": rate / base_rate if base_rate else None,
        "cpu_cores": {
            "load_client": result.client_cpu / window,
            **{name: used / window for name, used in result.cpu.items()},
        },
        "box_busy": result.box_busy,
    }


def api_bench(
    console: Console,
    output: Path,
    *,
    seconds: float = 5.0,
    warmup: float = 1.0,
    clients: tuple[int, ...] = (1, 16, 64),
    redis_db: int = REDIS_DB,
    settle_timeout: float = 120.0,
    with_worker: bool = False,
) -> dict[str, Any]:
    """Measure every cell, print the table and the targets, write ``api.json``."""
    from rich.console import Console

    from .scenarios import local_stack

    progress = Console(stderr=True)
    run = uuid.uuid4().hex[:8]
    results: dict[tuple[str, int], CellResult] = {}
    settled: list[float] = []
    read_mix: dict[int, dict[str, int]] = {}
    load_before = os.getloadavg()
    with local_stack(progress, redis_db) as stack:
        progress.print("starting the simulator, one worker and `imagegen api` (defaults)")
        stack.start_sim()
        stack.start_worker("w1")
        url = stack.start_api({TENANT: TOKEN})
        _prologue(stack, url, progress)
        if not with_worker:
            # In a deployment the workers run on their own hosts; on this 2-core box they
            # would take the CPU the API is measured on (--with-worker shows that case).
            progress.print("stopping the worker: the cells measure the API, PostgreSQL, Redis")
            stack.stop_workers()
        api_proc = next(p for p in reversed(stack.sup.procs) if p.name == "api")
        host, port = url.removeprefix("http://").rsplit(":", 1)
        database = stack.database_url.rsplit("/", 1)[1]
        watch = {
            "api": (api_proc.popen.pid,),
            "worker": tuple(p for w in stack.workers for p in _tree(w.popen.pid)),
        }
        load = LoadProcess()
        try:
            total = len(clients) * len(ENDPOINTS)
            for count in clients:
                for endpoint in ENDPOINTS:
                    ids: tuple[str, ...] = ()
                    if endpoint == GET:
                        ids = _job_ids(stack)
                        if not ids:
                            raise RuntimeError("the POST cells made no jobs to read")
                        read_mix[count] = _statuses(stack, ids)
                    if with_worker:
                        settled.append(_settle(stack, progress, settle_timeout))
                    progress.print(
                        f"[{len(results) + 1}/{total}] {LABELS[endpoint]}, {_clients(count)}: "
                        f"{warmup:g} s warm-up + {seconds:g} s"
                        + (f" over {len(ids)} jobs ({_mix(read_mix[count])})" if ids else "")
                    )
                    spec = CellSpec(
                        host, int(port), endpoint, count, warmup, seconds, run, ids, watch, database
                    )
                    result = load.run(spec)
                    results[(endpoint, count)] = result
                    progress.print(
                        f"  [dim]{result.ok / result.window:.0f} req/s, "
                        f"{result.errors} errors, client CPU "
                        f"{result.client_cpu / result.window:.0%} of a core[/]"
                    )
        finally:
            load.close()
        if not api_proc.alive():
            raise RuntimeError(f"the API exited:\n{api_proc.log_tail()}")
        jobs = _statuses(stack)

    cells = [
        _summary(results[(endpoint, count)], results.get((HEALTHZ, count)))
        for endpoint in (HEALTHZ, GET, POST, POST_KEY)
        for count in clients
    ]
    for cell in cells:
        if cell["endpoint"] == GET:
            cell["jobs_read_by_status"] = read_mix.get(cell["clients"], {})
    checks = _checks(cells)
    data = {
        "parameters": {
            "seconds": seconds,
            "warmup": warmup,
            "clients": list(clients),
            "api": "imagegen api, 1 process, default settings",
            "worker_during_cells": with_worker,
            "load": "1 spawned process, uvloop, keep-alive HTTP/1.1, closed loop",
        },
        "cells": cells,
        "jobs_by_status_at_end": jobs,
        "load_average_before_after": [load_before, os.getloadavg()],
        "settle_seconds": settled,
        "targets": {
            "ratio_to_trivial": RATIO_TARGETS,
            "p99_ms": P99_TARGET_MS,
            "p99_at_clients": P99_TARGET_CLIENTS,
        },
        "checks": checks,
        "passed": all(c["pass"] for c in checks),
    }
    _print_cells(console, cells)
    from .report import emit

    rows = [
        (c["name"], c["shown"], f"{c['target']} {'PASS' if c['pass'] else 'FAIL'}") for c in checks
    ]
    emit(console, "api", rows, data, output)
    return data


def _clients(count: int) -> str:
    return f"{count} client" + ("" if count == 1 else "s")


def _mix(statuses: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(statuses.items(), key=lambda i: -i[1]))


def _statuses(stack: LocalStack, ids: tuple[str, ...] | None = None) -> dict[str, int]:
    """Jobs per status: of ``ids``, or of the whole database."""
    where, params = ("WHERE id = ANY(:ids)", {"ids": list(ids)}) if ids is not None else ("", {})
    rows = stack.sql(f"SELECT status, count(*) FROM jobs {where} GROUP BY 1", **params)  # noqa: S608
    return {str(status): int(n) for status, n in rows}


#: Jobs run end to end before the cells, so GET also reads finished jobs with images.
PROLOGUE_JOBS: Final = 24


def _prologue(stack: LocalStack, url: str, progress: Console) -> None:
    import httpx

    progress.print(f"running {PROLOGUE_JOBS} jobs end to end first (succeeded jobs to read)")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        ids = [
            http.post(
                "/v1/jobs",
                json={
                    "prompt": f"portrait {i} of {SUBJECTS[i % len(SUBJECTS)]}, soft light",
                    "subject_reference_images": [REFERENCE],
                    "n": 2,
                },
            )
            .raise_for_status()
            .json()["id"]
            for i in range(PROLOGUE_JOBS)
        ]
    deadline = time.monotonic() + 180
    while _statuses(stack, tuple(ids)).get("succeeded", 0) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"prologue jobs did not all succeed: {_statuses(stack, tuple(ids))}")
        time.sleep(0.5)


def _job_ids(stack: LocalStack) -> tuple[str, ...]:
    rows = stack.sql(
        "SELECT id FROM jobs WHERE tenant = :tenant ORDER BY random() LIMIT :n",
        tenant=TENANT,
        n=MAX_GET_IDS,
    )
    return tuple(str(r[0]) for r in rows)


def _checks(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for cell in cells:
        target = RATIO_TARGETS.get(cell["endpoint"])
        if target is not None and cell["ratio_to_trivial"] is not None:
            ratio = cell["ratio_to_trivial"]
            who = _clients(cell["clients"])
            checks.append(
                {
                    "name": f"{SHORT[cell['endpoint']]} / healthz req/s, {who}",
                    "value": ratio,
                    "shown": f"{ratio:.2f}",
                    "target": f">= {target}",
                    "pass": ratio >= target and cell["errors"] == 0,
                }
            )
    for cell in cells:
        if cell["endpoint"] != HEALTHZ and cell["clients"] == P99_TARGET_CLIENTS:
            checks.append(
                {
                    "name": f"{SHORT[cell['endpoint']]} p99, {_clients(cell['clients'])}",
                    "value": cell["p99_ms"],
                    "shown": f"{cell['p99_ms']:.1f} ms",
                    "target": f"< {P99_TARGET_MS:.0f} ms",
                    "pass": cell["p99_ms"] < P99_TARGET_MS and cell["errors"] == 0,
                }
            )
    return checks


def _print_cells(console: Console, cells: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    cores = os.cpu_count() or 1
    table = Table(title="imagegen bench api: one `imagegen api` process, closed-loop clients")
    cpu_table = Table(
        title=f"CPU cores used in each window (this box has {cores})", box=box.SIMPLE_HEAD
    )
    table.add_column("endpoint", no_wrap=True)
    cpu_table.add_column("endpoint", no_wrap=True)
    for name in ("clients", "req/s", "p50 ms", "p99 ms", "errors", "ratio to healthz"):
        table.add_column(name, justify="right")
    for name in ("clients", "client", "api", "worker", "postgres", "rest", "box", "api ms/req"):
        cpu_table.add_column(name, justify="right")
    for cell in cells:
        cpu = cell["cpu_cores"]
        ratio = cell["ratio_to_trivial"]
        rest = max(0.0, cell["box_busy"] * cores - sum(cpu.values()))
        table.add_row(
            LABELS[cell["endpoint"]],
            str(cell["clients"]),
            f"{cell['requests_per_second']:.0f}",
            f"{cell['p50_ms']:.1f}",
            f"{cell['p99_ms']:.1f}",
            str(cell["errors"]),
            "" if cell["endpoint"] == HEALTHZ or ratio is None else f"{ratio:.2f}",
        )
        cpu_table.add_row(
            SHORT[cell["endpoint"]],
            str(cell["clients"]),
            f"{cpu['load_client']:.2f}",
            f"{cpu['api']:.2f}",
            f"{cpu['worker']:.2f}",
            f"{cpu['postgres']:.2f}",
            f"{rest:.2f}",
            f"{cell['box_busy']:.0%}",
            f"{cpu['api'] / max(1e-9, cell['requests_per_second']) * 1000:.2f}",
        )
    console.print(table)
    console.print(cpu_table)
    worst = max(cells, key=lambda c: c["cpu_cores"]["load_client"])
    console.print(
        "client: the load generator; postgres: the backends of the stack's database; rest: "
        "everything else on the box (Redis, the simulator, other users); box: busy share of "
        "all CPUs. "
        f"The load client (one process) used {worst['cpu_cores']['load_client']:.2f} cores "
        f"at most ({SHORT[worst['endpoint']]}, {_clients(worst['clients'])}), "
        f"{_client_us(cells):.0f} us of CPU per request on average."
    )


def _client_us(cells: list[dict[str, Any]]) -> float:
    cpu = sum(float(c["cpu_cores"]["load_client"]) * float(c["seconds"]) for c in cells)
    done = sum(int(c["requests"]) + int(c["errors"]) for c in cells)
    return cpu / max(1, done) * 1e6
