"""Engine and sessions: one engine per process, created on first use after a fork."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from .config import get_settings

_engine: tuple[int, Engine, sessionmaker[Session]] | None = None


def _state() -> tuple[Engine, sessionmaker[Session]]:
    global _engine
    # A prefork child must not reuse the parent's sockets: rebuild when the pid changed.
    if _engine is None or _engine[0] != os.getpid():
        settings = get_settings()
        engine = create_engine(
            settings.database_url,
            # No ping before each checkout (a round trip per transaction): a connection
            # broken by a database restart fails its statement, SQLAlchemy then discards
            # the whole pool, and the task is retried (tasks.INFRA_ERRORS); a step that
            # records an upstream answer runs once more at once instead
            # (jobs.service._again_if_disconnected), since a retried task could not record it.
            pool_pre_ping=False,
            # a connection per worker thread, plus the admission calls between transactions
            pool_size=max(5, settings.worker_concurrency + 2),
            max_overflow=10,
            pool_recycle=1800,
            hide_parameters=True,  # bound values never reach exception texts or logs
        )
        _engine = (os.getpid(), engine, sessionmaker(engine, expire_on_commit=False))
    return _engine[1], _engine[2]


def get_engine() -> Engine:
    """This process's engine."""
    return _state()[0]


def reset_engine() -> None:
    """Forget this process's engine (after fork, or when settings change in tests)."""
    global _engine
    if _engine is not None and _engine[0] == os.getpid():
        _engine[1].dispose()
    _engine = None


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    factory = _state()[1]
    with factory() as session, session.begin():
        yield session


@contextmanager
def transaction() -> Iterator[Connection]:
    """A connection in a transaction that commits on success and rolls back on error.

    The workers' hot path: the state machine runs on it without the ORM session's cost.
    """
    with get_engine().begin() as connection:
        yield connection


@contextmanager
def autocommit() -> Iterator[Connection]:
    """A connection where each statement commits on its own.

    For ``jobs.admit`` (its lock must not outlive the call) and for the state changes that
    are one statement (a transition, a poll claim, a new job): no BEGIN or COMMIT round
    trip, and a worker's time is mostly round trips.
    """
    with get_engine().connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")
