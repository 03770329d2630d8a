"""Add holiday ids and displaced appointments to schedule exceptions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Server defaults fill the rows that exist already.
    with op.batch_alter_table("schedule_exceptions") as batch:
        batch.add_column(
            sa.Column(
                "holiday_id",
                sa.String(length=64),
                nullable=False,
                server_default="",
            )
        )
        batch.add_column(
            sa.Column(
                "rescheduled_ids",
                sa.JSON(),
                nullable=False,
                server_default=sa.text("'[]'"),
            )
        )
        batch.add_column(
            sa.Column(
                "cancelled_ids",
                sa.JSON(),
                nullable=False,
                server_default=sa.text("'[]'"),
            )
        )
    op.create_index(
        op.f("ix_schedule_exceptions_holiday_id"),
        "schedule_exceptions",
        ["holiday_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_schedule_exceptions_holiday_id"), table_name="schedule_exceptions"
    )
    with op.batch_alter_table("schedule_exceptions") as batch:
        batch.drop_column("cancelled_ids")
        batch.drop_column("rescheduled_ids")
        batch.drop_column("holiday_id")
