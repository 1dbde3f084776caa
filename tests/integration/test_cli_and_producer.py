"""The ``imagegen`` command and a producer that has only ``api_schema`` installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from api_schema import ErrorCode, JobStatus, JobView
from devtools.demo import portrait_png
from devtools.procs import imagegen_argv
from tests.harness import Stack, request

REPO = Path(__file__).resolve().parents[2]


def _imagegen(live: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        imagegen_argv(*args),
        env={**os.environ, **live.env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_submit_wait_then_status_json(live: Stack, tmp_path: Path) -> None:
    portrait = tmp_path / "me.png"
    portrait.write_bytes(portrait_png(256))
    done = _imagegen(
        live, "submit", "Pop art portrait", str(portrait), "--n", "2", "--aspect-ratio", "16:9",
        "--seed", "3", "--metadata", '{"ticket": 7}', "--wait", "--timeout", "60",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    job_id = done.stdout.splitlines()[0].strip()
    assert "succeeded" in done.stdout
    assert "2 (1280x720 png; 2 stored)" in done.stdout
    assert "succeeded" in done.stderr  # the progress display

    shown = _imagegen(live, "status", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    view = JobView.model_validate_json(shown.stdout)
    assert view.id == job_id
    assert view.status is JobStatus.SUCCEEDED
    assert view.metadata == {"ticket": 7}
    assert [(i.width, i.height) for i in view.images] == [(1280, 720), (1280, 720)]
    assert all(i.stored_path and Path(i.stored_path).is_file() for i in view.images)


def test_submit_refuses_invalid_input_before_enqueuing(live: Stack, tmp_path: Path) -> None:
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a....")
    bad_file = _imagegen(live, "submit", "x", str(gif))
    assert bad_file.returncode == 2
    assert "only JPEG and PNG" in bad_file.stderr
    bad_size = _imagegen(live, "submit", "x", "https://example.com/a.jpg", "--width", "1000")
    assert bad_size.returncode == 2
    assert "width" in bad_size.stderr
    assert live.sql("SELECT count(*) FROM jobs")[0][0] == 0


def test_status_of_unknown_job_fails_clearly(live: Stack) -> None:
    shown = _imagegen(live, "status", "no-such-job")
    assert shown.returncode == 1
    assert "no job no-such-job" in shown.stderr


def test_cancel_a_queued_job_and_a_running_one(live: Stack) -> None:
    live.sim_configure(processing_seconds=60)
    ids = [live.send(request()) for _ in range(4)]  # the limit is 3: one never gets in
    # Which three are admitted depends on which worker thread runs first: read it, never
    # assume it from the order they were sent. The fourth is queued, or admitted as a slot
    # probe that the upstream keeps refusing (back to queued each time).
    states: dict[str, str] = {}
    waiting = ("queued", "submitting")

    def settled() -> bool:
        views = live.views(ids)
        states.update({i: v.status.value for i, v in views.items() if v is not None})
        running = [i for i in ids if states.get(i) in ("pending", "processing")]
        return len(running) == 3 and sum(states.get(i) in waiting for i in ids) == 1

    live.wait_for(settled, timeout=30, what="three jobs upstream and one waiting")
    queued = next(i for i in ids if states[i] in waiting)
    running = next(i for i in ids if states[i] in ("pending", "processing"))
    outcome: list[subprocess.CompletedProcess[str]] = []

    def cancel_queued() -> bool:
        # a probe's POST under way cannot be cancelled; its refusal is a moment away
        outcome.append(_imagegen(live, "cancel", queued))
        return outcome[-1].returncode == 0 or "under way" not in outcome[-1].stderr

    live.wait_for(cancel_queued, timeout=30, what="the cancel of the waiting job")
    assert outcome[-1].returncode == 0, outcome[-1].stderr
    # stop polling a submitted job: its slot is given back
    assert _imagegen(live, "cancel", running).returncode == 0
    again = _imagegen(live, "cancel", queued)
    assert again.returncode == 1
    assert "cancelled; nothing to cancel" in again.stderr
    views = live.views(ids)
    assert views[queued] is not None
    assert views[queued].error_code is ErrorCode.CANCELLED  # type: ignore[union-attr]
    assert views[queued].upstream_task_id is None  # type: ignore[union-attr]
    assert views[running].status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert len(live.sim_tasks()) == 3


def _uv() -> str:
    found = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv not found: run `make install`"
    return found


def test_producer_with_only_api_schema_installed(live: Stack, tmp_path: Path) -> None:
    venv = tmp_path / "producer"
    subprocess.run([_uv(), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            _uv(),
            "pip",
            "install",
            "-q",
            "--python",
            str(python),
            f"{REPO / 'api_schema'}[producer]",
        ],
        check=True,
        timeout=300,
    )
    script = textwrap.dedent(
        """
        import json, sys
        from api_schema import GenerationRequest
        from api_schema.producer import enqueue
        job_id = enqueue(
            GenerationRequest(
                prompt=sys.argv[2],
                subject_reference_images=["https://example.com/face.jpg"],
                n=2,
            ),
            broker_url=sys.argv[1],
        )
        try:
            import worker  # noqa: F401
            has_worker = True
        except ImportError:
            has_worker = False
        print(json.dumps({"job_id": job_id, "has_worker": has_worker,
                          "modules": sorted({m.split(".")[0] for m in sys.modules})}))
        """
    )
    prompt = request()["prompt"]
    done = subprocess.run(
        [str(python), "-c", script, live.broker_url, prompt],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["has_worker"] is False
    assert not {"worker", "simulator", "sqlalchemy", "httpx"} & set(report["modules"])

    job = live.wait_ended([report["job_id"]])[report["job_id"]]
    assert job.status is JobStatus.SUCCEEDED
    assert len(job.images) == 2
    assert [t["prompt"] for t in live.sim_tasks()] == [prompt]
