"""Billing fixtures: one in-process billing service per module, and tokens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from hin.billing.v1 import billing_service_pb2_grpc as pb_grpc
from mesh.network.devkeys import mint_token
from mesh.runtime.authz import Decision, RolePolicyAuthorizer
from mesh.runtime.principal import Principal, PrincipalKind
from mesh.runtime.server import ServiceHost
from mesh.runtime.settings import ServiceSettings
from svc_billing import domain
from svc_billing.app import make_build
from svc_billing.payer import PlanRulesPayer

PERMISSIONS = {
    "billing-clerk": {"billing.billing.read", "billing.billing.write"},
    "billing-admin": {"billing.billing.read", "billing.billing.write",
                      "billing.admin.write"},
    "doctor": {"records.clinical.read"},
    "billing-clinical": {"billing.billing.read", "records.clinical.read"},
}


class RedactingAuthorizer(RolePolicyAuthorizer):
    """Role permissions, with clinical redaction as svc_authz decides it.

    A person whose roles lack ``records.clinical.read`` reads with
    ``redact_clinical`` set.
    """

    def __init__(self, permissions: dict[str, set[str]]) -> None:
        super().__init__(permissions)
        self._by_role = permissions

    async def check(
        self, principal: Principal, *, action: str, **facts: Any
    ) -> Decision:
        decision = await super().check(principal, action=action, **facts)
        clinical = any(
            "records.clinical.read" in self._by_role.get(role, set())
            for role in principal.roles
        )
        if (
            decision.allowed
            and action.endswith(".read")
            and principal.kind is PrincipalKind.PERSON
            and not clinical
        ):
            return Decision(True, decision.reason, redact_clinical=True)
        return decision


class ScriptedPayer:
    """Plan-rules payer whose next adjudications a test can queue."""

    def __init__(self) -> None:
        self.plan = PlanRulesPayer()
        self.queued: list[domain.AdjudicationResult | None] = []
        self.submissions: list[domain.ClaimSubmission] = []

    async def submit(
        self, submission: domain.ClaimSubmission, policy: domain.PolicyTerms
    ) -> domain.AdjudicationResult | None:
        self.submissions.append(submission)
        if self.queued:
            return self.queued.pop(0)
        return await self.plan.submit(submission, policy)


@dataclass
class Billing:
    """A running billing service and what tests need to call it."""

    host: ServiceHost
    stub: pb_grpc.BillingServiceStub
    state: Path
    payer: ScriptedPayer
    clerk: tuple[tuple[str, str], ...]
    admin: tuple[tuple[str, str], ...]
    doctor: tuple[tuple[str, str], ...]
    #: Billing reader who may also read clinical data (no redaction).
    clinical: tuple[tuple[str, str], ...]


def bearer(state: Path, subject: str, roles: list[str]) -> tuple[tuple[str, str], ...]:
    token = mint_token(state, subject=subject, roles=roles, organization_id="org-1")
    return (("authorization", f"Bearer {token}"),)


def billing_settings(
    state: Path, bootstrap: str, database_url: str, **extra: str
) -> ServiceSettings:
    environ = {
        "HIN_STATE_DIR": str(state),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HIN_GRPC_ADDRESS": "127.0.0.1:0",
        "HIN_DATABASE_URL": database_url,
        "HIN_JWKS_PATH": str(state / "keys" / "jwks.json"),
        "HIN_BILLING_EVENT_MAX_ATTEMPTS": "2",
        "HIN_BILLING_EVENT_BACKOFF_SECONDS": "0.05",
        # A consumer group per instance: a test module's billing never waits
        # for the previous module's consumer to leave a shared group.
        "HIN_KAFKA_CONFIG": f"group.id=hin.billing.test-{uuid.uuid4().hex[:8]}",
        **extra,
    }
    return ServiceSettings.from_env("billing", environ=environ)


@pytest.fixture(scope="module")
def billing_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("billing-state")
    # The JWKS must exist before the host reads it.
    mint_token(state, subject="setup", roles=[], organization_id="org-1")
    yield state


@asynccontextmanager
async def running_billing(
    state: Path, bootstrap: str, database_url: str
) -> AsyncIterator[Billing]:
    """Start billing with VAT 0, the shipped price list and a scripted payer."""
    payer = ScriptedPayer()
    settings = billing_settings(state, bootstrap, database_url)
    host = ServiceHost(
        settings=settings,
        build=make_build(payer=payer),
        authorizer=RedactingAuthorizer(PERMISSIONS),
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Billing(
            host=host,
            stub=pb_grpc.BillingServiceStub(channel),
            state=state,
            payer=payer,
            clerk=bearer(state, "clerk-1", ["billing-clerk"]),
            admin=bearer(state, "admin-1", ["billing-admin"]),
            doctor=bearer(state, "doctor-1", ["doctor"]),
            clinical=bearer(state, "auditor-1", ["billing-clinical"]),
        )
    finally:
        await channel.close()
        await host.stop(grace=5)


@pytest.fixture(scope="module")
async def billing(
    billing_state: Path, kafka_bootstrap: str
) -> AsyncIterator[Billing]:
    """Billing on SQLite, started once per test module."""
    url = f"sqlite:///{billing_state / 'billing.db'}"
    async with running_billing(billing_state, kafka_bootstrap, url) as service:
        yield service
