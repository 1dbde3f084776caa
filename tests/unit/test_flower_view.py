"""What Flower is shown: redacted task arguments, and FAILURE for tasks that failed a job."""

from __future__ import annotations

import base64
import pickle

import pytest

from api_schema import ErrorCode, JobStatus, names
from worker.jobs.ends import Ended
from worker.ops import failures, redact
from worker.ops.failures import JobFailed

SECRET = "S3CR3T-value"


def _data_url(kind: str, size: int) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(b"\x89PNG" + b"x" * (size - 4)).decode()


def test_a_request_is_summarised_field_by_field() -> None:
    prompt = "A watercolour portrait of a lighthouse keeper at dawn " + SECRET
    request = {
        "prompt": prompt,
        "subject_reference_images": [
            _data_url("png", 2150),
            f"https://user:{SECRET}@cdn.example.com/a.jpg?sig={SECRET}",
        ],
        "metadata": {"ticket": SECRET, "customer": {"id": SECRET}},
        "webhook": {"url": f"https://hooks.example.com/in?token={SECRET}"},
        "n": 2,
        "aspect_ratio": "16:9",
        "idempotency_key": SECRET,
        "unknown": SECRET,
    }
    args, kwargs = redact.summarize(names.GENERATE_TASK, [], {"request": request})
    assert args == "()"
    assert SECRET not in kwargs
    assert f"'{prompt[:40]}…' ({len(prompt)} chars)" in kwargs
    assert "<png 2.1 KB>" in kwargs
    assert "'https://cdn.example.com'" in kwargs
    assert "metadata: <keys: ticket, customer>" in kwargs
    assert "webhook: {url: 'https://hooks.example.com'}" in kwargs
    assert "n: 2" in kwargs and "aspect_ratio: '16:9'" in kwargs
    assert f"idempotency_key: <str {len(SECRET)} chars>" in kwargs
    assert f"unknown: <str {len(SECRET)} chars>" in kwargs


def test_values_of_the_wrong_type_are_shown_by_type_only() -> None:
    request = {"prompt": ["x"], "n": SECRET, "aspect_ratio": SECRET, "metadata": SECRET}
    args, kwargs = redact.summarize(names.GENERATE_TASK, [SECRET], {"request": request, SECRET: 1})
    assert SECRET not in args + kwargs
    assert args == f"(<str {len(SECRET)} chars>,)"
    assert "<field>: <int>" in kwargs  # a field name that is not an identifier is not shown
    assert "prompt: <list 1 items>" in kwargs


def test_long_lists_and_many_keys_are_capped() -> None:
    many = {f"k{i}": i for i in range(50)}
    images = ["https://example.com/a.jpg"] * 30
    _, kwargs = redact.summarize(
        names.GENERATE_TASK, [], {"request": {"metadata": many, "subject_reference_images": images}}
    )
    assert "<40 more>" in kwargs and "<20 more>" in kwargs
    assert len(kwargs) < 1000


def test_internal_arguments_show_ids_and_numbers_only() -> None:
    assert redact.summarize(names.POLL_TASK, ["job-1", 3], {}) == ("('job-1', 3)", "{}")
    args, kwargs = redact.summarize(
        names.SUBMIT_TASK, ("job-1",), {"upstream_task_id": "task_9", "attempt": 1}
    )
    assert (args, kwargs) == ("('job-1',)", "{upstream_task_id: 'task_9', attempt: 1}")
    assert redact.summarize(names.POLL_TASK, [f"a b {SECRET}"], {})[0] == "(<str 16 chars>,)"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("data:image/jpeg;base64,/9j/" + "A" * 1364, "<jpeg 1.0 KB>"),
        ("data:image/png;base64,iVBORw==", "<png 4 B>"),
        ("DATA:IMAGE/PNG;BASE64," + "A" * 4 * 1024 * 1024, "<png 3.0 MB>"),
        ("data:text/plain,hello", "<plain 5 B>"),
        ("ftp://example.com/x", "<url 19 chars>"),
        ("https://[::1", "<url 12 chars>"),
    ],
)
def test_url_summaries(url: str, shown: str) -> None:
    assert redact.url_summary(url) == shown


def test_a_failed_job_makes_its_task_fail_with_id_and_code_only() -> None:
    ends = [
        Ended("job-ok", JobStatus.SUCCEEDED),
        Ended("job-x", JobStatus.CANCELLED, ErrorCode.CANCELLED, "cancelled"),
        Ended("job-1", JobStatus.FAILED, ErrorCode.UPSTREAM_FAILED, f"upstream said {SECRET}"),
    ]
    with pytest.raises(JobFailed) as raised:
        failures.check(names.POLL_TASK, ends)
    assert str(raised.value) == "job job-1 failed: upstream_failed"
    # crosses a prefork pool's pipe intact
    assert str(pickle.loads(pickle.dumps(raised.value))) == str(raised.value)


def test_several_failed_jobs_are_named_in_one_failure() -> None:
    ends = [
        Ended("a", JobStatus.FAILED, ErrorCode.UPSTREAM_REJECTED),
        Ended("b", JobStatus.FAILED, ErrorCode.SUBMIT_OUTCOME_UNKNOWN),
    ]
    failed = JobFailed.of(ends)
    assert failed is not None
    assert str(failed) == "job a failed: upstream_rejected; job b failed: submit_outcome_unknown"


def test_cancelled_and_succeeded_jobs_and_the_sweeper_do_not_fail_tasks() -> None:
    failures.check(names.POLL_TASK, [Ended("x", JobStatus.CANCELLED, ErrorCode.CANCELLED)])
    failures.check(names.GENERATE_TASK, [Ended("y", JobStatus.SUCCEEDED)])
    failures.check(names.SWEEP_TASK, [Ended("z", JobStatus.FAILED, ErrorCode.DEADLINE_EXCEEDED)])


def test_messages_the_workers_publish_carry_the_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.broker import SignedTask
    from worker.ops.taskclass import ObservedTask

    sent: dict[str, object] = {}

    def capture(self: object, args: object, kwargs: object, **options: object) -> None:
        sent.update(options)

    monkeypatch.setattr(SignedTask, "apply_async", capture)

    class Generate(ObservedTask):
        name = names.GENERATE_TASK

    request = {"prompt": "p" * 100 + SECRET, "subject_reference_images": [_data_url("png", 99)]}
    Generate().apply_async(kwargs={"request": request}, countdown=2)  # a request's retry
    assert sent["argsrepr"] == "()"
    assert SECRET not in str(sent["kwargsrepr"])
    assert "<png 99 B>" in str(sent["kwargsrepr"])
    assert sent["countdown"] == 2


def test_a_summary_never_fails() -> None:
    class Hostile(dict[str, object]):
        def items(self) -> object:  # type: ignore[override]
            raise RuntimeError("boom")

    assert redact.summarize(names.GENERATE_TASK, [], Hostile(request=1)) == (
        "<not shown>",
        "<not shown>",
    )
