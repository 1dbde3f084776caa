"""admission with a slot probe: one job beyond the limit, sent when a slot is likely free

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:00:00

``imagegen_admit_probing`` is ``imagegen_admit`` (0004) plus the slot probe. The upstream frees
a slot the moment a task ends, while we learn of it only at our next poll of that task. So when
a backlog waits and every slot is taken, one queued job more is admitted as a *probe*: the
worker POSTs it when a slot is likely free (``worker/jobs/probes.py``). Accepted, a slot was
free and is busy again at once; refused with "Concurrent limit exceeded" (never charged), it goes
back to the queue and is probed again later.

- A probe waiting for its time is a ``submitting`` job whose POST has not started and whose
  ``next_check_at`` is in the future (a *deferred* submit). It holds no believed slot: when a
  poll frees a slot, the function sends the waiting probe at once rather than admitting
  another job beside it.
- At most one job is ever waiting or sending beyond the limit, and never more than
  ``probe_cap`` jobs hold slots in our books (jobs the upstream ended but we have not polled
  yet count in our books until we do).
- For a probe, the function returns the ages of the running jobs, from which the worker picks
  its time.

``imagegen_admit`` stays for workers of the previous release during a rolling upgrade; both
take the same admission lock.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADMIT_PROBING = """
CREATE OR REPLACE FUNCTION imagegen_admit_probing(slot_limit integer, probe_cap integer, actor text)
RETURNS TABLE (job_id varchar, probe boolean, ages double precision[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    -- the clock after the lock: now() is when this call's transaction began, which may be
    -- before the previous holder of the lock committed the jobs it admitted at its now()
    at timestamptz;
    holding integer;
    deferred integer;
    unsent integer;
    free integer;
    released integer := 0;
BEGIN
    -- (why synchronous_commit is off and the lock is transaction-scoped: see 0004)
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(443444737);
    at := clock_timestamp();
    SELECT count(*),
           count(*) FILTER (WHERE j.status = 'submitting' AND j.submit_started_at IS NULL
                            AND j.next_check_at > at),
           count(*) FILTER (WHERE j.status = 'submitting')
      INTO holding, deferred, unsent
      FROM jobs j WHERE j.status IN ('submitting', 'pending', 'processing');
    free := slot_limit - (holding - deferred);
    IF free > 0 AND deferred > 0 THEN
        -- a slot is known to be free: a waiting probe goes now
        RETURN QUERY
        WITH picked AS (
            SELECT d.id, d.priority, d.created_at FROM jobs d
            WHERE d.status = 'submitting' AND d.submit_started_at IS NULL
              AND d.next_check_at > at
            ORDER BY d.priority DESC, d.created_at, d.id
            LIMIT free
            FOR UPDATE
        ), moved AS (
            UPDATE jobs m SET next_check_at = now(), updated_at = now()
            FROM picked p WHERE m.id = p.id
            RETURNING m.id, p.priority, p.created_at
        )
        SELECT moved.id, false, NULL::double precision[] FROM moved
        ORDER BY moved.priority DESC, moved.created_at, moved.id;
        GET DIAGNOSTICS released = ROW_COUNT;
        free := free - released;
    END IF;
    IF free > 0 THEN
        RETURN QUERY
        WITH picked AS (
            SELECT q.id, q.priority, q.created_at FROM jobs q
            WHERE q.status = 'queued' AND q.deadline_at > now()
            ORDER BY q.priority DESC, q.created_at, q.id
            LIMIT free
            FOR UPDATE SKIP LOCKED
        ), moved AS (
            UPDATE jobs m
            SET status = 'submitting', updated_at = now(), submit_started_at = NULL,
                next_check_at = now()
            FROM picked p
            WHERE m.id = p.id AND m.status = 'queued'
            RETURNING m.id, p.priority, p.created_at
        ), logged AS (
            INSERT INTO job_events (job_id, from_status, to_status, worker)
            SELECT moved.id, 'queued', 'submitting', actor FROM moved
        )
        SELECT moved.id, false, NULL::double precision[] FROM moved
        ORDER BY moved.priority DESC, moved.created_at, moved.id;
        RETURN;
    END IF;
    IF released > 0 OR unsent > 0 OR holding >= probe_cap THEN
        RETURN;
    END IF;
    -- every slot is taken and every admitted job is at the upstream: one probe
    RETURN QUERY
    WITH picked AS (
        SELECT q.id FROM jobs q
        WHERE q.status = 'queued' AND q.deadline_at > now()
        ORDER BY q.priority DESC, q.created_at, q.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ), moved AS (
        UPDATE jobs m
        SET status = 'submitting', updated_at = now(), submit_started_at = NULL,
            next_check_at = now()
        FROM picked p
        WHERE m.id = p.id AND m.status = 'queued'
        RETURNING m.id
    ), logged AS (
        INSERT INTO job_events (job_id, from_status, to_status, worker, detail)
        SELECT moved.id, 'queued', 'submitting', actor, 'slot probe' FROM moved
    )
    SELECT moved.id, true,
           ARRAY(SELECT extract(epoch FROM now() - r.submitted_at)::double precision
                 FROM jobs r
                 WHERE r.status IN ('pending', 'processing') AND r.submitted_at IS NOT NULL)
    FROM moved;
END
$$
"""


def upgrade() -> None:
    """Apply this revision."""
    op.execute(ADMIT_PROBING)


def downgrade() -> None:
    """Revert this revision."""
    op.execute("DROP FUNCTION imagegen_admit_probing(integer, integer, text)")
