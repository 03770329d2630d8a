"""Alembic environment of svc_appointments."""

from mesh.runtime.storage.alembic_env import run_migrations
from svc_appointments.store import metadata

run_migrations(metadata)
