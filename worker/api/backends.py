"""The API's hot paths on async connections: a psycopg pool for reading a job and recording
a new one, and a Redis client for pushing its request.

The statements are the repository's own (``VIEW_SQL``, ``INSERT_JOB_SQL``), run by psycopg
directly: on this path SQLAlchemy's per-call statement building and a thread hop per request
cost more than the database round trip itself (see the README's API benchmark).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, cast

from psycopg import AsyncConnection
from psycopg.rows import namedtuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.engine import make_url

from api_schema import REQUESTS_QUEUE, JobView
from worker import jobs
from worker.config import Settings
from worker.logs import get_logger

log = get_logger("imagegen.api")
#: Seconds a POST waits for its push to Redis.
PUSH_TIMEOUT: Final = 2.0


def conninfo(database_url: str) -> str:
    """libpq's form of an SQLAlchemy URL (``postgresql+psycopg://`` → ``postgresql://``)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def _configure(connection: AsyncConnection[Any]) -> None:
    connection.row_factory = namedtuple_row
    # Prepared at first use: the same few statements run on every request.
    connection.prepare_threshold = 0


@dataclass
class Backends:
    """The API process's pool and broker client, opened at start, closed at stop."""

    pool: AsyncConnectionPool[AsyncConnection[Any]]
    redis: Redis

    @classmethod
    def of(cls, settings: Settings) -> Backends:
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo(settings.database_url),
            min_size=2,
            max_size=16,
            timeout=10,  # waiting for a free connection: then 503, not a hung request
            kwargs={"autocommit": True, "connect_timeout": 5},
            configure=_configure,
            open=False,
            name="imagegen-api",
        )
        # No retries: the job is recorded before its push, and a push that fails is made up
        # for by the sweeper; a POST should not wait through a broker outage.
        redis = Redis.from_url(
            settings.api_broker,
            socket_timeout=PUSH_TIMEOUT,
            socket_connect_timeout=PUSH_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(pool, redis)

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()

    async def view(self, job_id: str, *, tenant: str) -> JobView | None:
        """The tenant's job (following an idempotency alias), with its deliveries."""
        async with self.pool.connection() as connection:
            cursor = await connection.execute(
                jobs.VIEW_SQL, jobs.view_params(job_id, tenant=tenant)
            )
            row = await cursor.fetchone()
        return jobs.job_view(row) if row is not None else None

    async def insert(self, params: dict[str, Any]) -> bool:
        """Record a new job (``jobs.insert_job_params``); False when its id or key is taken."""
        bound = {k: Jsonb(v) if k in jobs.INSERT_JOB_JSON else v for k, v in params.items()}
        async with self.pool.connection() as connection:
            cursor = await connection.execute(jobs.INSERT_JOB_SQL, bound)
            return await cursor.fetchone() is not None

    async def push(self, entry: str, job_id: str) -> bool:
        """Send a request to the workers as any producer does (``entry``: the
        ``imagegen.generate`` message of ``api_schema.message``, task id = job id); False
        when the broker is away (the job is recorded: the sweeper admits it)."""
        try:
            await asyncio.wait_for(
                cast(Awaitable[int], self.redis.lpush(REQUESTS_QUEUE, entry)), PUSH_TIMEOUT
            )
        except Exception as exc:  # noqa: BLE001 - any broker failure: the sweeper admits it
            # recorded, but its message was not sent
            log.warning("job.not_pushed", job_id=job_id, error=type(exc).__name__)
            return False
        return True
