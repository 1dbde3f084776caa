"""Start and stop the service processes the demo, the benchmarks and the tests need."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when the process that started it dies, so a killed test
    # run or benchmark never leaves workers consuming from its Redis db.
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def imagegen_argv(*args: str) -> list[str]:
    """argv running the ``imagegen`` command with this interpreter."""
    return [sys.executable, "-m", "worker", *args]


@dataclass
class Proc:
    """One child process and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (a prefork worker's children too)."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


class StartupError(RuntimeError):
    """A service did not come up."""


class Supervisor:
    """Starts child processes with logs in one folder; stops them all on exit."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = dict(env if env is not None else os.environ)
        self.procs: list[Proc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Proc:
        """Start ``argv`` in its own process group, logging to ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        popen = subprocess.Popen(
            list(argv),
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        proc = Proc(name, popen, log_path, log)
        self.procs.append(proc)
        return proc

    def wait_until(
        self, proc: Proc, ready: Callable[[], bool], timeout: float = 60.0, what: str = "ready"
    ) -> None:
        """Wait until ``ready()`` is true; fail early when the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise StartupError(
                    f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}"
                )
            try:
                if ready():
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise StartupError(f"{proc.name} not {what} after {timeout:.0f}s:\n{proc.log_tail()}")

    def wait_http(
        self, proc: Proc, url: str, timeout: float = 60.0, auth: tuple[str, str] | None = None
    ) -> None:
        """Wait until ``url`` answers 200."""

        def ok() -> bool:
            return httpx.get(url, timeout=2.0, auth=auth).status_code == 200

        self.wait_until(proc, ok, timeout, what=f"answering {url}")

    def stop_all(self) -> None:
        """Stop every child, newest first."""
        for proc in reversed(self.procs):
            proc.stop()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
