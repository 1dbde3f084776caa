"""The outbox: delivery rows of ended jobs, every SQL statement on them, and the buffer of
rows to publish once the statement that wrote them has committed.

A job's end and its delivery rows are one statement (``jobs.transition`` and
``jobs.record_invalid`` add them), so a job never ends without them. Their ids are buffered
here and published after the task (or CLI command) that ended the job returns; a row whose
message never went out, or went missing, is found again by the sweeper.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, cast

from sqlalchemy import Connection, Interval, Table, bindparam, func, select, text, update

from api_schema import DeliveryState, DeliveryView
from worker.models import JobDelivery

D = cast(Table, JobDelivery.__table__)
#: Longest a text of an attempt's outcome is kept (status code and a short excerpt).
MAX_ERROR: Final = 500

#: The SQL that turns a job's ``deliver_to`` into rows, spliced into the ending statement:
#: ``{source}`` is the CTE holding the ended job's id (as ``job_id``) and ``deliver_to``.
INSERT_ROWS: Final = (
    "outbox AS (INSERT INTO job_deliveries (id, job_id, channel, target, state, "
    "next_attempt_at) SELECT gen_random_uuid()::text, {source}.job_id, d->>'channel', "
    "d->'target', 'pending', now() FROM {source}, jsonb_array_elements(CASE "
    "jsonb_typeof({source}.deliver_to) WHEN 'array' THEN {source}.deliver_to "
    "ELSE '[]'::jsonb END) AS d RETURNING id)"
)

_buffer: ContextVar[list[str] | None] = ContextVar("imagegen_outbox", default=None)


def start_buffer() -> None:
    """Collect the deliveries written from here on (a task or command starts)."""
    _buffer.set([])


def buffer(ids: Iterable[str]) -> None:
    """Remember deliveries just written, to publish once their statement has committed."""
    collected = _buffer.get()
    if collected is not None:
        collected.extend(ids)


def take_buffer() -> list[str]:
    """The deliveries written since ``start_buffer``, forgotten here."""
    collected = _buffer.get() or []
    _buffer.set([])
    return collected


@dataclass(frozen=True)
class Claim:
    """The right to make attempt ``attempt`` of one delivery."""

    delivery_id: str
    job_id: str
    channel: str
    target: dict[str, Any]
    attempt: int  # 0 for the first


_CLAIM: Final = (
    update(D)
    .where(
        D.c.id == bindparam("p_id"),
        D.c.state == DeliveryState.PENDING.value,
        D.c.attempts == bindparam("p_attempt"),
        D.c.next_attempt_at <= func.now(),
    )
    .values(
        attempts=D.c.attempts + 1,
        updated_at=func.now(),
        next_attempt_at=func.now() + bindparam("p_hold", type_=Interval()),
    )
    .returning(D.c.job_id, D.c.channel, D.c.target)
)


def claim(
    connection: Connection, delivery_id: str, attempt: int, *, hold_for: float
) -> Claim | float | None:
    """Claim attempt ``attempt`` of a due delivery; the seconds until it is due when it is
    not yet; None for a stale or duplicate message (delivered, dead, or already tried)."""
    params = {"p_id": delivery_id, "p_attempt": attempt, "p_hold": timedelta(seconds=hold_for)}
    row = connection.execute(_CLAIM, params).first()
    if row is not None:
        return Claim(delivery_id, str(row.job_id), str(row.channel), dict(row.target), attempt)
    waiting = connection.execute(
        select(func.extract("epoch", D.c.next_attempt_at - func.now())).where(
            D.c.id == delivery_id,
            D.c.state == DeliveryState.PENDING.value,
            D.c.attempts == attempt,
        )
    ).scalar()
    return None if waiting is None else max(0.0, float(waiting))


def record(
    connection: Connection,
    delivery_id: str,
    *,
    attempt: int,
    state: DeliveryState,
    status: int | None,
    error: str | None,
    retry_in: float | None = None,
) -> bool:
    """Store the outcome of attempt ``attempt``: delivered, dead, or pending again after
    ``retry_in``. False when a later attempt was claimed meanwhile (its outcome stands)."""
    values: dict[str, Any] = {
        "state": state.value,
        "last_status": status,
        "last_error": error[:MAX_ERROR] if error else None,
        "updated_at": func.now(),
    }
    if state is DeliveryState.DELIVERED:
        values.update(delivered_at=func.now(), next_attempt_at=None)
    elif state is DeliveryState.DEAD:
        values.update(next_attempt_at=None)
    else:
        values.update(next_attempt_at=func.now() + timedelta(seconds=retry_in or 0.0))
    moved = connection.execute(
        update(D)
        .where(
            D.c.id == delivery_id,
            D.c.state == DeliveryState.PENDING.value,
            D.c.attempts == attempt + 1,
        )
        .values(**values)
    )
    return bool(moved.rowcount)


_OVERDUE: Final = text(
    "UPDATE job_deliveries SET next_attempt_at = now() + CAST(:p_recheck AS interval), "
    "updated_at = now() WHERE id IN (SELECT id FROM job_deliveries WHERE state = 'pending' "
    "AND next_attempt_at < now() - CAST(:p_stale AS interval) ORDER BY next_attempt_at "
    "LIMIT :p_limit "
    "FOR UPDATE SKIP LOCKED) RETURNING id, attempts"
)


def take_overdue(
    connection: Connection, *, stale_after: float, recheck_in: float, limit: int = 1000
) -> list[tuple[str, int]]:
    """Pending deliveries whose message went missing (or never went out): (id, attempts).

    Their next attempt is pushed forward, so a second sweep skips them while the
    re-published message runs; the claim's attempt number drops any duplicate.
    """
    rows = connection.execute(
        _OVERDUE,
        {
            "p_stale": timedelta(seconds=stale_after),
            "p_recheck": timedelta(seconds=recheck_in),
            "p_limit": limit,
        },
    ).all()
    return [(str(r.id), int(r.attempts)) for r in rows]


def retry_now(connection: Connection, delivery_id: str) -> int | None:
    """Make a delivery pending and due now (an operator's retry); its attempts, or None."""
    row = connection.execute(
        update(D)
        .where(D.c.id == delivery_id)
        .values(
            state=DeliveryState.PENDING.value,
            next_attempt_at=func.now(),
            delivered_at=None,
            updated_at=func.now(),
        )
        .returning(D.c.attempts)
    ).first()
    return None if row is None else int(row.attempts)


def views(connection: Connection, job_id: str) -> list[DeliveryView]:
    """A job's deliveries, oldest first."""
    rows = connection.execute(
        select(D).where(D.c.job_id == job_id).order_by(D.c.created_at, D.c.id)
    ).all()
    return [_view(r) for r in rows]


def listing(
    connection: Connection, *, state: DeliveryState | None, limit: int
) -> list[tuple[str, DeliveryView]]:
    """(job id, delivery) pairs, newest first."""
    query = select(D).order_by(D.c.created_at.desc(), D.c.id).limit(limit)
    if state is not None:
        query = query.where(D.c.state == state.value)
    return [(str(r.job_id), _view(r)) for r in connection.execute(query).all()]


def _view(row: Any) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        channel=row.channel,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
    )
