"""Starlette application factory for the Modellix simulator."""

import asyncio
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from simulator.admin import Admin
from simulator.api import DropConnection, Simulator
from simulator.config import SimConfig
from simulator.envelope import ApiError, error_body
from simulator.state import anonymous_headers

# Any non-None return value makes uvicorn close the socket without writing a response.
DROPPED = "simulator: connection dropped on purpose"
_CATEGORIES = {404: "Resource not found", 405: "Method not allowed"}


class SimApp(Starlette):
    """Starlette plus the drop_after_create fault: a DropConnection becomes a hard close."""

    sim: Simulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection; see DROPPED."""
        try:
            await super().__call__(scope, receive, send)
        except DropConnection:
            return DROPPED  # type: ignore[return-value]  # uvicorn's close-without-reply path


def create_app(
    config: SimConfig,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> SimApp:
    """Build the simulator app; clock and sleep are injectable so tests need no real time."""
    sim = Simulator(config, clock, sleep)
    admin = Admin(sim)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        category = _CATEGORIES.get(status, "Internal server error")
        err = ApiError(status, category, f"{request.method} {request.url.path}", "http")
        headers = None
        if request.url.path.startswith("/api/"):
            headers = anonymous_headers(clock(), config.rpm_limit)
        return Response(error_body(err), status, headers, media_type="application/json")

    routes = [
        Route("/api/v1/tasks/{task_id}", sim.query, methods=["GET"]),
        Route("/api/v1/{provider}/{model}", sim.submit, methods=["POST"]),
        Route("/api/v1/{provider}/{model}/async", sim.submit, methods=["POST"]),
        Route("/files/{task_id}/{index:int}.png", sim.file, methods=["GET"]),
        Route("/_sim/health", admin.health, methods=["GET"]),
        Route("/_sim/stats", admin.stats, methods=["GET"]),
        Route("/_sim/tasks", admin.tasks, methods=["GET"]),
        Route("/_sim/config", admin.get_config, methods=["GET"]),
        Route("/_sim/config", admin.set_config, methods=["POST"]),
        Route("/_sim/reset", admin.reset, methods=["POST"]),
    ]
    app = SimApp(routes=routes, exception_handlers={HTTPException: http_error})
    app.sim = sim
    return app
