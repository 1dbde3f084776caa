"""a job retried from another one; cancelled jobs followed for their bill

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:00:00

- ``jobs.retry_of``: the job an operator's ``imagegen jobs retry`` made this one from (its
  stored request, run again as a new job); indexed to list a job's retries.
- ``ix_jobs_following``: cancelled jobs whose upstream task is still followed (quietly,
  holding no slot) until it ends, so its bill is recorded; the sweeper's index for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("retry_of", sa.String(64), nullable=True))
    op.create_index(
        "ix_jobs_retry_of", "jobs", ["retry_of"], postgresql_where=sa.text("retry_of IS NOT NULL")
    )


    op.create_index(
        "ix_jobs_following",
        "jobs",
        ["next_check_at"],
        postgresql_where=sa.text("status = 'cancelled' AND next_check_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_following", table_name="jobs")
    op.drop_index("ix_jobs_retry_of", table_name="jobs")
    op.drop_column("jobs", "retry_of")
