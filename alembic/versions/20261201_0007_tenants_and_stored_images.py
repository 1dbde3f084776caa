"""tenants, structured request errors, stored images' checksums

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:00:00

- ``jobs.tenant``: who created the job (an HTTP API token's tenant, or the broker's tenant
  for Celery producers); idempotency keys are unique per tenant, and the API lists jobs per
  tenant, newest first (``ix_jobs_tenant_created``, the keyset pagination's index).
- ``jobs.errors``: an ``invalid_request``'s problems as ``[{path, code, message}]``.
- ``job_images``: the stored copy's key, SHA-256, size and content type.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("tenant", sa.String(64), server_default="default", nullable=False)
    )
    op.add_column("jobs", sa.Column("errors", JSONB(), nullable=True))
    op.drop_constraint("jobs_idempotency_key_key", "jobs", type_="unique")
    op.create_unique_constraint(
        "uq_jobs_tenant_idempotency_key", "jobs", ["tenant", "idempotency_key"]
    )
    op.create_index(
        "ix_jobs_tenant_created",
        "jobs",
        ["tenant", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
    )
    op.add_column("job_images", sa.Column("storage_key", sa.Text(), nullable=True))
    op.add_column("job_images", sa.Column("sha256", sa.String(64), nullable=True))
    op.add_column("job_images", sa.Column("size_bytes", sa.BigInteger(), nullable=True))
    op.add_column("job_images", sa.Column("content_type", sa.String(64), nullable=True))
    # Copies made before this revision: their key is the tail of their path (the layout
    # has not changed), so the API serves them too.
    op.execute(
        "UPDATE job_images SET storage_key = substring(stored_path from "
        "'([0-9a-f]{2}/[0-9a-f]{62}/[0-9]+\\.[a-z]+)$') WHERE stored_path IS NOT NULL"
    )


def downgrade() -> None:
    for column in ("content_type", "size_bytes", "sha256", "storage_key"):
        op.drop_column("job_images", column)
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    op.drop_constraint("uq_jobs_tenant_idempotency_key", "jobs", type_="unique")
    op.create_unique_constraint("jobs_idempotency_key_key", "jobs", ["idempotency_key"])
    op.drop_column("jobs", "errors")
    op.drop_column("jobs", "tenant")
