"""Where a job's end goes: the channels a request asked for, checked against the deployment's
policy when the request is accepted, and fixed on the job as ``deliver_to``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from api_schema import GenerationRequest, ReplyTo, WebhookTarget

REPLY: Final = "reply"
WEBHOOK: Final = "webhook"


@dataclass(frozen=True)
class DeliveryPolicy:
    """The deployment's rules for deliveries (``IMAGEGEN_WEBHOOK_*`` settings)."""

    default_webhook: str | None = None  # every job's end also goes here
    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    signing: bool = True  # webhook secrets are configured


def webhook_problem(url: str, policy: DeliveryPolicy) -> str | None:
    """Why ``url`` may not receive webhooks under ``policy`` (https, public addresses), or
    None. Names resolved now; they are resolved again before each attempt."""
    from .webhooks import resolve_problem

    problem = resolve_problem(url, policy.allow_hosts)
    # A name that does not resolve now may later: only a definite refusal is final here.
    return None if problem is None or problem.retryable else problem.message


def for_request(
    request: GenerationRequest, policy: DeliveryPolicy
) -> tuple[list[dict[str, Any]], str | None]:
    """The job's ``deliver_to``, or the problem (naming the field) that makes it invalid."""
    found: list[dict[str, Any]] = []
    if request.reply_to is not None:
        found.append({"channel": REPLY, "target": request.reply_to.model_dump()})
    if request.webhook is not None:
        if not policy.signing:
            return [], "webhook: this deployment signs no webhooks (IMAGEGEN_WEBHOOK_SECRETS)"
        problem = webhook_problem(request.webhook.url, policy)
        if problem is not None:
            return [], f"webhook.url: {problem}"
        found.append({"channel": WEBHOOK, "target": {"url": request.webhook.url}})
    return [*found, *_default(policy)], None


def for_raw(raw: object, policy: DeliveryPolicy) -> list[dict[str, Any]]:
    """The channels of a request that is invalid as a whole: each one that is valid alone.

    The producer of a refused request hears of it the same way it would of a finished job.
    """
    found: list[dict[str, Any]] = []
    if isinstance(raw, dict):
        try:
            if raw.get("reply_to") is not None:
                reply = ReplyTo.model_validate(raw["reply_to"])
                found.append({"channel": REPLY, "target": reply.model_dump()})
        except ValidationError:
            pass
        try:
            if raw.get("webhook") is not None:
                hook = WebhookTarget.model_validate(raw["webhook"])
                if webhook_problem(hook.url, policy) is None:
                    found.append({"channel": WEBHOOK, "target": {"url": hook.url}})
        except ValidationError:
            pass
    return [*found, *_default(policy)]


def _default(policy: DeliveryPolicy) -> list[dict[str, Any]]:
    if policy.default_webhook is None:
        return []
    return [{"channel": WEBHOOK, "target": {"url": policy.default_webhook}, "default": True}]
