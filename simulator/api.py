"""The Modellix-facing endpoints: submit, task query and result files."""

import hashlib
import random
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from simulator.config import SimConfig
from simulator.envelope import (
    MODEL_ID,
    ApiError,
    error_body,
    not_found,
    success_body,
)
from simulator.images import ImageCache, ImageSpec
from simulator.state import Store, Task, TeamState, anonymous_headers
from simulator.timing import draw_durations
from simulator.validation import parse_submit

_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")
_FAIL_REASONS = (
    "content moderation: the generated image was blocked by the safety filter",
    "generation failed: upstream model returned no image",
    "generation timed out",
)


# A BaseException on purpose: Starlette's error middleware turns any Exception into a 500
# response, but lets this through to SimApp, which turns it into a hard close.
class DropConnection(BaseException):
    """Abort the request so the server closes the connection without any response."""


class Simulator:
    """Holds the live config and state and serves the API routes."""

    def __init__(
        self,
        config: SimConfig,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.store = Store()
        self.images = ImageCache()
        self.rng = random.Random(config.faults.seed)
        # Durations get their own RNG: a fault roll (or its absence) must not shift them.
        self.timing_rng = random.Random(config.timing_seed)

    def reseed(self) -> None:
        """Restart the fault RNG from the configured seed."""
        self.rng = random.Random(self.config.faults.seed)

    def reseed_timing(self) -> None:
        """Restart the duration RNG from the configured timing_seed."""
        self.timing_rng = random.Random(self.config.timing_seed)

    def roll(self, name: str, probability: float) -> bool:
        """Draw one fault; counts it in faults_injected when it fires."""
        if probability <= 0 or (probability < 1 and self.rng.random() >= probability):
            return False
        self.store.stats.faults_injected[name] += 1
        return True

    def authenticate(self, request: Request) -> str:
        """Return the caller's team or raise 401; the key itself is never echoed."""
        header = request.headers.get("authorization")
        if header is None:
            raise _auth_error("missing Authorization header")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or _TOKEN.fullmatch(token) is None:
            raise _auth_error("malformed Authorization header, expected 'Bearer <API key>'")
        keys = self.config.keys
        if not keys:
            # Open mode: every token is its own team, labelled by a hash so the key never
            # shows up in /_sim output.
            return "key-" + hashlib.blake2b(token.encode(), digest_size=6).hexdigest()
        team = keys.get(token)
        if team is None:
            raise _auth_error("invalid API key")
        return team

    def admit(self, quota: TeamState, now: float) -> None:
        """Apply the per-team RPM window and the rate_burst_429 fault."""
        limit = self.config.rpm_limit
        if not quota.try_request(now, limit):
            raise ApiError(
                429,
                "Rate limit exceeded",
                f"more than {limit} requests per minute, retry later",
                "rate_limit",
                retry_after=quota.retry_after(now),
            )
        if self.roll("rate_burst_429", self.config.faults.rate_burst_429):
            raise ApiError(
                429, "Rate limit exceeded", "too many requests, retry later", "fault_429", 1
            )

    async def submit(self, request: Request) -> Response:
        """POST /api/v1/{provider}/{model}[/async]."""
        now = self.clock()
        config = self.config
        quota: TeamState | None = None
        try:
            team = self.authenticate(request)
            provider = request.path_params["provider"]
            model = request.path_params["model"]
            if (provider, model) != ("minimax", MODEL_ID):
                raise not_found(f"model '{provider}/{model}' not found")
            params = parse_submit(await request.body())
            if self.roll("submit_400", config.faults.submit_400):
                # A plausible upstream 400 that no client-side validation can predict.
                raise ApiError(
                    400,
                    "Invalid parameters",
                    "parameter 'prompt' was rejected by content moderation",
                    "fault_400",
                )
            quota = self.store.team(team)
            self.admit(quota, now)
            active = quota.active(now)
            limit = config.concurrency_limit
            if limit and active >= limit:
                raise ApiError(
                    429,
                    "Concurrent limit exceeded",
                    f"{active} tasks pending or processing, team limit is {limit}",
                    "concurrency_limit",
                    retry_after=quota.next_free(now),
                )
            cost = Decimal(config.price_per_image) * params.n
            self._check_balance(quota, now, cost, params.n)
            self._server_faults("submit", config.faults.submit_500, config.faults.submit_503)
        except ApiError as err:
            self.store.stats.submits_rejected[err.reason] += 1
            return await self.error(err, quota, now)
        self.store.purge(now, config.result_ttl_seconds)
        error = None
        if self.roll("fail_task", config.faults.fail_task):
            error = config.faults.fail_reason or self.rng.choice(_FAIL_REASONS)
        pending, processing = draw_durations(
            config, self.timing_rng, params.n, params.width, params.height
        )
        # No await since the balance check: the reservation cannot race another submit.
        task = self.store.create(
            team,
            params,
            now,
            pending,
            processing,
            error,
            f"{cost:.4f}",
        )
        quota.reserve(now, cost, task.ends_at if error is not None else None)
        stats = self.store.stats
        stats.submits_accepted += 1
        stats.max_concurrency = max(stats.max_concurrency, active + 1)
        body = success_body(
            {
                "status": "pending",
                "task_id": task.task_id,
                "model_id": MODEL_ID,
                "get_result": {
                    "method": "GET",
                    "url": f"{config.public_base_url.rstrip('/')}/api/v1/tasks/{task.task_id}",
                },
            }
        )
        return await self.answer(body, quota.rate_headers(now, config.rpm_limit), created=True)

    async def query(self, request: Request) -> Response:
        """GET /api/v1/tasks/{task_id}."""
        now = self.clock()
        config = self.config
        stats = self.store.stats
        stats.polls += 1
        quota: TeamState | None = None
        task_id: str = request.path_params["task_id"]
        try:
            team = self.authenticate(request)
            quota = self.store.team(team)
            self.admit(quota, now)
            self._server_faults("query", config.faults.query_500, config.faults.query_503)
            task = self.store.live(task_id, now, config.result_ttl_seconds)
            if task is None or task.team != team:
                raise not_found(f"task '{task_id}' not found")
        except ApiError as err:
            stats.polls_by_status[err.reason] += 1
            return await self.error(err, quota, now)
        status = task.status(now)
        stats.polls_by_status[status] += 1
        body = success_body(self.task_view(task, status))
        return await self.answer(body, quota.rate_headers(now, config.rpm_limit), created=False)

    async def file(self, request: Request) -> Response:
        """GET /files/{task_id}/{index}.png: public, like a CDN."""
        now = self.clock()
        task_id: str = request.path_params["task_id"]
        index: int = request.path_params["index"]
        task = self.store.live(task_id, now, self.config.result_ttl_seconds)
        if self.roll("file_503", self.config.faults.file_503):
            return Response(b"busy", 503, media_type="text/plain")
        gone = self.roll("file_404", self.config.faults.file_404)
        if gone or task is None or task.status(now) != "success" or index >= task.params.n:
            err = not_found(f"file '{task_id}/{index}.png' not found")
            return Response(error_body(err), 404, media_type="application/json")
        params = task.params
        if self.config.images == "stock":  # one file per size and index, rendered once
            spec = ImageSpec("stock", 0, params.width, params.height, index, "")
            reference = None
        else:
            spec = ImageSpec(
                params.prompt, task.seed, params.width, params.height, index, params.reference_key
            )
            reference = params.reference
        data = await self.images.get(spec, reference)
        self.store.stats.file_downloads += 1
        return Response(data, media_type="image/png")

    def task_view(self, task: Task, status: str) -> dict[str, Any]:
        """The query payload's data object for status."""
        data: dict[str, Any] = {"status": status, "task_id": task.task_id, "model_id": MODEL_ID}
        if status == "failed":
            data["error"] = task.error
        elif status == "success":
            params = task.params
            base = f"{self.config.public_base_url.rstrip('/')}/files/{task.task_id}"
            data["duration"] = round((task.ends_at - task.created_at) * 1000)
            data["result"] = {
                "resources": [
                    {
                        "url": f"{base}/{index}.png",
                        "type": "image",
                        "width": params.width,
                        "height": params.height,
                        "format": self.config.faults.result_format or "png",
                        "role": "primary",
                    }
                    for index in range(params.n)
                ],
                "metadata": {"image_count": params.n, "request_id": task.request_id},
                "extensions": {
                    "submit_time": _iso(task.created_at),
                    "end_time": _iso(task.ends_at),
                },
            }
            data["billing"] = {"status": "succeeded", "amount": task.amount}
            expires = task.ends_at + self.config.result_ttl_seconds
            data["result_expires_at"] = int(expires * 1000)
        return data

    async def answer(self, body: bytes, headers: dict[str, str], *, created: bool) -> Response:
        """A 200 answer after the latency, hang, drop and malformed-JSON faults."""
        faults = self.config.faults
        delay = faults.latency_ms / 1000
        if self.roll("hang", faults.hang_probability):
            delay += faults.hang_seconds
        if delay > 0:
            await self.sleep(delay)
        if created and self.roll("drop_after_create", faults.drop_after_create):
            raise DropConnection
        if self.roll("malformed_json", faults.malformed_json):
            # Half a JSON document never parses: the client cannot tell what happened.
            body = body[: len(body) // 2]
        return Response(body, 200, headers, media_type="application/json")

    async def error(self, err: ApiError, quota: TeamState | None, now: float) -> Response:
        """An error envelope with rate headers, after the latency fault."""
        limit = self.config.rpm_limit
        headers = anonymous_headers(now, limit) if quota is None else quota.rate_headers(now, limit)
        if err.reason == "fault_429":
            headers["X-RateLimit-Remaining"] = "0"
        if err.retry_after is not None:
            headers["Retry-After"] = str(err.retry_after)
        latency = self.config.faults.latency_ms
        if latency > 0:
            await self.sleep(latency / 1000)
        return Response(error_body(err), err.status, headers, media_type="application/json")

    def restart_balances(self) -> None:
        """Give every team the configured balance again (after balance is set at runtime)."""
        for quota in self.store.teams.values():
            quota.restart_ledger()

    def _check_balance(self, quota: TeamState, now: float, cost: Decimal, n: int) -> None:
        balance = self.config.balance
        if balance is None:
            return
        remaining = quota.remaining(now, Decimal(balance))
        if remaining < cost:
            images = "image" if n == 1 else "images"
            raise ApiError(
                402,
                "Insufficient balance",
                f"remaining balance {remaining:.4f} is less than {cost:.4f} for {n} {images}",
                "insufficient_balance",
            )

    def _server_faults(self, kind: str, p500: float, p503: float) -> None:
        if self.roll(f"{kind}_500", p500):
            raise ApiError(
                500, "Internal server error", "an unexpected error occurred", "fault_500"
            )
        if self.roll(f"{kind}_503", p503):
            raise ApiError(
                503,
                "Service unavailable",
                "the service is temporarily unavailable, retry later",
                "fault_503",
            )


def _auth_error(detail: str) -> ApiError:
    return ApiError(401, "Authentication failed", detail, "auth")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
