"""Create the database if it is missing, then migrate it with Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# The repository's alembic/ folder; an installed wheel carries a copy inside the package.
_HERE = Path(__file__).resolve().parent
MIGRATIONS = next(
    (p for p in (_HERE.parent / "alembic", _HERE / "_migrations") if (p / "env.py").exists()),
    _HERE.parent / "alembic",
)


def ensure_database(database_url: str) -> bool:
    """Create the URL's database when it does not exist; True if it was created."""
    url = make_url(database_url)
    name = url.database
    if not name:
        raise ValueError("the database URL names no database")
    admin = create_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", hide_parameters=True
    )
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()


def alembic_config(database_url: str) -> Config:
    """An Alembic config for this project's migrations, independent of the working directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> bool:
    """Create the database if needed and migrate it to ``revision``."""
    created = ensure_database(database_url)
    command.upgrade(alembic_config(database_url), revision)
    return created
