"""Shared body of every service's Alembic env.py."""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData
from sqlmodel import create_engine


def run_migrations(metadata: MetaData) -> None:
    """Run the pending migrations against the engine the caller configured.

    ``Database.migrate`` passes its own engine in ``config.attributes``; the
    alembic command line falls back to ``sqlalchemy.url``.
    """
    config = context.config
    engine = config.attributes.get("engine")
    if engine is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
