"""Where a job's end may go: reply queues and webhook URLs, checked against the contract and
the deployment's policy when a request is accepted; the delivery settings checked at start."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from api_schema import GenerationRequest, ReplyTo
from worker.config import Settings
from worker.delivery.targets import DeliveryPolicy, for_raw, for_request

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
BASE = {"prompt": "a portrait", "subject_reference_images": ["https://example.com/a.jpg"]}


@pytest.mark.parametrize(
    "queue",
    [
        "imagegen.upstream",
        "IMAGEGEN.requests",
        "ImageGen.deliveries",
        "imagegen:upstream:paused_until",
        "unacked",
        "unacked_index",
        "Unacked_mutex",
        "celery",
        "celeryev.x",
        "_kombu.binding.imagegen.requests",
        "a:b",
        "with space",
        "",
        "q" * 201,
    ],
)
def test_reply_queues_that_are_not_the_producers_own_are_refused(queue: str) -> None:
    with pytest.raises(ValidationError):
        ReplyTo(task="backend.done", queue=queue)


def test_a_reply_queue_of_the_producers_own_is_accepted() -> None:
    assert ReplyTo(task="backend.job_done", queue="backend.results").queue == "backend.results"


def test_the_deployment_may_require_a_reply_queue_prefix() -> None:
    request = GenerationRequest.model_validate(
        {**BASE, "reply_to": {"task": "t", "queue": "team-a.results"}}
    )
    policy = DeliveryPolicy(reply_prefixes=("reply.",))
    assert for_request(request, policy) == ([], "reply_to.queue: is not one of this "
                                            "deployment's reply queues (reply.*)")  # fmt: skip
    allowed = DeliveryPolicy(reply_prefixes=("team-a.",))
    targets, problem = for_request(request, allowed)
    assert problem is None
    assert targets == [{"channel": "reply", "target": {"task": "t", "queue": "team-a.results"}}]


def test_a_webhook_needs_signing_secrets_and_a_public_https_url() -> None:
    hooked = GenerationRequest.model_validate({**BASE, "webhook": {"url": "https://10.0.0.1/x"}})
    assert for_request(hooked, DeliveryPolicy(signing=False))[1] == (
        "webhook: this deployment signs no webhooks (IMAGEGEN_WEBHOOK_SECRETS)"
    )
    _, problem = for_request(hooked, DeliveryPolicy())
    assert problem is not None
    assert problem.startswith("webhook.url: ")
    local = GenerationRequest.model_validate({**BASE, "webhook": {"url": "http://127.0.0.1:9/h"}})
    assert for_request(local, DeliveryPolicy())[1] is not None
    assert for_request(local, DeliveryPolicy(allow_hosts=frozenset({"127.0.0.1"})))[1] is None


def test_a_refused_requests_valid_channels_still_hear_of_it() -> None:
    raw = {
        "prompt": "",
        "reply_to": {"task": "t", "queue": "backend.results"},
        "webhook": {"url": "https://10.0.0.1/x"},
    }
    policy = DeliveryPolicy(default_webhook="https://hooks.example.com/all")
    assert for_raw(raw, policy) == [
        {"channel": "reply", "target": {"task": "t", "queue": "backend.results"}},
        {"channel": "webhook", "target": {"url": "https://hooks.example.com/all"}, "default": True},
    ]
    assert (
        for_raw(raw, DeliveryPolicy(signing=False, default_webhook="https://h.example.com"))[1:]
        == []
    )
    assert for_raw("not a request", DeliveryPolicy()) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGEGEN_DELIVERY_SCHEDULE": "abc"}, "IMAGEGEN_DELIVERY_SCHEDULE"),
        ({"IMAGEGEN_DELIVERY_SCHEDULE": "5,-1"}, "IMAGEGEN_DELIVERY_SCHEDULE"),
        ({"IMAGEGEN_DELIVERY_SCHEDULE": "nan"}, "IMAGEGEN_DELIVERY_SCHEDULE"),
        ({"IMAGEGEN_DELIVERY_SCHEDULE": ","}, "IMAGEGEN_DELIVERY_SCHEDULE"),
        ({"IMAGEGEN_WEBHOOK_SECRETS": "not-a-secret"}, "IMAGEGEN_WEBHOOK_SECRETS"),
        ({"IMAGEGEN_WEBHOOK_SECRETS": f"{SECRET},{SECRET},{SECRET}"}, "at most two"),
        ({"IMAGEGEN_WEBHOOK_DEFAULT_URL": "https://hooks.example.com/x"}, "needs"),
        (
            {"IMAGEGEN_WEBHOOK_SECRETS": SECRET, "IMAGEGEN_WEBHOOK_DEFAULT_URL": "http://10.0.0.1"},
            "IMAGEGEN_WEBHOOK_DEFAULT_URL",
        ),
    ],
)
def test_delivery_settings_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_a_good_schedule_is_read_once() -> None:
    settings = Settings(delivery_schedule="0.5, 1,2")
    assert settings.delivery_steps == (0.5, 1.0, 2.0)
