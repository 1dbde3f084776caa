"""The broker is a trust boundary: the Redis ACL users of deploy/redis/users.acl, for real.

The `user` lines docker-compose.yml ships (its redis entrypoint renders that file) are
applied to the test Redis under unique names (so parallel runs do not collide; deleted
afterwards), with random passwords hashed exactly as deploy/redis/entrypoint.sh does. A real
worker runs as the workers' user; producers connect as the producer user and must get their
requests through by every documented route, and be refused everything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from celery import Celery
from kombu.exceptions import OperationalError
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from api_schema import GENERATE_TASK, REQUESTS_QUEUE
from api_schema.message import generate_message
from api_schema.names import MAINTENANCE_QUEUE, UPSTREAM_QUEUE
from api_schema.producer import enqueue
from devtools.procs import free_port, imagegen_argv
from tests.harness import Stack, request

ROOT = Path(__file__).resolve().parents[2]
ACL_TEMPLATE = ROOT / "deploy" / "redis" / "users.acl"
ENTRYPOINT = ROOT / "deploy" / "redis" / "entrypoint.sh"
COMPOSE_FILE = ROOT / "docker-compose.yml"

PRODUCER, WORKER = "imagegen-producer", "imagegen-worker"
PASSWORD_VARS = {
    PRODUCER: "IMAGEGEN_REDIS_PRODUCER_PASSWORD",
    WORKER: "IMAGEGEN_REDIS_WORKER_PASSWORD",
}
# The limiter's keys (worker/upstream/gate.py) and kombu's bookkeeping of delivered messages.
LIMITER_KEYS = ("imagegen:upstream:requests", "imagegen:upstream:paused_until")
UNACKED, UNACKED_INDEX, UNACKED_MUTEX = "unacked", "unacked_index", "unacked_mutex"


def acl_rules(passwords: Mapping[str, str]) -> dict[str, list[str]]:
    """Every user of users.acl and its rules, the password hashes filled in as
    entrypoint.sh does (``#`` + SHA-256 hex of the password)."""

    def fill(match: re.Match[str]) -> str:
        return hashlib.sha256(passwords[match.group(1)].encode()).hexdigest()

    users: dict[str, list[str]] = {}
    for line in ACL_TEMPLATE.read_text().splitlines():
        if line.startswith("user "):
            _, name, *rules = re.sub(r"\{\{(\w+)_SHA256\}\}", fill, line).split()
            users[name] = rules
    return users


def new_passwords() -> dict[str, str]:
    return {var: secrets.token_urlsafe(24) for var in PASSWORD_VARS.values()}


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


@dataclass(frozen=True)
class Users:
    """The two users as created in the test Redis: their names there and broker URLs."""

    producer: str
    worker: str
    producer_url: str
    worker_url: str
    db: int


@pytest.fixture(scope="module")
def users(stack: Stack) -> Iterator[Users]:
    suffix = uuid.uuid4().hex[:10]
    passwords = new_passwords()
    rules = acl_rules(passwords)
    names = {user: f"{user}-test-{suffix}" for user in PASSWORD_VARS}
    admin = stack.redis()
    try:
        for user, name in names.items():
            admin.execute_command("ACL", "SETUSER", name, *rules[user])
        url = {
            user: with_user(stack.broker_url, names[user], passwords[var])
            for user, var in PASSWORD_VARS.items()
        }
        yield Users(
            producer=names[PRODUCER],
            worker=names[WORKER],
            producer_url=url[PRODUCER],
            worker_url=url[WORKER],
            db=int(urlsplit(stack.broker_url).path.strip("/") or 0),
        )
    finally:
        admin.execute_command("ACL", "DELUSER", *names.values())
        admin.close()


@pytest.fixture(scope="module")
def acl_worker(stack: Stack, users: Users) -> Iterator[Stack]:
    """One real worker whose broker and limiter connections log in as the workers' user."""
    stack.clean()
    stack.start_worker(
        "acl",
        IMAGEGEN_BROKER_URL=users.worker_url,
        IMAGEGEN_REDIS_URL=users.worker_url,
        # the shared limiter on: its Lua scripts (EVALSHA, TIME, ZADD...) run as that user
        IMAGEGEN_UPSTREAM_RPM="1000",
    )
    try:
        yield stack
    finally:
        stack.stop_workers()


@pytest.fixture
def producer(users: Users) -> Iterator[Redis]:
    """A plain Redis client logged in as the producer user: one connection, checked alive."""
    client = Redis.from_url(users.producer_url, single_connection_client=True)
    assert client.ping()
    try:
        yield client
    finally:
        client.close()


# --- what the producer and the workers can do ------------------------------------------------


def test_producer_requests_reach_a_worker_that_runs_as_the_workers_user(
    acl_worker: Stack, users: Users, producer: Redis
) -> None:
    stack = acl_worker
    via_helper = enqueue(request(), broker_url=users.producer_url)

    via_celery = str(uuid.uuid4())
    plain = Celery("plain-producer", broker=users.producer_url, set_as_current=False)
    try:
        plain.send_task(
            GENERATE_TASK, kwargs={"request": request()}, task_id=via_celery, queue=REQUESTS_QUEUE
        )
    finally:
        plain.close()

    via_lpush = str(uuid.uuid4())
    # what a producer without Celery LPUSHes (api_schema.message, the example's builder)
    assert producer.lpush(REQUESTS_QUEUE, json.dumps(generate_message(request(), via_lpush)))

    ended = stack.wait_ended([via_helper, via_celery, via_lpush])
    assert {job: view.status.value for job, view in ended.items()} == {
        via_helper: "succeeded",
        via_celery: "succeeded",
        via_lpush: "succeeded",
    }
    admin = stack.redis()
    # The worker really logged in as the workers' user, and its limiter ran (Lua, TIME, ZADD).
    assert any(c.get("user") == users.worker for c in admin.client_list())
    assert admin.zcard(LIMITER_KEYS[0]) > 0


def test_the_api_needs_only_the_producer_user(acl_worker: Stack, users: Users) -> None:
    """As compose runs it: the API's broker connection logs in as the producer user."""
    token = secrets.token_urlsafe(24)
    api = acl_worker.start_api(
        {"acme": token}, name="acl-api", IMAGEGEN_BROKER_URL=users.producer_url
    )
    ready = httpx.get(f"{api}/readyz", timeout=10).json()
    assert ready["checks"]["broker"] == "ok"
    answer = httpx.post(
        f"{api}/v1/jobs",
        json=request(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    ended = acl_worker.wait_ended([job_id])
    assert ended[job_id].status.value == "succeeded"
    # The job would also run from the sweeper's admission: the API's own log says whether
    # its publish, as the producer user, went through.
    log = acl_worker.apis[api].log_tail(500)
    acl_worker.stop_api(api)
    assert '"job.not_pushed"' not in log, log
    admin = acl_worker.redis()
    assert any(c.get("user") == users.producer for c in admin.client_list())


def _refused(call: Callable[[], object]) -> str:
    with pytest.raises(NoPermissionError) as refused:
        call()
    return str(refused.value)


# Each one would succeed for a user with more rights: the list, its framing and its
# neighbours, kombu's bookkeeping, the limiter, pub/sub (remote control and events),
# scripts and administration.
PRODUCER_REFUSED: dict[str, tuple[str, ...]] = {
    "lpush-upstream": ("LPUSH", UPSTREAM_QUEUE, "x"),
    "lpush-maintenance": ("LPUSH", MAINTENANCE_QUEUE, "x"),
    "lpush-priority-list": ("LPUSH", f"{REQUESTS_QUEUE}\x06\x163", "x"),
    "lpush-other-key": ("LPUSH", "somewhere.else", "x"),
    "rpush-requests": ("RPUSH", REQUESTS_QUEUE, "x"),
    "sadd-requests": ("SADD", REQUESTS_QUEUE, "x"),
    "set-requests": ("SET", REQUESTS_QUEUE, "x"),
    "del-requests": ("DEL", REQUESTS_QUEUE),
    "lpop-requests": ("LPOP", REQUESTS_QUEUE),
    "brpop-requests": ("BRPOP", REQUESTS_QUEUE, "1"),
    "lrange-requests": ("LRANGE", REQUESTS_QUEUE, "0", "-1"),
    "rename-requests": ("RENAME", REQUESTS_QUEUE, "stolen"),
    "llen-upstream": ("LLEN", UPSTREAM_QUEUE),
    "hset-unacked": ("HSET", UNACKED, "tag", "x"),
    "hgetall-unacked": ("HGETALL", UNACKED),
    "del-unacked": ("DEL", UNACKED),
    "zadd-unacked-index": ("ZADD", UNACKED_INDEX, "0", "tag"),
    "set-unacked-mutex": ("SET", UNACKED_MUTEX, "x"),
    "sadd-reply-binding": ("SADD", "_kombu.binding.reply.celery.pidbox", "x"),
    "smembers-binding": ("SMEMBERS", "_kombu.binding.celery"),
    "del-binding": ("DEL", "_kombu.binding.celery"),
    "set-limiter-pause": ("SET", LIMITER_KEYS[1], "99999999999999"),
    "zadd-limiter": ("ZADD", LIMITER_KEYS[0], "0", "x"),
    "incr": ("INCR", "imagegen.counter"),
    "get": ("GET", "imagegen.counter"),
    "exists": ("EXISTS", REQUESTS_QUEUE),
    "publish-pidbox": ("PUBLISH", "/{db}.celery.pidbox", "{{}}"),
    "publish-events": ("PUBLISH", "/{db}.celeryev/worker.heartbeat", "{{}}"),
    "publish-any": ("PUBLISH", "anything", "x"),
    "subscribe-pidbox": ("SUBSCRIBE", "/{db}.celery.pidbox"),
    "psubscribe-events": ("PSUBSCRIBE", "/{db}.celeryev/*"),
    "psubscribe-all": ("PSUBSCRIBE", "*"),
    "eval": ("EVAL", "return 1", "0"),
    "evalsha": ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
    "function-list": ("FUNCTION", "LIST"),
    "keys": ("KEYS", "*"),
    "scan": ("SCAN", "0"),
    "flushdb": ("FLUSHDB",),
    "config-get": ("CONFIG", "GET", "*"),
    "acl-list": ("ACL", "LIST"),
    "acl-whoami": ("ACL", "WHOAMI"),
    "client-list": ("CLIENT", "LIST"),
    "info": ("INFO",),
    "monitor": ("MONITOR",),
}


@pytest.mark.parametrize("argv", PRODUCER_REFUSED.values(), ids=PRODUCER_REFUSED.keys())
def test_producer_is_refused_everything_else(
    users: Users, producer: Redis, argv: tuple[str, ...]
) -> None:
    command = [arg.format(db=users.db) for arg in argv]
    assert "no permissions" in _refused(lambda: producer.execute_command(*command))
    assert producer.ping()  # still the same, working connection


# Commands that would hurt the whole server (or every db) if allowed: asked with ACL DRYRUN,
# which answers what would happen without running anything.
DRYRUN_REFUSED = {
    PRODUCER: [
        ("FLUSHALL",),
        ("SHUTDOWN", "NOSAVE"),
        ("CONFIG", "SET", "appendonly", "no"),
        ("ACL", "SETUSER", "intruder", "on"),
        ("DEBUG", "SLEEP", "0"),
        ("SCRIPT", "FLUSH"),
        ("SWAPDB", "0", "1"),
        ("REPLICAOF", "127.0.0.1", "1"),
    ],
    WORKER: [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("SHUTDOWN", "NOSAVE"),
        ("CONFIG", "SET", "appendonly", "no"),
        ("CONFIG", "GET", "*"),
        ("ACL", "SETUSER", "intruder", "on"),
        ("ACL", "LIST"),
        ("KEYS", "*"),
        ("DEBUG", "SLEEP", "0"),
        ("MODULE", "LOAD", "/tmp/x.so"),
        ("MONITOR",),
        ("CLIENT", "KILL", "ID", "1"),
        ("SWAPDB", "0", "1"),
        ("REPLICAOF", "127.0.0.1", "1"),
        ("MIGRATE", "127.0.0.1", "1", "k", "0", "1"),
    ],
}
# What the workers, beat and Flower do (measured through a recording proxy), as DRYRUNs:
# the real worker above proves the same, these name the commands.
WORKER_ALLOWED = [
    ("BRPOP", UPSTREAM_QUEUE, MAINTENANCE_QUEUE, REQUESTS_QUEUE, "1"),
    ("LPUSH", UPSTREAM_QUEUE, "x"),
    ("HSET", UNACKED, "tag", "x"),
    ("ZADD", UNACKED_INDEX, "0", "tag"),
    ("SET", UNACKED_MUTEX, "x", "NX", "PX", "1000"),
    ("WATCH", UNACKED_MUTEX),
    ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "1", LIMITER_KEYS[0]),
    ("SCRIPT", "EXISTS", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"),
    ("PUBLISH", "/0.celery.pidbox", "x"),
    ("PUBLISH", "/0.celeryev/worker.heartbeat", "x"),
    ("PSUBSCRIBE", "/0.celeryev/*"),
    ("SMEMBERS", "_kombu.binding.reply.celery.pidbox"),
    ("INCR", "bench.counter"),
]


def _dryrun(stack: Stack, user: str, argv: tuple[str, ...]) -> str:
    answer = stack.redis().execute_command("ACL", "DRYRUN", user, *argv)
    return answer.decode() if isinstance(answer, bytes) else str(answer)


@pytest.mark.parametrize("who", [PRODUCER, WORKER])
def test_nobody_can_administer_the_server(stack: Stack, users: Users, who: str) -> None:
    user = users.producer if who == PRODUCER else users.worker
    allowed = [argv for argv in DRYRUN_REFUSED[who] if _dryrun(stack, user, argv) == "OK"]
    assert not allowed, f"{who} may run {allowed}"


def test_workers_user_can_do_what_workers_beat_and_flower_do(stack: Stack, users: Users) -> None:
    answers = {argv: _dryrun(stack, users.worker, argv) for argv in WORKER_ALLOWED}
    assert {argv: answer for argv, answer in answers.items() if answer != "OK"} == {}


def test_workers_user_is_refused_administration_on_a_real_connection(users: Users) -> None:
    worker = Redis.from_url(users.worker_url, single_connection_client=True)
    try:
        assert worker.ping()
        for argv in (("CONFIG", "GET", "*"), ("ACL", "LIST"), ("KEYS", "*"), ("INFO",)):
            assert "no permissions" in _refused(lambda a=argv: worker.execute_command(*a)), argv
    finally:
        worker.close()


# --- Celery remote control and Flower --------------------------------------------------------


def test_producers_cannot_use_remote_control(acl_worker: Stack, users: Users) -> None:
    stack = acl_worker
    app = Celery("hostile-producer", broker=users.producer_url, set_as_current=False)
    try:
        for call in (
            lambda: app.control.broadcast("shutdown"),
            lambda: app.control.shutdown(),
            lambda: app.control.ping(timeout=0.5),
            lambda: app.control.inspect(timeout=0.5).active(),
        ):
            # redis' NoPermissionError, or kombu's OperationalError wrapping it
            with pytest.raises((NoPermissionError, OperationalError), match="no permissions"):
                call()
    finally:
        app.close()
    # Pidbox messages are handled in order: a ping answered now comes after any shutdown.
    assert stack.pings("acl@"), "the worker stopped answering"
    assert all(proc.alive() for proc in stack.workers)


def test_flower_works_as_the_workers_user(acl_worker: Stack, users: Users) -> None:
    stack = acl_worker
    port = free_port()
    auth = ("flower", secrets.token_urlsafe(12))
    flower = stack.sup.start(
        "flower-acl",
        imagegen_argv("flower", "--port", str(port)),
        env=stack.env(
            IMAGEGEN_BROKER_URL=users.worker_url,
            IMAGEGEN_FLOWER_BASIC_AUTH=":".join(auth),
        ),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        stack.sup.wait_http(flower, f"{base}/healthcheck")
        with httpx.Client(base_url=base, auth=auth, timeout=30) as client:
            # remote control (inspect over pidbox) and the broker page's queue lengths
            stack.wait_for(
                lambda: any(
                    name.startswith("acl@")
                    for name in client.get("/api/workers", params={"refresh": 1}).json()
                ),
                timeout=30,
                what="Flower seeing the worker",
            )
            queues = client.get("/api/queues/length")
            assert queues.status_code == 200, queues.text
            names = {q["name"] for q in queues.json()["active_queues"]}
            assert REQUESTS_QUEUE in names
    finally:
        flower.stop()


# --- the compose redis service: its entrypoint, aclfile and healthcheck ----------------------


def _compose_redis() -> dict[str, Any]:
    import yaml

    service: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["redis"]
    return service


@dataclass
class ScratchRedis:
    port: int
    proc: subprocess.Popen[bytes]
    aclfile: Path

    def client(self, user: str | None = None, password: str | None = None) -> Redis:
        # No retries: redis-py would otherwise retry a refused login for seconds.
        return Redis(
            port=self.port,
            username=user,
            password=password,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )


def _start_scratch(tmp: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """The compose command through the compose entrypoint, on a free port of this machine."""
    command = [str(c) for c in _compose_redis()["command"]]
    assert command[0] == "redis-server" and "--aclfile" in command
    aclfile = tmp / "run" / "users.acl"
    command[command.index("--aclfile") + 1] = str(aclfile)
    port = free_port()
    command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", ""]
    command += ["--appendonly", "no", "--logfile", str(tmp / "redis.log")]
    return subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), *command],
        env={"PATH": os.environ["PATH"], **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[ScratchRedis, dict[str, str]]]:
    """A redis-server of this machine started like the compose service, on a free port."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here: the compose entrypoint cannot be run")
    passwords = new_passwords()
    proc = _start_scratch(tmp_path, passwords)
    args = proc.args
    assert isinstance(args, list)
    server = ScratchRedis(int(args[args.index("--port") + 1]), proc, tmp_path / "run" / "users.acl")
    worker = server.client(WORKER, passwords[PASSWORD_VARS[WORKER]])

    def up() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"redis did not start: {err.decode()}{out.decode()}")
        try:
            return bool(worker.ping())
        except RedisConnectionError:
            return False

    try:
        _wait(up, 20, "the compose entrypoint's redis answering")
        yield server, passwords
    finally:
        worker.close()
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_compose_entrypoint_starts_redis_with_exactly_these_users(
    scratch: tuple[ScratchRedis, dict[str, str]],
) -> None:
    server, passwords = scratch
    written = server.aclfile.read_text()
    for password in passwords.values():
        assert password not in written, "the aclfile must hold hashes, not passwords"
    assert oct(server.aclfile.stat().st_mode & 0o777) == "0o600"

    with pytest.raises(AuthenticationError):  # the default user is off: nothing without a login
        server.client().ping()
    with pytest.raises(AuthenticationError):
        server.client(PRODUCER, passwords[PASSWORD_VARS[WORKER]]).ping()

    worker = server.client(WORKER, passwords[PASSWORD_VARS[WORKER]])
    producer = server.client(PRODUCER, passwords[PASSWORD_VARS[PRODUCER]])
    assert [line.split()[1] for line in written.splitlines()] == ["default", PRODUCER, WORKER]
    assert producer.lpush(REQUESTS_QUEUE, "x") == 1
    with pytest.raises(NoPermissionError):
        producer.lpush(UPSTREAM_QUEUE, "x")
    with pytest.raises(NoPermissionError):
        producer.publish("/0.celery.pidbox", "x")
    assert worker.lpop(REQUESTS_QUEUE) == b"x"
    with pytest.raises(NoPermissionError):
        worker.flushall()

    # The compose healthcheck, pointed at this server's port, with and without the password.
    test = _compose_redis()["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    shell = test[1].replace("$$", "$").replace("redis-cli ", f"redis-cli -p {server.port} ")
    for password, healthy in ((passwords[PASSWORD_VARS[WORKER]], True), ("wrong-" * 4, False)):
        env = {"PATH": os.environ["PATH"], PASSWORD_VARS[WORKER]: password}
        check = subprocess.run(["/bin/sh", "-c", shell], env=env, timeout=20, check=False)
        assert (check.returncode == 0) is healthy, (shell, healthy)


@pytest.mark.parametrize(
    ("producer_password", "worker_password", "complaint"),
    [
        (None, "w" * 20, "IMAGEGEN_REDIS_PRODUCER_PASSWORD is not set"),
        ("p" * 20, "", "IMAGEGEN_REDIS_WORKER_PASSWORD is not set"),
        ("p" * 15, "w" * 20, "at least 16 characters"),
        ("p" * 20 + "@x", "w" * 20, "may only hold"),
        ("p" * 20 + " x", "w" * 20, "may only hold"),
        ("same-password-0123", "same-password-0123", "must differ"),
    ],
)
def test_compose_entrypoint_refuses_unusable_passwords(
    tmp_path: Path, producer_password: str | None, worker_password: str, complaint: str
) -> None:
    env = {PASSWORD_VARS[WORKER]: worker_password}
    if producer_password is not None:
        env[PASSWORD_VARS[PRODUCER]] = producer_password
    proc = _start_scratch(tmp_path, env)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        _stop(proc)  # only if it started a server after all
    assert proc.returncode != 0
    assert complaint in err.decode(), err.decode()
    assert not (tmp_path / "run" / "users.acl").exists()


def test_the_acl_template_defines_three_users_with_the_intended_shape() -> None:
    rules = acl_rules(new_passwords())
    assert set(rules) == {"default", PRODUCER, WORKER}
    assert rules["default"][:2] == ["reset", "off"] and len(rules["default"]) == 2
    producer = " ".join(rules[PRODUCER])
    assert rules[PRODUCER][0] == "reset", "start from nothing (also when re-applied)"
    assert "&" not in producer and "allchannels" not in producer, "no pub/sub for producers"
    assert "@" not in producer.replace("-@all", ""), "no command categories for producers"
    # Root permissions name no key: every keyed command is in a selector of its own keys.
    root = producer.split("(")[0].split()
    assert not [r for r in root if r.startswith(("~", "%", "allkeys"))], root
    worker = rules[WORKER]
    assert worker[0] == "reset" and "-@dangerous" in worker
