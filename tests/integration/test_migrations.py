"""Alembic migrations: up, down and up again, and the models match the migrated schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from tests.harness import PG_ADMIN_URL, drop_database
from worker.dbadmin import alembic_config, ensure_database
from worker.models import Base


@pytest.fixture
def empty_db() -> Iterator[str]:
    url = make_url(PG_ADMIN_URL).set(database=f"imagegen_mig_{uuid.uuid4().hex[:8]}")
    rendered = url.render_as_string(hide_password=False)
    assert ensure_database(rendered) is True
    assert ensure_database(rendered) is False  # idempotent
    yield rendered
    drop_database(rendered)


def test_upgrade_downgrade_upgrade_and_no_drift(empty_db: str) -> None:
    config = alembic_config(empty_db)
    command.upgrade(config, "head")
    engine = create_engine(empty_db)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"jobs", "job_events", "job_images", "job_aliases", "alembic_version"} <= tables
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        command.upgrade(config, "head")
        assert "jobs" in set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
