"""Test-control endpoints under /_sim: health, stats, tasks, config and reset."""

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from simulator.api import Simulator
from simulator.envelope import ApiError, dumps, error_body, invalid
from simulator.images import ImageCache
from simulator.state import Store


class Admin:
    """Handlers that inspect and steer a running Simulator; no auth, never part of the API."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def health(self, request: Request) -> Response:
        """GET /_sim/health."""
        return _json({"ok": True})

    async def stats(self, request: Request) -> Response:
        """GET /_sim/stats."""
        sim = self.sim
        config = sim.config
        return _json(sim.store.stats_dict(sim.clock(), config.balance, config.keys.values()))

    async def tasks(self, request: Request) -> Response:
        """GET /_sim/tasks[?team=...]: {"tasks": [...]}, every task still held, oldest first.

        Each row carries created_at, processing_at, ends_at and duration_seconds (the
        drawn upstream duration), enough to rebuild the ideal schedule of a run.
        """
        sim = self.sim
        now = sim.clock()
        ttl = sim.config.result_ttl_seconds
        team = request.query_params.get("team")
        rows = [
            {
                "task_id": task.task_id,
                "team": task.team,
                "prompt": task.params.prompt,
                "n": task.params.n,
                "status": "expired" if now >= task.ends_at + ttl else task.status(now),
                "created_at": task.created_at,
                "processing_at": task.processing_at,
                "ends_at": task.ends_at,
                # Drawn upstream duration, so a benchmark can rebuild the ideal schedule.
                "duration_seconds": task.ends_at - task.created_at,
            }
            for task in sim.store.tasks.values()
            if team is None or task.team == team
        ]
        return _json({"tasks": rows})

    async def get_config(self, request: Request) -> Response:
        """GET /_sim/config."""
        return _json(self.sim.config.public_dict())

    async def set_config(self, request: Request) -> Response:
        """POST /_sim/config: partial update of scalar fields and faults, applied live.

        Setting balance (even to its current value) restarts every team's ledger: each team
        then has the new balance in full, and refunds of earlier tasks no longer count.
        """
        try:
            changes: Any = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _error(invalid("body must be a JSON object"))
        if not isinstance(changes, dict):
            return _error(invalid("body must be a JSON object"))
        try:
            self.sim.config.update(changes)
        except ValueError as exc:
            return _error(invalid(str(exc)))
        if "balance" in changes:
            self.sim.restart_balances()
        nested = changes.get("faults")
        if "seed" in changes or (isinstance(nested, dict) and "seed" in nested):
            self.sim.reseed()
        if "timing_seed" in changes:
            self.sim.reseed_timing()
        return _json(self.sim.config.public_dict())

    async def reset(self, request: Request) -> Response:
        """POST /_sim/reset: forget tasks, quotas, spending, stats and cached images.

        The config is kept, so every team has the configured balance in full again.
        """
        self.sim.store = Store()
        self.sim.images = ImageCache()
        self.sim.reseed()
        self.sim.reseed_timing()
        return _json({"ok": True})


def _json(data: Any) -> Response:
    return Response(dumps(data), media_type="application/json")


def _error(err: ApiError) -> Response:
    return Response(error_body(err), err.status, media_type="application/json")
