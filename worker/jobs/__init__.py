"""Jobs: the state machine's SQL (``repository``), when to poll (``schedule``), and the thin
Celery tasks that move a job on (``tasks``). ``from worker import jobs`` gives the
repository's functions, which every other part of the worker calls."""

from .repository import *  # noqa: F403
from .repository import __all__ as _repository_all

__all__ = list(_repository_all)
