"""The production package ships no dev tooling: the demo and benchmarks live in ``devtools/``."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("worker", "simulator")
DEV_ONLY = {"devtools", "bench", "tests"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_production_packages_import_no_dev_tooling() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in PRODUCTION
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(_imported_modules(path))
        if name.split(".")[0] in DEV_ONLY
    ]
    assert not offenders, offenders


def test_wheel_and_image_leave_dev_tooling_out() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert not DEV_ONLY & set(packages), packages
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "devtools" not in dockerfile
    assert "!devtools" not in (ROOT / ".dockerignore").read_text()


def _subcommands(command: Any) -> dict[str, Any]:
    # Typer vendors its own click: look at the group's commands, not at its class.
    commands = getattr(command, "commands", None)
    assert isinstance(commands, dict), f"{command!r} is not a command group"
    return commands


def _commands(app: typer.Typer) -> dict[str, Any]:
    return _subcommands(typer.main.get_command(app))


def test_imagegen_has_production_commands_only() -> None:
    from worker.cli import app

    commands = _commands(app)
    assert {"worker", "beat", "flower", "simulator", "db", "submit", "status"} <= set(commands)
    assert not {"demo", "bench"} & set(commands)


def test_devtools_cli_has_demo_and_bench() -> None:
    from devtools.cli import app

    commands = _commands(app)
    assert {"demo", "bench"} <= set(commands)
    assert set(_subcommands(commands["bench"])) == {
        "throughput",
        "inflight",
        "utilization",
        "realistic",
        "api",
        "all",
    }
