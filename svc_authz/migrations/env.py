"""Alembic environment of the authz database."""

from mesh.runtime.storage.alembic_env import run_migrations
from svc_authz.store import AuthzBase

run_migrations(AuthzBase.metadata)
