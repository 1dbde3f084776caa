"""Structured logs: one JSON object per line, the job on every line about a job.

Every long-running service (``imagegen worker``, ``beat``, ``api``, ``flower``,
``simulator``) calls :func:`configure` (or hands :func:`dict_config` to uvicorn) before it
starts: the root logger gets one handler whose :class:`structlog.stdlib.ProcessorFormatter`
renders our own structlog events and every stdlib record (Celery, kombu, httpx, uvicorn,
tornado) the same way. ``IMAGEGEN_LOG_FORMAT=console`` renders for people instead; the
interactive CLI commands never call :func:`configure` and keep their Rich output.

A line carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``service``, ``event``
(a stable name such as ``job.ended``; the text itself for other libraries' records) and
its fields. Lines about a job carry ``job_id``, and ``upstream_task_id`` once known:

- a task binds its job when it starts (:func:`bind_task`, from ``task_prerun``) and
  forgets it when it ends (:func:`clear_task`, ``task_postrun``), so Celery's own lines
  inside the task carry it too; Celery's "received" lines, written before the task starts,
  get it from the record's task name and arguments (the same rule, :func:`job_of_task`);
- the service binds the upstream task id when it learns it (:func:`bind_upstream`);
- work on another job inside a task (a job it admitted and POSTs) runs inside
  :func:`about_job`; a line naming its job explicitly never gets another job's upstream id.

Every rendered line goes through :class:`Scrubber` last, whatever produced it (exception
text and tracebacks included): data URLs become ``<data-url N bytes>`` and the configured
secrets (API key in every form the upstream client masks, webhook secrets, API tokens,
Flower's password, the message key) ``[redacted]``. Stray writes to stdout/stderr (Celery's
shutdown notice, an uncaught traceback) are turned into JSON lines as well.
"""

from __future__ import annotations

import ast
import logging
import logging.config
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, TextIO, cast

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, clear_contextvars
from structlog.typing import EventDict, Processor, WrappedLogger

from api_schema import names

if TYPE_CHECKING:
    from .config import Settings

JOB_ID: Final = "job_id"
UPSTREAM_TASK_ID: Final = "upstream_task_id"
#: The longest job id (the jobs.id column); anything longer names no job.
MAX_JOB_ID: Final = 64
#: What replaces a secret in a rendered line.
REDACTED: Final = "[redacted]"
#: Encoded forms shorter than this are not replaced: they would match ordinary text.
MIN_FORM_CHARS: Final = 8
#: Tasks whose first argument is their job's id (``imagegen.generate``'s task id is).
_JOB_ARG_TASKS: Final = frozenset({names.SUBMIT_TASK, names.POLL_TASK})
#: A data URL in any rendered text (the payload may be cut short by a repr). The media
#: type and parameters are bounded, so text full of "data:" costs linear time, not more.
_DATA_URL: Final = re.compile(
    r"data:[^,;\s\"'\\]{0,128}(?:;[^,;\s\"'\\]{0,64}){0,8}?;base64,([A-Za-z0-9+/_-]*)=*",
    re.IGNORECASE,
)
#: The first element of a task's argsrepr, ``('job', 3)`` or ``['job', 3]``.
_FIRST_ARG: Final = re.compile(r"""[(\[]\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


class LogFormat(StrEnum):
    """How a service renders its lines (``IMAGEGEN_LOG_FORMAT``)."""

    JSON = "json"
    CONSOLE = "console"


# --- which job a line is about ---------------------------------------------------------


def job_of_task(task: str, task_id: str, args: Sequence[object]) -> str | None:
    """The job a task runs for: ``imagegen.generate``'s task id, the first argument of
    submit and poll; None for the others (sweep, deliver) and for what cannot be a job id."""
    job: object = None
    if task == names.GENERATE_TASK:
        job = task_id
    elif task in _JOB_ARG_TASKS and args:
        job = args[0]
    if isinstance(job, str) and 0 < len(job) <= MAX_JOB_ID:
        return job
    return None


def bind_task(task: str, task_id: str, args: Sequence[object]) -> None:
    """A task starts: its lines name it and its job (nothing left from the previous task)."""
    clear_contextvars()
    bind_contextvars(task=task, task_id=task_id)
    job = job_of_task(task, task_id, args)
    if job is not None:
        bind_contextvars(**{JOB_ID: job})


def clear_task() -> None:
    """A task ended: the thread's next lines are about no job."""
    clear_contextvars()


def bind_job(job_id: str) -> None:
    """The running task's lines are about ``job_id`` from here on (a task that learns its
    job only as it runs, such as a delivery)."""
    bind_contextvars(**{JOB_ID: job_id, UPSTREAM_TASK_ID: None})


def bind_upstream(job_id: str, upstream_task_id: str) -> None:
    """The service learned ``job_id``'s upstream task id: the following lines carry it when
    they are about that job (a task working on another job leaves its own context alone)."""
    if structlog.contextvars.get_contextvars().get(JOB_ID) == job_id:
        bind_contextvars(**{UPSTREAM_TASK_ID: upstream_task_id})


@contextmanager
def about_job(job_id: str) -> Iterator[None]:
    """Lines logged inside are about ``job_id`` (then the task's own job again)."""
    if structlog.contextvars.get_contextvars().get(JOB_ID) == job_id:
        yield  # the task's own job: what is learned about it stays bound
        return
    with bound_contextvars(**{JOB_ID: job_id, UPSTREAM_TASK_ID: None}):
        yield


def _merge_job_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The bound context, under the line's own fields: a line naming another job than the
    bound one keeps its own (and gets no upstream task id of the bound job)."""
    bound = structlog.contextvars.get_contextvars()
    if not bound:
        return event_dict
    other_job = JOB_ID in event_dict and event_dict[JOB_ID] != bound.get(JOB_ID)
    for key, value in bound.items():
        if value is None or key in event_dict:
            continue
        if other_job and key == UPSTREAM_TASK_ID:
            continue
        event_dict[key] = value
    return event_dict


def _celery_task_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Celery's task lines (received, succeeded, retry, failed) get a stable event name,
    their task, task id and job; the text moves to ``message``."""
    record = event_dict.get("_record")
    data = getattr(record, "data", None)
    if not isinstance(data, dict):
        return event_dict
    task, task_id = data.get("name"), data.get("id")
    if not isinstance(task, str) or not isinstance(task_id, str):
        return event_dict
    kind = _CELERY_EVENTS.get(str(getattr(record, "msg", "")).strip())
    if kind is not None:
        event_dict["message"] = event_dict["event"]
        event_dict["event"] = kind
    event_dict.setdefault("task", task)
    event_dict.setdefault("task_id", task_id)
    job = job_of_task(task, task_id, _first_arg(data.get("args")))
    if job is not None:
        event_dict.setdefault(JOB_ID, job)
    return event_dict


def _first_arg(argsrepr: object) -> list[object]:
    """The first argument of a task from its argsrepr (the text Celery logs), if a string."""
    if not isinstance(argsrepr, str):
        return []
    match = _FIRST_ARG.match(argsrepr)
    if match is None:
        return []
    try:
        return [ast.literal_eval(match.group(1))]
    except (ValueError, SyntaxError):
        return []


def _celery_events() -> dict[str, str]:
    from celery.app import trace

    return {
        trace.LOG_RECEIVED.strip(): "task.received",
        trace.LOG_SUCCESS.strip(): "task.succeeded",
        trace.LOG_RETRY.strip(): "task.retry",
        trace.LOG_FAILURE.strip(): "task.failed",  # also the internal error's format
        trace.LOG_IGNORED.strip(): "task.ignored",
        trace.LOG_REJECTED.strip(): "task.rejected",
    }


_CELERY_EVENTS: Final = _celery_events()


# --- what never appears ----------------------------------------------------------------


class Scrubber:
    """Replaces data URLs and the given secrets in rendered text (a post-render step, so it
    covers keys, values, exception text and tracebacks alike)."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        from .upstream.client import secret_forms

        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.add(secret)  # a short secret is still replaced where it appears whole
            forms.update(f for f in secret_forms(secret) if len(f) >= MIN_FORM_CHARS)
        # Longest first, so a form is never replaced by a shorter one inside it.
        ordered = sorted(forms, key=len, reverse=True)
        self._secrets = (
            re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE) if ordered else None
        )

    def __repr__(self) -> str:
        return "Scrubber(<secrets hidden>)"

    def __call__(self, text: str) -> str:
        """``text`` without data URLs or secrets."""
        text = _DATA_URL.sub(_data_url_size, text)
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        return text


def _data_url_size(match: re.Match[str]) -> str:
    return f"<data-url {len(match.group(1)) * 3 // 4} bytes>"


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the settings hold, as it could be echoed."""
    found: list[str] = []
    for value in (
        settings.modellix_api_key,
        settings.webhook_secrets,
        settings.api_tokens,
        settings.flower_basic_auth,
        settings.message_key,
    ):
        if value is not None and value.get_secret_value():
            found.append(value.get_secret_value())
    found += list(settings.webhook_secret_list)
    found += [s.removeprefix("whsec_") for s in settings.webhook_secret_list]
    if settings.api_tokens is not None:
        pairs = settings.api_tokens.get_secret_value().split(",")
        found += [pair.partition(":")[2].strip() for pair in pairs]
    if settings.flower_basic_auth is not None:
        found.append(settings.flower_basic_auth.get_secret_value().partition(":")[2])
    return [s for s in found if s]


# --- rendering -------------------------------------------------------------------------

#: Run on every line, in the thread that logs it (the job context is per thread).
_SHARED: Final[list[Processor]] = [
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _merge_job_context,
]
#: The fields every line starts with, in this order (the rest follow as they came).
_FIRST: Final = ("timestamp", "level", "logger", "service", "event", JOB_ID, UPSTREAM_TASK_ID)


class _Service:
    """Adds the service's name and puts the fixed fields first."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", self.service)
        first: EventDict = {key: event_dict.pop(key) for key in _FIRST if key in event_dict}
        first.update(event_dict)
        return first


class _Scrub:
    """The last step: the rendered line, scrubbed."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber

    def __call__(self, _: WrappedLogger, __: str, rendered: Any) -> str:
        return self.scrubber(str(rendered))


def make_formatter(
    service: str,
    fmt: str = LogFormat.JSON,
    secrets: Iterable[str] | None = None,
    colors: bool = False,
) -> structlog.stdlib.ProcessorFormatter:
    """The formatter of every line (a ``logging.config`` factory, so uvicorn's worker
    processes build their own). ``secrets`` None: those of the process's settings."""
    if secrets is None:
        from .config import get_settings

        secrets = secrets_of(get_settings())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=colors)
        if LogFormat(fmt) is LogFormat.CONSOLE
        else structlog.processors.JSONRenderer(default=repr)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_celery_task_fields, *_SHARED],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _Service(service),
            structlog.processors.format_exc_info,
            renderer,
            _Scrub(Scrubber(secrets)),
        ],
    )


def dict_config(service: str, fmt: str = LogFormat.JSON, level: str = "INFO") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a service: one stderr handler on the root
    logger; uvicorn's loggers hand their records to it."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "imagegen": {
                "()": f"{__name__}.make_formatter",
                "service": service,
                "fmt": str(fmt),
                "colors": LogFormat(fmt) is LogFormat.CONSOLE and sys.stderr.isatty(),
            }
        },
        "handlers": {"stderr": {"()": f"{__name__}.stderr_handler", "formatter": "imagegen"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def stderr_handler() -> logging.Handler:
    """The handler of every line: the process's real stderr (not its stray-output wrapper)."""
    return logging.StreamHandler(_real(sys.stderr))


def configure(service: str, fmt: str = LogFormat.JSON, level: str = "INFO") -> None:
    """Configure this process's logging for a long-running service (before it starts)."""
    logging.config.dictConfig(dict_config(service, fmt, level))
    from celery.signals import setup_logging, worker_shutdown

    # Celery configures logging only when nobody answers this signal: ours stays.
    setup_logging.connect(_keep_ours, weak=False)
    worker_shutdown.connect(_stopped, weak=False)
    logging.captureWarnings(True)  # a warning is one line, not its text on stderr
    if LogFormat(fmt) is LogFormat.JSON:
        handler = logging.getLogger().handlers[0]
        assert handler.formatter is not None
        _capture_stray_output(handler.formatter)


def _keep_ours(**_: Any) -> None:
    """Answers Celery's ``setup_logging``: the logging configured here stays as it is."""


def _stopped(**_: Any) -> None:
    # Not from worker_shutting_down: that is sent inside the signal handler, which may have
    # interrupted this thread in the middle of writing a line.
    get_logger("imagegen.worker").info("worker.stopped")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger whose calls are ``log.info("event.name", field=value, ...)``."""
    return structlog.stdlib.get_logger(name)


structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,
        *_SHARED,
        structlog.processors.format_exc_info,  # here: the traceback is this thread's
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)


# --- stray output ----------------------------------------------------------------------


class _JsonLines:
    """A text stream that writes each complete line as a log line (event ``process.output``)
    to the stream it wraps: what Celery prints at shutdown, an uncaught traceback."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter, name: str) -> None:
        self.wrapped = stream
        self._formatter = formatter
        self._logger = logging.getLogger(name)
        self._pending = threading.local()

    def write(self, text: str) -> int:
        buffered = getattr(self._pending, "text", "") + text
        *lines, rest = buffered.split("\n")
        self._pending.text = rest
        for line in lines:
            if line.strip():
                self._emit(line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.wrapped.flush()

    def fileno(self) -> int | None:
        """None for stdout: Celery's shutdown notice, written to the descriptor of
        ``sys.__stdout__`` when it has one, is then left out (the worker logs
        ``worker.stopped`` when it has); stderr keeps its descriptor (faulthandler)."""
        return None if self._logger.name == "stdout" else self.wrapped.fileno()

    def _emit(self, line: str) -> None:
        event: EventDict = {"event": "process.output", "message": line}
        for processor in _SHARED:
            event = cast(EventDict, processor(self._logger, "info", event))
        record = self._logger.makeRecord(self._logger.name, logging.INFO, "", 0, event, (), None)
        # what structlog.stdlib.ProcessorFormatter.wrap_for_formatter attaches
        record._logger = self._logger
        record._name = "info"
        # one write per line, so the lines of several threads do not interleave
        self.wrapped.write(self._formatter.format(record) + "\n")
        self.wrapped.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def _real(stream: TextIO) -> TextIO:
    return stream.wrapped if isinstance(stream, _JsonLines) else stream


def _capture_stray_output(formatter: logging.Formatter) -> None:
    # Celery writes its shutdown notice to sys.__stdout__, read at the time it writes.
    for name in ("stdout", "stderr"):
        wrapper = _JsonLines(_real(getattr(sys, name)), formatter, name)
        setattr(sys, name, wrapper)
        setattr(sys, f"__{name}__", wrapper)
