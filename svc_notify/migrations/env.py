"""Alembic environment of the notify database."""

from mesh.runtime.storage.alembic_env import run_migrations
from svc_notify.tables import NotifyBase

run_migrations(NotifyBase.metadata)
