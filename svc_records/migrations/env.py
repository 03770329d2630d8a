"""Alembic environment of the records database."""

from mesh.runtime.storage.alembic_env import run_migrations
from svc_records.store import RecordsBase

run_migrations(RecordsBase.metadata)
