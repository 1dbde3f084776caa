"""The pipeline's decisions (worker/jobs/decisions.py), without Celery, a database or HTTP."""

from __future__ import annotations

import pytest

from api_schema import ErrorCode, JobStatus
from worker.jobs.decisions import (
    DEFAULT_PAUSE,
    PollAnswer,
    SubmitAnswer,
    SweepAction,
    after_poll,
    after_submit,
    split_admitted,
    sweep_action,
)
from worker.jobs.repository import Overdue
from worker.upstream.client import (
    OutcomeUnknownError,
    PermanentError,
    RateLimit,
    RetryableError,
    TaskState,
    UpstreamError,
)

CAP = 30.0


def _state(status: str, error: str | None = None) -> TaskState:
    return TaskState(task_id="t1", status=status, rate_limit=RateLimit(), error=error)


def test_an_accepted_post_is_polled() -> None:
    assert after_submit(None, resubmit_unknown=False, cap=CAP).answer is SubmitAnswer.ACCEPTED


@pytest.mark.parametrize(
    ("error", "pause"),
    [
        (RetryableError("rate", status=429, retry_after=5.0), 5.0),
        (RetryableError("rate", status=429, retry_after=500.0), CAP),
        (RetryableError("busy", status=503), DEFAULT_PAUSE),
        (RetryableError("refused", status=None), None),  # nothing reached the upstream
    ],
)
def test_a_post_not_accepted_goes_back_to_the_queue(
    error: UpstreamError, pause: float | None
) -> None:
    decision = after_submit(error, resubmit_unknown=False, cap=CAP)
    assert decision.answer is SubmitAnswer.NOT_ACCEPTED
    assert decision.code is None
    assert decision.pause == pause
    assert error.message in decision.message


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, ErrorCode.UPSTREAM_REJECTED),
        (401, ErrorCode.UPSTREAM_AUTH),
        (402, ErrorCode.UPSTREAM_PAYMENT),
        (422, ErrorCode.UPSTREAM_REJECTED),
    ],
)
def test_a_refused_post_ends_the_job_with_its_code(status: int, code: ErrorCode) -> None:
    decision = after_submit(PermanentError("no", status=status), resubmit_unknown=True, cap=CAP)
    assert decision.answer is SubmitAnswer.REJECTED
    assert decision.code is code


def test_an_unknown_outcome_is_never_sent_again_unless_configured() -> None:
    error = OutcomeUnknownError("HTTP 502", status=502)
    decision = after_submit(error, resubmit_unknown=False, cap=CAP)
    assert decision.answer is SubmitAnswer.UNKNOWN
    assert decision.code is ErrorCode.SUBMIT_OUTCOME_UNKNOWN
    assert "not resubmitted" in decision.message
    resubmit = after_submit(error, resubmit_unknown=True, cap=CAP)
    assert resubmit.answer is SubmitAnswer.RESUBMIT
    assert resubmit.code is None


def test_a_503_with_an_unknown_outcome_still_pauses_everyone() -> None:
    error = OutcomeUnknownError("HTTP 503", status=503, retry_after=2.0)
    assert after_submit(error, resubmit_unknown=False, cap=CAP).pause == 2.0


@pytest.mark.parametrize(
    ("state", "answer", "code"),
    [
        (_state("success"), PollAnswer.SUCCEEDED, None),
        (_state("failed", "nsfw"), PollAnswer.FAILED, ErrorCode.UPSTREAM_FAILED),
        (_state("processing"), PollAnswer.STARTED, None),
        (_state("pending"), PollAnswer.RUNNING, None),
    ],
)
def test_a_poll_answer_means(state: TaskState, answer: PollAnswer, code: ErrorCode | None) -> None:
    decision = after_poll(state, None, cap=CAP)
    assert decision.answer is answer
    assert decision.code is code


def test_a_failed_task_keeps_its_reason_or_says_it_failed() -> None:
    assert after_poll(_state("failed", "nsfw"), None, cap=CAP).message == "nsfw"
    assert "failed" in after_poll(_state("failed"), None, cap=CAP).message


def test_an_unanswered_poll_is_asked_again_and_a_refused_one_ends() -> None:
    retry = after_poll(None, RetryableError("HTTP 429", status=429, retry_after=3.0), cap=CAP)
    assert retry.answer is PollAnswer.RETRY
    assert retry.pause == 3.0
    gone = after_poll(None, PermanentError("HTTP 404", status=404), cap=CAP)
    assert gone.answer is PollAnswer.ENDED
    assert gone.code is ErrorCode.UPSTREAM_NOT_FOUND


def test_a_poll_needs_a_state_or_an_error() -> None:
    with pytest.raises(ValueError, match="either"):
        after_poll(None, None, cap=CAP)


@pytest.mark.parametrize(
    ("status", "started", "action"),
    [
        (JobStatus.SUBMITTING, True, SweepAction.OUTCOME_UNKNOWN),
        (JobStatus.SUBMITTING, False, SweepAction.SUBMIT),
        (JobStatus.PENDING, True, SweepAction.POLL),
        (JobStatus.PROCESSING, True, SweepAction.POLL),
    ],
)
def test_the_sweeper_never_sends_a_post_blindly_again(
    status: JobStatus, started: bool, action: SweepAction
) -> None:
    assert sweep_action(Overdue("j", status, started, 3)) is action


def test_the_admitting_task_posts_the_first_few_and_messages_the_rest() -> None:
    assert split_admitted(["a", "b", "c"], 2) == (["a", "b"], ["c"])
    assert split_admitted(["a"], 4) == (["a"], [])
    assert split_admitted(["a", "b"], 0) == ([], ["a", "b"])
