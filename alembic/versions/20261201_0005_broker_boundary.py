"""broker boundary: dropped messages, the message signing key, request fingerprints

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:30:00

- ``dropped_messages``: every queue entry the workers refused without a job to record it
  on (no usable id, an internal message without a valid signature, a task that is not
  accepted on its queue), with the reason. Nothing a producer sends is dropped silently.
- ``imagegen_secrets``: the key the workers sign their internal messages with (HMAC), made
  here from PostgreSQL's own random source (``gen_random_uuid``, PostgreSQL 13+), so every
  worker that can read the database shares it and no producer, which has only broker
  access, can forge a submit or a poll. ``IMAGEGEN_MESSAGE_KEY`` overrides it.
- ``jobs.request_hash`` and ``job_aliases.request_hash``: the fingerprint of the request a
  job id or idempotency key stands for, so the same key or id with another request is
  refused instead of answered with the first job.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dropped_messages",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("task", sa.String(200), nullable=True),
        sa.Column("message_id", sa.String(200), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
    )
    op.create_index("ix_dropped_messages_at", "dropped_messages", ["at"])
    op.create_table(
        "imagegen_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.execute(
        "INSERT INTO imagegen_secrets (name, value) VALUES ('message_key', "
        "replace(gen_random_uuid()::text || gen_random_uuid()::text "
        "|| gen_random_uuid()::text, '-', ''))"
    )
    op.add_column("jobs", sa.Column("request_hash", sa.String(64), nullable=True))
    op.add_column("job_aliases", sa.Column("request_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("job_aliases", "request_hash")
    op.drop_column("jobs", "request_hash")
    op.drop_table("imagegen_secrets")
    op.drop_index("ix_dropped_messages_at", table_name="dropped_messages")
    op.drop_table("dropped_messages")
