"""Billing settings are checked before the service starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from mesh.runtime.authz import RolePolicyAuthorizer
from mesh.runtime.server import BuildContext
from mesh.runtime.settings import SettingsError
from mesh.runtime.storage import Database
from svc_billing.app import build
from tests.billing.conftest import billing_settings


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HIN_BILLING_VAT_RATE", "fourteen", "HIN_BILLING_VAT_RATE"),
        ("HIN_BILLING_VAT_RATE", "14.125", "HIN_BILLING_VAT_RATE"),
        ("HIN_BILLING_PRICE_LIST", "/no/such/prices.json", "HIN_BILLING_PRICE_LIST"),
    ],
)
def test_bad_setting_stops_start(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    settings = billing_settings(
        tmp_path, "127.0.0.1:1", f"sqlite:///{tmp_path / 'b.db'}", **{variable: value}
    )
    context = BuildContext(
        settings=settings,
        db=Database(settings.database_url),
        outbox=None,
        authorizer=RolePolicyAuthorizer(),
        tracer_provider=TracerProvider(),
    )
    with pytest.raises(SettingsError, match=message):
        build(context)
