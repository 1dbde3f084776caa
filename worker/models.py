"""SQLAlchemy 2 models: jobs, their events, images and idempotency aliases."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .states import LIVE, sql_list


class Base(DeclarativeBase):
    """Declarative base with timezone-aware timestamps."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
    }


class Job(Base):
    """One generation request and everything known about it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(SmallInteger, default=5, server_default="5")
    request: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Who created the job: an API token's tenant, or the broker's (IMAGEGEN_BROKER_TENANT).
    tenant: Mapped[str] = mapped_column(String(64), server_default="default")
    # Unique per tenant (uq_jobs_tenant_idempotency_key).
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the request (api_schema.request_fingerprint): the same id or key with
    # another request is refused, never answered with this job.
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Where the job's end goes ([{"channel": ..., "target": {...}}]), fixed at acceptance.
    deliver_to: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)

    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deadline_at: Mapped[datetime]
    # When the job's next step is due; the sweeper acts on jobs far past it.
    next_check_at: Mapped[datetime | None]
    submit_started_at: Mapped[datetime | None]
    submitted_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    upstream_task_id: Mapped[str | None] = mapped_column(String(128))
    submit_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    poll_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    billing_amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    result_expires_at: Mapped[datetime | None]
    upstream_request_id: Mapped[str | None] = mapped_column(String(128))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    # An invalid_request's problems: [{"path", "code", "message"}] (api_schema.FieldError).
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # the job an operator retried as this one (``imagegen jobs retry``)
    retry_of: Mapped[str | None] = mapped_column(String(64))

    images: Mapped[list[JobImage]] = relationship(
        order_by="JobImage.index", cascade="all, delete-orphan", lazy="raise"
    )

    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        # The API's listing: a tenant's jobs, newest first (keyset pagination).
        Index("ix_jobs_tenant_created", "tenant", created_at.desc(), id.desc()),
        # Admission: the oldest of the most urgent queued jobs first.
        Index(
            "ix_jobs_queued",
            priority.desc(),
            "created_at",
            postgresql_where=text("status = 'queued'"),
        ),
        # Slot counting and the sweeper only look at live jobs.
        Index(
            "ix_jobs_live",
            "status",
            "next_check_at",
            postgresql_where=text(f"status IN ({sql_list(LIVE)})"),
        ),
        # A job's retries (``imagegen jobs retry``).
        Index("ix_jobs_retry_of", "retry_of", postgresql_where=text("retry_of IS NOT NULL")),
        # Cancelled jobs whose upstream task is still followed for its bill.
        Index(
            "ix_jobs_following",
            "next_check_at",
            postgresql_where=text("status = 'cancelled' AND next_check_at IS NOT NULL"),
        ),
    )


class JobEvent(Base):
    """One transition of one job: the history behind its status."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now())
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    # The Celery node that made the change (None for the CLI or a test).
    worker: Mapped[str | None] = mapped_column(String(255))


class JobImage(Base):
    """One image the upstream produced for a job."""

    __tablename__ = "job_images"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    # The copy in the result store (worker.storage): its key, checksum, size and type.
    storage_key: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(String(64))
    # The copy's absolute path, local storage only (kept for readers of earlier versions).
    stored_path: Mapped[str | None] = mapped_column(Text)


class JobAlias(Base):
    """A job id that a reused idempotency key folded into an earlier job."""

    __tablename__ = "job_aliases"

    alias_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    request_hash: Mapped[str | None] = mapped_column(String(64))


class JobDelivery(Base):
    """One channel of an ended job's outbox: written with the end, sent until delivered."""

    __tablename__ = "job_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    target: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        # The sweeper's scan: pending deliveries whose attempt is due.
        Index(
            "ix_job_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
        ),
    )


class DroppedMessage(Base):
    """A queue entry the workers refused with no job to record it on, and why."""

    __tablename__ = "dropped_messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
    queue: Mapped[str] = mapped_column(String(200))
    task: Mapped[str | None] = mapped_column(String(200))
    message_id: Mapped[str | None] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))


class Secret(Base):
    """Keys only the workers hold (they read the database; producers only reach Redis)."""

    __tablename__ = "imagegen_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
