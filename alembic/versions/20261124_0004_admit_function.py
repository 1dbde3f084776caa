"""admission as one server-side function

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 01:30:00

``imagegen_admit`` takes the admission lock, counts the jobs holding upstream slots and
moves the most urgent, oldest queued jobs into the free ones, all inside PostgreSQL. Called
outside an explicit transaction it commits when it returns, so the lock is held for the
time the function runs (well under a millisecond), never across a round trip to a worker.
That is what lets every worker wait for the lock instead of skipping admission when it is
busy, which made the announce-and-retry protocol of the generation sequence unnecessary.

The sequence itself stays: workers of the previous release read it while they run, and a
rolling upgrade has both kinds of worker at once (their admission locks are the same key,
so they still exclude each other). A later migration can drop it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each statement of a volatile PL/pgSQL function takes a fresh snapshot (READ COMMITTED),
# so the count after the lock sees every claim committed by the previous holder.
ADMIT = """
CREATE OR REPLACE FUNCTION imagegen_admit(slot_limit integer, actor text)
RETURNS TABLE (job_id varchar) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    free integer;
BEGIN
    -- The lock is released when the transaction ends; with a synchronous commit that is
    -- after the WAL flush, and every admission would queue behind a disk sync. Losing an
    -- admission in a crash is harmless: the job is simply queued again. And before any
    -- POST, the worker's synchronous commit of "POST started" flushes this commit too.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(443444737);
    SELECT slot_limit - count(*) INTO free FROM jobs j
        WHERE j.status IN ('submitting', 'pending', 'processing');
    IF free <= 0 THEN
        RETURN;
    END IF;
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
    SELECT moved.id FROM moved ORDER BY moved.priority DESC, moved.created_at, moved.id;
END
$$
"""


def upgrade() -> None:
    """Apply this revision."""
    op.execute(ADMIT)


def downgrade() -> None:
    """Revert this revision."""
    op.execute("DROP FUNCTION imagegen_admit(integer, text)")
