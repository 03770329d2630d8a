"""Alembic environment of svc_labs."""

from mesh.runtime.storage.alembic_env import run_migrations
from svc_labs.store import LabsBase

run_migrations(LabsBase.metadata)
