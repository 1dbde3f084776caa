"""The Node.js side of the tests: ``node`` with the packages of ``tests/node`` installed.

``make test`` installs them (``npm ci``, from the lock file); a test run started some other
way installs them here when ``node_modules`` is missing or older than the lock. Node.js is
part of every machine this project runs on, so a missing ``node`` fails rather than skips.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"


def node_binary() -> str:
    """The ``node`` executable, with ``tests/node``'s packages installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("Node.js and npm are needed for the Node.js tests")
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return node
