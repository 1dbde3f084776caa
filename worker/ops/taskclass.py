"""The workers' task class: signed messages (``broker.SignedTask``), plus what operators see.

- Every message it publishes (first sends, countdowns, retries) carries redacted
  ``argsrepr``/``kwargsrepr`` (``redact``), and the worker recomputes them on receipt
  (``RedactedRequest``), whatever a producer sent.
- A task whose step ended a job as ``failed`` raises :class:`~.failures.JobFailed` after
  the step (``failures``): the task ends in FAILURE in Celery's events and in Flower. By
  then the step's state changes are committed and the messages it named are published
  (``enqueue.collecting`` publishes when the block ends); the message is acked (late acks
  with ``task_acks_on_failure_or_timeout``), ``JobFailed`` is in no ``autoretry_for``, and
  being in ``throws`` it is logged as one line, without a traceback.
"""

from __future__ import annotations

from typing import Any

from worker.broker import SignedTask
from worker.jobs import ends

from . import failures, redact
from .failures import JobFailed


class ObservedTask(SignedTask):
    """Signed, redacted, and FAILURE when the task failed a job."""

    Request = "worker.ops.redact:RedactedRequest"
    throws = (JobFailed,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The worker's tracer calls this instead of ``run`` (it has pushed the request
        # context already, so ``run`` is called directly, as Celery's docs show).
        result = self.run(*args, **kwargs)
        # Only after a normal return: a retry (Retry, autoretry) propagates untouched.
        failures.check(self.name, ends.taken())
        return result

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        **options: Any,
    ) -> Any:
        argsrepr, kwargsrepr = redact.summarize(self.name, args or (), kwargs or {})
        options.setdefault("argsrepr", argsrepr)
        options.setdefault("kwargsrepr", kwargsrepr)
        return super().apply_async(args, kwargs, task_id=task_id, **options)
