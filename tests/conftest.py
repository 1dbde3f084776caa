"""Fixtures: the unit tier needs nothing; the integration and fault tiers share one stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Stack, create_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh database (migrated), a flushed Redis db and a running simulator."""
    st = create_stack(
        tmp_path_factory.mktemp("stack"), int(os.environ.get("IMAGEGEN_TEST_REDIS_DB", "9"))
    )
    st.prepare()  # fails loudly here when Redis or PostgreSQL is down (make test starts them)
    st.start_sim()
    st.sim_reset()
    try:
        yield st
    finally:
        st.close()


@pytest.fixture(scope="module")
def worker_stack(stack: Stack) -> Iterator[Stack]:
    """The stack with one real worker process running (per test module)."""
    stack.clean()
    stack.start_worker("w1")
    try:
        yield stack
    finally:
        stack.stop_workers()


@pytest.fixture
def live(worker_stack: Stack) -> Stack:
    """A running worker and a clean slate: no jobs, no messages, simulator reset."""
    worker_stack.clean()
    return worker_stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under integration/ and fault/ get their markers from their folder."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "fault" in parts:
            item.add_marker(pytest.mark.fault)
