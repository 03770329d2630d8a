"""The built-in call policy: which service may call which authz methods."""

from __future__ import annotations

import pytest

from mesh.network.topology import default_topology

SERVICES = ("records", "appointments", "labs", "billing", "notify")


def _allowed(caller: str, path: str) -> bool:
    return any(
        rule.caller == caller
        and rule.target == "authz"
        and path.startswith(rule.method_prefixes)
        for rule in default_topology().calls
    )


@pytest.mark.parametrize("caller", SERVICES)
def test_services_may_check_access(caller: str) -> None:
    assert _allowed(caller, "/hin.authz.v1.AuthzService/Check")
    assert _allowed(caller, "/hin.authz.v1.AuthzService/CheckBatch")


@pytest.mark.parametrize("caller", SERVICES)
def test_services_may_record_audit(caller: str) -> None:
    # Calls that end without a decision are audited through RecordAudit.
    assert _allowed(caller, "/hin.authz.v1.AuthzService/RecordAudit")


@pytest.mark.parametrize("caller", SERVICES)
def test_services_may_not_grant_consent(caller: str) -> None:
    assert not _allowed(caller, "/hin.authz.v1.AuthzService/GrantConsent")
    assert not _allowed(caller, "/hin.authz.v1.AuthzService/BreakGlass")
