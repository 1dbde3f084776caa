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
    reply_prefixes: tuple[str, ...] = ()  # a reply queue must start with one (empty: any)


def webhook_problem(url: str, policy: DeliveryPolicy) -> str | None:
    """Why ``url`` may not receive webhooks under ``policy`` (https, public addresses), or
    None. Names resolved now; they are resolved again before each attempt."""
    from .webhooks import resolve_problem

    try:
        problem = resolve_problem(url, policy.allow_hosts)
    except (ValueError, UnicodeError):  # a host no URL parser agrees on
        return "is not a valid URL"
    # A name that does not resolve now may later: only a definite refusal is final here.
    return None if problem is None or problem.retryable else problem.message


def static_webhook_problem(url: str, policy: DeliveryPolicy) -> str | None:
    """:func:`webhook_problem` without resolving the name (where a lookup may not block)."""
    from .webhooks import url_problem

    try:
        return url_problem(url, policy.allow_hosts)
    except (ValueError, UnicodeError):
        return "is not a valid URL"


def reply_problem(reply: ReplyTo, policy: DeliveryPolicy) -> str | None:
    """Why this deployment does not send replies to ``reply``'s queue, or None."""
    if policy.reply_prefixes and not reply.queue.startswith(policy.reply_prefixes):
        return (
            "is not one of this deployment's reply queues ("
            + ", ".join(f"{p}*" for p in policy.reply_prefixes)
            + ")"
        )
    return None


def for_request(
    request: GenerationRequest, policy: DeliveryPolicy
) -> tuple[list[dict[str, Any]], str | None]:
    """The job's ``deliver_to``, or the problem (naming the field) that makes it invalid."""
    found: list[dict[str, Any]] = []
    if request.reply_to is not None:
        problem = reply_problem(request.reply_to, policy)
        if problem is not None:
            return [], f"reply_to.queue: {problem}"
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
    Names are not resolved here (it may run on the broker's consumer thread); they are
    before each attempt.
    """
    found: list[dict[str, Any]] = []
    if isinstance(raw, dict):
        try:
            if raw.get("reply_to") is not None:
                reply = ReplyTo.model_validate(raw["reply_to"])
                if reply_problem(reply, policy) is None:
                    found.append({"channel": REPLY, "target": reply.model_dump()})
        except ValidationError:
            pass
        try:
            if raw.get("webhook") is not None and policy.signing:
                hook = WebhookTarget.model_validate(raw["webhook"])
                if static_webhook_problem(hook.url, policy) is None:
                    found.append({"channel": WEBHOOK, "target": {"url": hook.url}})
        except ValidationError:
            pass
    return [*found, *_default(policy)]


def _default(policy: DeliveryPolicy) -> list[dict[str, Any]]:
    if policy.default_webhook is None or not policy.signing:
        return []
    return [{"channel": WEBHOOK, "target": {"url": policy.default_webhook}, "default": True}]
