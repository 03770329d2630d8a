"""Alembic environment of the billing database."""

from mesh.runtime.storage.alembic_env import run_migrations
from svc_billing.store import BillingBase

run_migrations(BillingBase.metadata)
