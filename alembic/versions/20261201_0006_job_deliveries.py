"""job deliveries: the outbox of what must reach the producer when a job ends

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:00:00

- ``jobs.deliver_to``: where a job's end goes (Celery reply tasks, webhooks), fixed when the
  request is accepted; the end's own statement turns it into delivery rows.
- ``job_deliveries``: one row per channel of an ended job, written in the same statement
  as the end, sent by the ``imagegen.deliver`` task, re-published by the sweeper when its
  message went missing; ``pending`` until ``delivered`` or ``dead``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("deliver_to", JSONB(), nullable=True))
    op.create_table(
        "job_deliveries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "job_id",
            sa.String(64),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("target", JSONB(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_job_deliveries_due",
        "job_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_deliveries_due", table_name="job_deliveries")
    op.drop_table("job_deliveries")
    op.drop_column("jobs", "deliver_to")
