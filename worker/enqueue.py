"""Messages a step wants sent, collected while a task runs and published in one place when
it ends (after polar's ``_enqueue``): the service names the next steps, the task sends them.

Every state change a message depends on is committed before the step that names it returns
(single statements in autocommit, or a transaction closed by then), so publishing at the
end keeps "committed before published". What is collected is published even when the task
then fails; a message lost with a killed worker is found again by the sweeper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Send:
    """One message to publish: a task by name, its arguments, an optional countdown."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None = None
    countdown: float | None = None


_pending: ContextVar[list[Send] | None] = ContextVar("imagegen_enqueue", default=None)


def later(task: str, *args: Any, countdown: float | None = None, **kwargs: Any) -> None:
    """Send ``task(*args, **kwargs)`` when the running task ends (at once outside one)."""
    send = Send(task, args, kwargs or None, countdown)
    pending = _pending.get()
    if pending is None:
        publish([send])
    else:
        pending.append(send)


@contextmanager
def collecting() -> Iterator[None]:
    """Collect what is sent with :func:`later` inside the block; publish it at its end."""
    token = _pending.set([])
    try:
        yield
    finally:
        sends = _pending.get() or []
        _pending.reset(token)
        publish(sends)


def publish(sends: list[Send]) -> None:
    """Publish through the workers' app (internal messages are signed there)."""
    from .celery_app import app

    for send in sends:
        app.tasks[send.task].apply_async(send.args, send.kwargs, countdown=send.countdown)
