"""The services' log lines: JSON shape, the job on every line about it, nothing secret.

Real records are rendered through the formatter the services install (``make_formatter``)
and parsed back from JSON.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from api_schema import ErrorCode, JobStatus, names
from worker import logs
from worker.config import Settings
from worker.jobs import ends

KEY = "mdlx-unitkey-SECRET-0123456789abcdef"
WEBHOOK = "whsec_" + base64.b64encode(b"webhook-secret-bytes-0123456789").decode()
TOKEN = "tok-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
FLOWER_PASSWORD = "flower-pw-9876543210"
SECRETS = [KEY, WEBHOOK, TOKEN, FLOWER_PASSWORD]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


class Captured:
    """What one logger wrote, through the services' formatter."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines()]


@pytest.fixture(autouse=True)
def _no_job_bound() -> Iterator[None]:
    logs.clear_task()
    yield
    logs.clear_task()


def capture(
    name: str, fmt: str = logs.LogFormat.JSON, secrets: list[str] | None = None
) -> Iterator[Captured]:
    logger = logging.getLogger(name)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logs.make_formatter("worker", fmt, SECRETS if secrets is None else secrets)
    )
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield Captured(stream)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@pytest.fixture
def ours() -> Iterator[Captured]:
    yield from capture("imagegen.unit")


@pytest.fixture
def celery_lines() -> Iterator[Captured]:
    yield from capture("celery.unit")


@pytest.fixture
def jobs_lines() -> Iterator[Captured]:
    yield from capture("imagegen.jobs")


def celery_record(fmt: str, task: str, task_id: str, argsrepr: str) -> None:
    """A task line as Celery writes it (celery.app.trace.info, worker.strategy)."""
    context = {"id": task_id, "name": task, "args": argsrepr, "kwargs": "{}", "runtime": 0.01}
    context |= {"return_value": "'submitted'", "exc": "Retry in 1s"}
    logging.getLogger("celery.unit").info(fmt, context, extra={"data": context})


# --- the shape of a line ----------------------------------------------------------------


def test_a_line_is_one_json_object_with_the_fixed_fields_first(ours: Captured) -> None:
    logs.get_logger("imagegen.unit").warning("job.copy_failed", job_id="j-1", image=2)
    (line,) = ours.lines()
    assert list(line)[:5] == ["timestamp", "level", "logger", "service", "event"]
    assert line["level"] == "warning"
    assert line["logger"] == "imagegen.unit"
    assert line["service"] == "worker"
    assert (line["event"], line["job_id"], line["image"]) == ("job.copy_failed", "j-1", 2)
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_other_libraries_records_and_exceptions_are_json_too(ours: Captured) -> None:
    plain = logging.getLogger("imagegen.unit")
    plain.info("connected to %s", "redis://127.0.0.1:6379/0")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        plain.exception("it failed")
        logs.get_logger("imagegen.unit").exception("job.crashed", job_id="j-2")
    first, second, third = ours.lines()
    assert first["event"] == "connected to redis://127.0.0.1:6379/0"
    assert first["level"] == "info"
    assert second["level"] == "error"
    assert "RuntimeError: boom" in second["exception"]
    assert "Traceback" in third["exception"] and third["job_id"] == "j-2"


def test_console_format_is_for_people() -> None:
    for console in capture("imagegen.console", logs.LogFormat.CONSOLE):
        logs.get_logger("imagegen.console").info("job.submitted", job_id="j-3", key=KEY)
        text = console.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "job.submitted" in text and "j-3" in text
    assert KEY not in text and logs.REDACTED in text


def test_a_log_format_other_than_json_or_console_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        logs.make_formatter("worker", "xml", [])
    assert Settings(log_format="console").log_format == "console"
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")


# --- the job on every line about it ------------------------------------------------------


def test_a_task_binds_its_job_and_forgets_it(ours: Captured) -> None:
    log = logs.get_logger("imagegen.unit")
    logs.bind_task(names.POLL_TASK, "celery-task-id", ("job-p", 3))
    log.info("job.poll_failed")
    logs.bind_upstream("job-p", "up-p")
    log.info("upstream.paused", seconds=1.0)
    logs.clear_task()
    log.info("sweep.acted", admitted=1)
    logs.bind_task(names.GENERATE_TASK, "job-g", ())
    log.info("job.submitted")
    logs.bind_task(names.SWEEP_TASK, "sweep-id", ())
    log.info("sweep.acted")
    lines = ours.lines()
    assert [(x.get("job_id"), x.get("upstream_task_id")) for x in lines] == [
        ("job-p", None),
        ("job-p", "up-p"),
        (None, None),
        ("job-g", None),  # nothing of the previous task is left
        (None, None),
    ]


def test_work_on_another_job_inside_a_task_is_about_that_job(ours: Captured) -> None:
    log = logs.get_logger("imagegen.unit")
    logs.bind_task(names.POLL_TASK, "t", ["job-a", 1])
    logs.bind_upstream("job-a", "up-a")
    logs.bind_upstream("job-x", "up-x")  # not this task's job: ignored
    with logs.about_job("job-b"):
        log.info("job.submitted")
        logs.bind_upstream("job-b", "up-b")
        log.info("upstream.paused")
    with logs.about_job("job-a"):  # the task's own job keeps what is known of it
        log.info("job.submitted")
    log.info("job.ended", job_id="job-c")  # names another job: none of job-a's fields
    log.info("task.done")
    got = [(x.get("job_id"), x.get("upstream_task_id")) for x in ours.lines()]
    assert got == [
        ("job-b", None),
        ("job-b", "up-b"),
        ("job-a", "up-a"),
        ("job-c", None),
        ("job-a", "up-a"),
    ]


@pytest.mark.parametrize(
    ("task", "task_id", "args", "job"),
    [
        (names.GENERATE_TASK, "job-1", (), "job-1"),
        (names.SUBMIT_TASK, "t", ("job-2",), "job-2"),
        (names.POLL_TASK, "t", ["job-3", 4], "job-3"),
        (names.POLL_TASK, "t", [], None),
        (names.POLL_TASK, "t", [7, 1], None),
        (names.POLL_TASK, "t", ["x" * 65, 1], None),
        (names.SWEEP_TASK, "t", (), None),
        (names.DELIVER_TASK, "t", ("delivery-1", 0), None),
    ],
)
def test_which_job_a_task_is_about(
    task: str, task_id: str, args: tuple[object, ...], job: str | None
) -> None:
    assert logs.job_of_task(task, task_id, args) == job


def test_celerys_task_lines_get_an_event_name_the_task_and_its_job(
    celery_lines: Captured,
) -> None:
    from celery.app import trace

    # received: written by the consumer before the task runs (nothing bound)
    celery_record(trace.LOG_RECEIVED, names.POLL_TASK, "poll-id", "('job-r', 2)")
    celery_record(trace.LOG_RECEIVED, names.GENERATE_TASK, "job-gen", "()")
    celery_record(trace.LOG_RECEIVED, names.SUBMIT_TASK, "submit-id", "['job-s']")
    # inside a task: the bound job and upstream task id
    logs.bind_task(names.POLL_TASK, "poll-id", ("job-r", 2))
    logs.bind_upstream("job-r", "up-r")
    celery_record(trace.LOG_RETRY, names.POLL_TASK, "poll-id", "('job-r', 2)")
    celery_record(trace.LOG_SUCCESS, names.POLL_TASK, "poll-id", "('job-r', 2)")
    logs.clear_task()
    celery_record(trace.LOG_SUCCESS, names.SWEEP_TASK, "sweep-id", "()")
    logging.getLogger("celery.unit").info("w1@host ready.")
    lines = celery_lines.lines()
    events = [(x["event"], x.get("task"), x.get("job_id")) for x in lines]
    assert events == [
        ("task.received", names.POLL_TASK, "job-r"),
        ("task.received", names.GENERATE_TASK, "job-gen"),
        ("task.received", names.SUBMIT_TASK, "job-s"),
        ("task.retry", names.POLL_TASK, "job-r"),
        ("task.succeeded", names.POLL_TASK, "job-r"),
        ("task.succeeded", names.SWEEP_TASK, None),
        ("w1@host ready.", None, None),
    ]
    assert lines[0]["message"] == f"Task {names.POLL_TASK}[poll-id] received"
    assert lines[0]["task_id"] == "poll-id"
    assert lines[4]["upstream_task_id"] == "up-r"
    assert "upstream_task_id" not in lines[0]


def test_every_end_writes_one_job_ended_line(jobs_lines: Captured) -> None:
    logs.bind_task(names.POLL_TASK, "t", ("job-own", 1))
    logs.bind_upstream("job-own", "up-own")
    ends.start()
    ends.announce(ends.Ended("job-own", JobStatus.SUCCEEDED, upstream_task_id="up-own"))
    long_message = "the upstream said no " + "x" * 1000 + " " + KEY
    ends.announce(
        ends.Ended(
            "job-other", JobStatus.FAILED, ErrorCode.UPSTREAM_FAILED, long_message, "up-other"
        )
    )
    ends.announce(ends.Ended("job-inv", JobStatus.FAILED, ErrorCode.INVALID_REQUEST, "width: bad"))
    assert len(ends.taken()) == 3
    own, other, invalid = jobs_lines.lines()
    assert {x["event"] for x in (own, other, invalid)} == {"job.ended"}
    assert (own["job_id"], own["status"], own["error_code"], own["upstream_task_id"]) == (
        "job-own",
        "succeeded",
        None,
        "up-own",
    )
    assert own["level"] == "info" and other["level"] == "warning"
    assert (other["job_id"], other["error_code"], other["upstream_task_id"]) == (
        "job-other",
        "upstream_failed",
        "up-other",
    )
    assert len(other["message"]) <= ends.LOGGED_MESSAGE_CHARS + 3
    assert other["message"].startswith("the upstream said no")
    # another job's end, inside this task, never takes this task's upstream task id
    assert (invalid["job_id"], invalid["error_code"], invalid["upstream_task_id"]) == (
        "job-inv",
        "invalid_request",
        None,
    )


# --- what never appears -------------------------------------------------------------------


def _b64_alignments(secret: str) -> list[str]:
    """The secret inside longer base64 blobs, at each byte alignment (as a header, a basic
    auth pair or a JSON body holding it would be encoded)."""
    raw = secret.encode()
    return [
        base64.b64encode(b"<" * shift + raw + b"> trailing bytes").decode() for shift in (0, 1, 2)
    ]


def _b64_cores(secret: str) -> list[str]:
    """What the secrets audit searches for: the middle of each alignment."""
    raw = secret.encode()
    return [base64.b64encode(b"\0" * shift + raw).decode()[4:-4] for shift in (1, 2)]


def test_data_urls_and_secrets_never_appear_in_any_field(ours: Captured) -> None:
    log = logs.get_logger("imagegen.unit")
    basic = base64.b64encode(f"ops:{FLOWER_PASSWORD}".encode()).decode()
    log.warning(
        "job.copy_failed",
        job_id="j",
        request={"subject_reference_images": [DATA_URL], "note": f"key={KEY}"},
        header=f"Authorization: Bearer {KEY}",
        encoded=base64.b64encode(f"Bearer {KEY}".encode()).decode(),
        inside=[f"xx{form}yy" for form in _b64_alignments(KEY)],
        webhook=WEBHOOK,
        token=f"Bearer {TOKEN}",
        basic=f"Basic {basic}",
        **{KEY: "as a key"},
    )
    logging.getLogger("imagegen.unit").error("stdlib text %s %s", DATA_URL[:200], KEY.upper())
    try:
        raise ValueError(f"refused {DATA_URL} with {KEY}")
    except ValueError:
        log.exception("job.crashed")
    text = ours.text()
    lines = ours.lines()
    assert len(lines) == 3
    for needle in [KEY, KEY[:20], WEBHOOK, TOKEN, FLOWER_PASSWORD, *_b64_cores(KEY)]:
        assert needle.lower() not in text.lower(), needle
    assert "base64," not in text
    assert base64.b64encode(PNG).decode()[:40] not in text
    size = f"<data-url {len(PNG)} bytes>"
    assert lines[0]["request"]["subject_reference_images"] == [size]
    cut = (200 - len("data:image/png;base64,")) * 3 // 4
    assert f"<data-url {cut} bytes>" in lines[1]["event"]  # a data URL cut short
    assert size in lines[2]["exception"] and logs.REDACTED in lines[2]["exception"]
    assert lines[0]["request"]["note"] == f"key={logs.REDACTED}"
    assert lines[0]["webhook"] == logs.REDACTED


def test_text_that_only_looks_like_a_data_url_is_kept(ours: Captured) -> None:
    logs.get_logger("imagegen.unit").info("job.submitted", note="metadata: data:, base64 ok")
    assert ours.lines()[0]["note"] == "metadata: data:, base64 ok"


def test_the_settings_secrets_are_all_scrubbed() -> None:
    settings = Settings(
        _env_file=None,
        modellix_api_key=SecretStr(KEY),
        webhook_secrets=SecretStr(WEBHOOK),
        api_tokens=SecretStr(f"acme:{TOKEN}"),
        flower_basic_auth=SecretStr(f"ops:{FLOWER_PASSWORD}"),
        message_key=SecretStr("message-key-0123456789"),
    )
    found = logs.secrets_of(settings)
    scrub = logs.Scrubber(found)
    for secret in (KEY, WEBHOOK, WEBHOOK.removeprefix("whsec_"), TOKEN, FLOWER_PASSWORD):
        assert secret in found
        assert scrub(f"<{secret}>") == f"<{logs.REDACTED}>"
    assert scrub("message-key-0123456789") == logs.REDACTED
    assert "hidden" in repr(scrub) and KEY not in repr(scrub)
    assert logs.Scrubber([])("nothing " + KEY) == "nothing " + KEY


def test_stray_output_becomes_json_lines() -> None:
    stream = io.StringIO()
    formatter = logs.make_formatter("worker", logs.LogFormat.JSON, [KEY])
    writer = logs._JsonLines(stream, formatter, "stdout")
    writer.write("worker: Warm ")
    writer.write(f"shutdown (MainProcess) {KEY}\n\nsecond line\npartial")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["event"], x["message"], x["logger"]) for x in lines] == [
        ("process.output", f"worker: Warm shutdown (MainProcess) {logs.REDACTED}", "stdout"),
        ("process.output", "second line", "stdout"),
    ]
    assert writer.fileno() is None  # Celery's direct write of its notice is left out


def test_the_services_logging_config_renders_through_one_handler() -> None:
    config = logs.dict_config("api", "json", "warning")
    assert config["root"]["level"] == "WARNING"
    assert config["formatters"]["imagegen"]["service"] == "api"
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert config["loggers"][name] == {"handlers": [], "propagate": True}
    handler = logs.stderr_handler()
    assert isinstance(handler, logging.StreamHandler)
