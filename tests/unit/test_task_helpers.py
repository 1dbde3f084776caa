"""Small helpers of the task module that need no services."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.exc import OperationalError

from worker.jobs.service import _again_if_disconnected


def _failing(times: int, *, invalidated: bool) -> tuple[list[str], Callable[[str], str]]:
    calls: list[str] = []

    def step(value: str) -> str:
        calls.append(value)
        if len(calls) <= times:
            raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection"),
                                   connection_invalidated=invalidated)  # fmt: skip
        return value.upper()

    return calls, step


def test_a_step_that_met_a_broken_connection_runs_once_more() -> None:
    calls, step = _failing(1, invalidated=True)
    assert _again_if_disconnected(step, "answer") == "ANSWER"
    assert calls == ["answer", "answer"]


def test_only_once_more() -> None:
    calls, step = _failing(2, invalidated=True)
    with pytest.raises(OperationalError):
        _again_if_disconnected(step, "answer")
    assert len(calls) == 2


def test_other_database_errors_are_not_repeated() -> None:
    calls, step = _failing(1, invalidated=False)
    with pytest.raises(OperationalError):
        _again_if_disconnected(step, "answer")
    assert calls == ["answer"]
