"""The Alembic migration creates exactly the tables the models declare."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from mesh.runtime.storage import Database
from svc_appointments.store import metadata


def test_migration_matches_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.migrate("svc_appointments:migrations")
        with db.engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True}
            )
            differences = compare_metadata(context, metadata)
            tables = set(inspect(connection).get_table_names())
    finally:
        db.dispose()

    assert differences == []
    assert tables - {"alembic_version"} == set(metadata.tables)
