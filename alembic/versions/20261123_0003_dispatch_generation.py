"""dispatch generation sequence

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 23:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.execute("CREATE SEQUENCE imagegen_dispatch_generation")


def downgrade() -> None:
    """Revert this revision."""
    op.execute("DROP SEQUENCE imagegen_dispatch_generation")
