"""A real ``imagegen flower`` for tests: behind basic auth on a free port, and a way to
wait for what it shows (its pages fill in as the workers' events arrive)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import httpx

from devtools.procs import Proc, free_port, imagegen_argv
from tests.harness import Stack

T = TypeVar("T")


@dataclass
class Flower:
    proc: Proc
    url: str
    password: str
    client: httpx.Client  # authenticated

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Every task Flower knows, by task id."""
        return cast(dict[str, dict[str, Any]], self.client.get("/api/tasks").json())


@contextmanager
def running_flower(stack: Stack, user: str) -> Iterator[Flower]:
    """``imagegen flower`` with a fresh password, stopped when the block ends."""
    password = f"flowerpw-{secrets.token_hex(10)}"
    port = free_port()
    proc = stack.sup.start(
        "flower",
        imagegen_argv("flower", "--port", str(port)),
        env=stack.env(IMAGEGEN_FLOWER_BASIC_AUTH=f"{user}:{password}"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        stack.sup.wait_http(proc, f"{url}/api/workers", auth=(user, password))
        with httpx.Client(base_url=url, auth=(user, password), timeout=15) as client:
            yield Flower(proc, url, password, client)
    finally:
        proc.stop()


def wait_value(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """The first value ``probe`` returns that is not None (an HTTP error counts as None)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout}s")
        time.sleep(0.1)
