"""The container setup: docker-compose.yml as Compose resolves it, the Dockerfile, .dockerignore.

No Docker engine is needed: ``docker-compose config`` (Debian's 1.29, installed by
``make tools``) validates and resolves the file offline. None of the session fixtures
from conftest.py are used, so no service is started.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

SERVICES = {
    "redis", "postgres", "migrate", "simulator", "worker", "beat", "api", "flower", "metrics",
    "prometheus",
}  # fmt: skip
APP_SERVICES = SERVICES - {"redis", "postgres", "prometheus"}
FLOWER_AUTH = "tester:not-a-real-password"
PRODUCER_PASSWORD = "producer-Pw.not_real~0123"
WORKER_PASSWORD = "worker-Pw.not_real~4567"
API_TOKENS = "acme:not-a-real-token-0123456789"
METRICS_PASSWORD = "metrics-Pw.not_real~8910"
#: What `docker compose up` requires (the `${VAR:?...}` of the file); nothing else is set.
REQUIRED_ENV = {
    "IMAGEGEN_FLOWER_BASIC_AUTH": FLOWER_AUTH,
    "IMAGEGEN_REDIS_PRODUCER_PASSWORD": PRODUCER_PASSWORD,
    "IMAGEGEN_REDIS_WORKER_PASSWORD": WORKER_PASSWORD,
    "IMAGEGEN_API_TOKENS": API_TOKENS,
    "IMAGEGEN_METRICS_PASSWORD": METRICS_PASSWORD,
}
REDIS_DEPLOY = ROOT / "deploy" / "redis"
PROMETHEUS_DEPLOY = ROOT / "deploy" / "prometheus"
# Variables a developer's shell may hold that would change what the file resolves to.
_CLEARED_PREFIXES = ("IMAGEGEN_", "MODELLIX_", "SIM_", "COMPOSE_", "POSTGRES_")


def _yaml() -> ModuleType:
    try:
        import yaml
    except ImportError:
        pytest.fail(
            "PyYAML is missing: add pyyaml to the dev dependency group (uv add --dev pyyaml)"
        )
    return yaml


def _compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed; `make tools` installs it (Debian's docker-compose, "
            "used offline to validate docker-compose.yml)"
        )
    return binary


@dataclass
class Compose:
    """Runs ``docker-compose config`` with a controlled environment and no .env file."""

    binary: str
    env_file: Path

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_PREFIXES)}
        clean.update(env)
        command = [self.binary, "--env-file", str(self.env_file), "-f", str(COMPOSE_FILE)]
        return subprocess.run(
            [*command, *args],
            cwd=ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def config(self, *args: str, **env: str) -> dict[str, Any]:
        result = self.run("config", *args, **env)
        assert result.returncode == 0, (
            f"docker-compose config failed:\n{result.stderr}\n{result.stdout}"
        )
        loaded = _yaml().safe_load(result.stdout)
        assert isinstance(loaded, dict), result.stdout
        return loaded


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    binary = _compose_binary()
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    return Compose(binary, env_file)


@pytest.fixture(scope="module")
def config(compose: Compose) -> dict[str, Any]:
    """The resolved file, as `docker compose up` would see it with only the required variables."""
    return compose.config(**REQUIRED_ENV)


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = config["services"]
    return found


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _healthcheck(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test")
    assert test, "no healthcheck"
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def _conditions(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    assert isinstance(depends, dict), f"depends_on without conditions: {depends}"
    return {name: spec["condition"] for name, spec in depends.items()}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_file_is_valid_and_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert services.keys() >= SERVICES, f"missing: {sorted(SERVICES - services.keys())}"


def test_redis_and_postgres_are_healthchecked_and_persistent(
    config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    redis, postgres = services["redis"], services["postgres"]
    assert re.search(r"redis-cli .*\bping\b", _healthcheck(redis))
    assert "pg_isready" in _healthcheck(postgres)
    assert "--appendonly yes" in " ".join(_command(redis))
    assert postgres["image"].startswith("postgres:16")
    for name, target in (("redis", "/data"), ("postgres", "/var/lib/postgresql/data")):
        sources = {
            v.split(":")[0] for v in services[name].get("volumes", []) if v.split(":")[1] == target
        }
        assert sources & set(config.get("volumes", {})), f"{name} has no named volume on {target}"


def test_migrate_is_a_one_shot_db_upgrade_after_postgres(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["migrate"]
    assert _command(migrate) == ["db", "upgrade"]
    assert migrate.get("restart") == "no"
    assert _conditions(migrate) == {"postgres": "service_healthy"}


def test_worker_and_beat_start_after_their_dependencies(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = _conditions(services["worker"])
    assert worker.get("redis") == "service_healthy"
    assert worker.get("simulator") == "service_healthy"
    # Postgres is reached through the migration, which itself waits for postgres to be healthy.
    assert worker.get("migrate") == "service_completed_successfully"
    assert worker.get("postgres", "service_healthy") == "service_healthy"
    beat = _conditions(services["beat"])
    assert beat.get("redis") == "service_healthy"
    assert beat.get("migrate") == "service_completed_successfully"
    assert _conditions(services["flower"]).get("redis") == "service_healthy"
    assert "/_sim/health" in _healthcheck(services["simulator"])


def test_worker_can_be_scaled(config: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "host ports would clash between worker replicas"
    storage = _environment(worker)["IMAGEGEN_STORAGE_DIR"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker.get("volumes", [])}
    assert mounts.get(storage) == "images", "workers must share the images volume"
    assert "images" in config.get("volumes", {})
    beat = services["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) == 1, "exactly one beat"


def test_app_services_share_one_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    images = {services[name].get("image") for name in APP_SERVICES}
    assert None not in images, "every app service needs the shared image name"
    assert len(images) == 1, images
    for name in APP_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} has no build: a missing image would be pulled, not built"
        context = build if isinstance(build, str) else build["context"]
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
        assert Path(context).resolve() == ROOT, build
        assert dockerfile in {None, "Dockerfile"}, build


def test_app_services_run_real_imagegen_commands(services: dict[str, dict[str, Any]]) -> None:
    from worker.cli import app

    root = typer.main.get_command(app)
    for name in sorted(APP_SERVICES):
        argv = _command(services[name])
        # Typer may vendor click, so groups are recognised by their `commands`, not their class.
        command: Any = root
        rest = list(argv)
        while rest and rest[0] in getattr(command, "commands", {}):
            command = command.commands[rest.pop(0)]
        leaf = command is not root and not hasattr(command, "commands")
        assert leaf, f"{name}: `imagegen {' '.join(argv)}` is not an imagegen command"
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        unknown = [a for a in rest if a.startswith("-") and a.split("=")[0] not in known]
        assert not unknown, f"{name}: `imagegen {' '.join(argv)}` has unknown options {unknown}"


def test_services_reach_each_other_by_service_name(
    services: dict[str, dict[str, Any]],
) -> None:
    from simulator.app import create_app
    from simulator.config import SimConfig

    for name in APP_SERVICES - {"simulator"}:
        env = _environment(services[name])
        assert urlsplit(env["IMAGEGEN_DATABASE_URL"]).hostname == "postgres", name
        assert urlsplit(env["IMAGEGEN_BROKER_URL"]).hostname == "redis", name
        assert env["MODELLIX_BASE_URL"] == "http://simulator:8900", name
    simulator = services["simulator"]
    assert _environment(simulator)["SIM_PUBLIC_BASE_URL"] == "http://simulator:8900"
    assert _command(simulator)[:3] == ["simulator", "--host", "0.0.0.0"]
    routes = {getattr(r, "path", None) for r in create_app(SimConfig()).routes}
    assert "/_sim/health" in routes, "the simulator healthcheck probes a route that is gone"


def test_flower_requires_basic_auth(compose: Compose, services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert _environment(flower)["IMAGEGEN_FLOWER_BASIC_AUTH"] == FLOWER_AUTH
    assert any(str(p).split("/")[0].endswith(":5555") for p in flower.get("ports", []))
    assert _command(flower)[:3] == ["flower", "--address", "0.0.0.0"]


def test_api_is_healthchecked_and_pushes_requests_as_the_producer(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services["api"]
    assert _command(api)[:3] == ["api", "--host", "0.0.0.0"]
    assert "/readyz" in _healthcheck(api)
    env = _environment(api)
    assert env["IMAGEGEN_API_TOKENS"] == API_TOKENS
    broker = urlsplit(env["IMAGEGEN_BROKER_URL"])
    assert (broker.username, broker.password) == ("imagegen-producer", PRODUCER_PASSWORD)
    assert WORKER_PASSWORD not in json.dumps(api), "the API needs no more than a producer"
    assert _mounts(api)["/data/images"][1] == "ro", "the API only reads the images"
    assert _mounts(api)["/data/images"][0] == _mounts(services["worker"])["/data/images"][0]
    assert any(str(p).split("/")[0].endswith(":8000") for p in api.get("ports", []))
    assert _conditions(api).get("migrate") == "service_completed_successfully"


def test_metrics_exporter_requires_basic_auth_and_prometheus_scrapes_it(
    services: dict[str, dict[str, Any]],
) -> None:
    metrics, prometheus = services["metrics"], services["prometheus"]
    assert _environment(metrics)["IMAGEGEN_METRICS_BASIC_AUTH"] == f"prometheus:{METRICS_PASSWORD}"
    assert _command(metrics)[:3] == ["metrics", "--host", "0.0.0.0"]
    port = _command(metrics)[_command(metrics).index("--port") + 1]
    assert any(str(p).split("/")[0].endswith(f":{port}") for p in metrics.get("ports", []))
    assert _conditions(metrics).get("migrate") == "service_completed_successfully"
    # Prometheus reads deploy/prometheus/prometheus.yml, scraping the exporter with the
    # password its entrypoint writes from the environment (never in the file or argv)
    source, mode = _mounts(prometheus)["/etc/imagegen-prometheus"]
    assert (Path(source).resolve(), mode) == (PROMETHEUS_DEPLOY, "ro")
    entry = " ".join(prometheus["entrypoint"])
    assert "--config.file=/etc/imagegen-prometheus/prometheus.yml" in entry
    assert METRICS_PASSWORD not in entry
    assert _environment(prometheus)["IMAGEGEN_METRICS_PASSWORD"] == METRICS_PASSWORD
    scrape = _yaml().safe_load((PROMETHEUS_DEPLOY / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"metrics:{port}"]
    assert job["basic_auth"]["username"] == "prometheus"
    assert job["basic_auth"]["password_file"].startswith("/prometheus/")
    assert job["basic_auth"]["password_file"] in entry


@pytest.mark.parametrize("variable", sorted(REQUIRED_ENV))
def test_config_fails_without_a_required_variable(compose: Compose, variable: str) -> None:
    env = {k: v for k, v in REQUIRED_ENV.items() if k != variable}
    for value in ({}, {variable: ""}):  # unset, or set to nothing
        missing = compose.run("config", "--quiet", **env, **value)
        assert missing.returncode != 0, f"config passed without {variable}"
        assert variable in missing.stderr + missing.stdout


# --- Redis ACL users (deploy/redis; tests/integration/test_broker_acl.py runs them) -----------


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) of a service's volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = str(volume).split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def test_redis_starts_with_the_acl_users_and_the_default_user_off(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    # The entrypoint is deploy/redis/entrypoint.sh, mounted read-only with the ACL template.
    entrypoint = redis.get("entrypoint")
    assert isinstance(entrypoint, list), entrypoint
    script = PurePosixPath(entrypoint[-1])
    source, mode = _mounts(redis).get(str(script.parent), ("", ""))
    assert Path(source).resolve() == REDIS_DEPLOY, _mounts(redis)
    assert mode == "ro"
    assert (REDIS_DEPLOY / script.name).is_file()
    assert (REDIS_DEPLOY / "users.acl").is_file()
    # ...it renders the aclfile named by the command, outside the template's folder.
    command = _command(redis)
    assert command[0] == "redis-server", command
    aclfile = PurePosixPath(command[command.index("--aclfile") + 1])
    assert aclfile.parent != script.parent, "the template folder is read-only"
    assert "--appendonly" in command
    # The passwords reach the container; the template turns the default user off.
    env = _environment(redis)
    assert env["IMAGEGEN_REDIS_PRODUCER_PASSWORD"] == PRODUCER_PASSWORD
    assert env["IMAGEGEN_REDIS_WORKER_PASSWORD"] == WORKER_PASSWORD
    users = [line.split() for line in (REDIS_DEPLOY / "users.acl").read_text().splitlines()]
    defaults = [words for words in users if words[:2] == ["user", "default"]]
    assert defaults and "off" in defaults[0] and "on" not in defaults[0], defaults


def test_redis_healthcheck_logs_in_without_the_password_in_argv(
    services: dict[str, dict[str, Any]],
) -> None:
    check = _healthcheck(services["redis"])
    assert "--user imagegen-worker" in check
    assert "REDISCLI_AUTH=" in check, "the password goes to redis-cli through its environment"
    assert WORKER_PASSWORD not in check and PRODUCER_PASSWORD not in check
    assert "grep -q PONG" in check, "redis-cli exits 0 on NOAUTH: check the answer"


def test_app_services_log_in_as_the_workers_user(services: dict[str, dict[str, Any]]) -> None:
    for name in sorted(APP_SERVICES - {"simulator", "api"}):  # the API is a producer
        env = _environment(services[name])
        for key in ("IMAGEGEN_BROKER_URL", "IMAGEGEN_REDIS_URL"):
            if key not in env:
                continue
            url = urlsplit(env[key])
            assert (url.username, url.password) == ("imagegen-worker", WORKER_PASSWORD), (
                f"{name}: {key}"
            )
            assert (url.hostname, url.port) == ("redis", 6379), f"{name}: {key}"
    # Only Redis and the API know the producer password: other producers live elsewhere.
    holders = [name for name, s in services.items() if PRODUCER_PASSWORD in json.dumps(s)]
    assert holders == ["api", "redis"], holders


def test_redis_passwords_are_not_hard_coded(compose: Compose) -> None:
    raw = compose.config("--no-interpolate")["services"]
    for name, service in raw.items():
        for key, value in _environment(service).items():
            if "IMAGEGEN_REDIS_" in key and key.endswith("_PASSWORD"):
                assert re.fullmatch(rf"\$\{{{key}:\?[^}}]*\}}", value), f"{name}: {key}={value}"
            if key in {"IMAGEGEN_BROKER_URL", "IMAGEGEN_REDIS_URL"}:
                user = "PRODUCER" if name == "api" else "WORKER"
                assert f"${{IMAGEGEN_REDIS_{user}_PASSWORD:?" in value, f"{name}: {key}={value}"


def test_modellix_api_key_is_not_hard_coded(compose: Compose) -> None:
    raw = compose.config("--no-interpolate")["services"]
    holders = [n for n, s in raw.items() if "MODELLIX_API_KEY" in _environment(s)]
    assert holders, "no service gets MODELLIX_API_KEY"
    for name in holders:
        value = _environment(raw[name])["MODELLIX_API_KEY"]
        assert re.fullmatch(r"\$\{MODELLIX_API_KEY(:?-[^}]*)?\}", value), (
            f"{name}: MODELLIX_API_KEY must come from the environment, not {value!r}"
        )

    default = compose.config(**REQUIRED_ENV)["services"]
    for name in holders:
        fallback = _environment(default[name])["MODELLIX_API_KEY"]
        # A real key is long and random; the simulator placeholder is plain words.
        assert re.fullmatch(r"[a-z]{1,12}(-[a-z]{1,12}){0,3}", fallback), fallback

    real = "mx-0123456789abcdef0123456789abcdef"
    passed = compose.config(**REQUIRED_ENV, MODELLIX_API_KEY=real)
    for name in holders:
        assert _environment(passed["services"][name])["MODELLIX_API_KEY"] == real


# --- Dockerfile and .dockerignore -------------------------------------------------------------


@dataclass
class Stage:
    """One FROM ... section of the Dockerfile."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [args for kw, args in self.instructions if kw == keyword]
        return found[-1] if found else None


def _dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            logical.append((pending + line).strip())
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            image = rest.split()[0]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
            stages.append(Stage(base))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON) form: {args}"
    return [str(v) for v in value]


def _copy_sources(args: str) -> tuple[dict[str, str], list[str]]:
    words = _exec_form(args) if args.startswith("[") else shlex.split(args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1]


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1].replace("[!", "[^"), end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    pure = PurePosixPath(path)
    candidates = [str(pure), *(str(p) for p in pure.parents if str(p) != ".")]
    ignored = False
    for negated, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerfile_runtime_stage() -> None:
    _, stages = _dockerfile_stages()
    assert len(stages) >= 2, "expected a multi-stage build"
    assert all(s.base.startswith("python:3.11-slim") for s in stages), [s.base for s in stages]
    final = stages[-1]
    entrypoint, cmd, user = final.last("ENTRYPOINT"), final.last("CMD"), final.last("USER")
    assert entrypoint, "the runtime stage has no ENTRYPOINT"
    assert _exec_form(entrypoint) == ["imagegen"]
    assert cmd, "the runtime stage has no CMD"
    assert _exec_form(cmd) == ["worker"]
    assert user, "the runtime stage must switch to a non-root USER"
    assert user.split(":")[0] not in {"root", "0"}, f"USER {user} is root"
    env = " ".join(args for kw, args in final.instructions if kw == "ENV")
    assert "PYTHONUNBUFFERED=1" in env


def test_dockerfile_installs_the_lock_without_dev_dependencies() -> None:
    _, stages = _dockerfile_stages()
    runs = [args for stage in stages for kw, args in stage.instructions if kw == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs, "no `uv sync` in the Dockerfile"
    assert all("--frozen" in r and "--no-dev" in r for r in syncs), syncs
    build_args = dict(
        args.partition("=")[::2]
        for stage in stages
        for kw, args in stage.instructions
        if kw == "ARG"
    )
    pinned = [re.sub(r"\$\{?(\w+)\}?", lambda m: build_args.get(m.group(1), ""), r) for r in runs]
    makefile = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert makefile, "the Makefile no longer pins UV_VERSION"
    assert any(f"uv=={makefile.group(1)}" in r for r in pinned), "pin the Makefile's uv version"


def test_dockerfile_copies_only_existing_paths_that_reach_the_build_context() -> None:
    _, stages = _dockerfile_stages()
    rules = _dockerignore_rules()
    checked = 0
    for stage in stages:
        for keyword, args in stage.instructions:
            if keyword not in {"COPY", "ADD"}:
                continue
            flags, sources = _copy_sources(args)
            if "from" in flags:
                continue
            for source in sources:
                path = source.removeprefix("./").rstrip("/") or "."
                assert (ROOT / path).exists(), f"{keyword} {source}: no such path in the repo"
                assert not _ignored(path, rules), f"{keyword} {source}: .dockerignore drops it"
                checked += 1
    assert checked, "no COPY of repository files found"


def test_dockerfile_and_context_hold_no_secrets() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"^\s*(ENV|ARG)\b.*MODELLIX_API_KEY", text, re.MULTILINE)
    rules = _dockerignore_rules()
    for secret in (".env", ".git", ".venv", "demo-output"):
        assert _ignored(secret, rules), f".dockerignore lets {secret} into the build context"
