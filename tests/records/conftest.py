"""A records service on a real in-process gRPC server, shared per module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from hin.records.v1 import records_service_pb2_grpc as pb_grpc
from mesh.network.devkeys import mint_token
from mesh.runtime.authz import Decision, RolePolicyAuthorizer
from mesh.runtime.principal import Principal
from mesh.runtime.server import ServiceHost
from mesh.runtime.settings import ServiceSettings
from svc_records.app import build

Metadata = tuple[tuple[str, str], ...]


class RedactingAuthorizer:
    """Role permissions, plus demographics-only access for billing clerks.

    svc_authz decides redaction in a network, and this class replaces it in
    tests.
    """

    def __init__(self) -> None:
        self._roles = RolePolicyAuthorizer(
            {
                "administrator": {"*"},
                "doctor": {
                    "records.demographics.read",
                    "records.demographics.write",
                    "records.clinical.read",
                    "records.clinical.write",
                },
                "billing_clerk": {
                    "records.demographics.read",
                    "records.clinical.read",
                },
            }
        )

    async def check(
        self,
        principal: Principal,
        *,
        action: str,
        patient_id: str = "",
        purpose: int = 0,
        organization_id: str = "",
    ) -> Decision:
        decision = await self._roles.check(
            principal,
            action=action,
            patient_id=patient_id,
            purpose=purpose,
            organization_id=organization_id,
        )
        if decision.allowed and principal.has_role("billing_clerk"):
            return Decision(True, decision.reason, redact_clinical=True)
        return decision


@dataclass
class RecordsServer:
    """Running records service, a stub on it, and people's call metadata."""

    host: ServiceHost
    stub: pb_grpc.RecordsServiceStub
    state: Path
    doctor: Metadata
    clerk: Metadata
    admin: Metadata
    nobody: Metadata


def bearer(state: Path, subject: str, role: str) -> Metadata:
    """Return call metadata with a development token for one role."""
    token = mint_token(state, subject=subject, roles=[role], organization_id="org-1")
    return (("authorization", f"Bearer {token}"),)


async def start_records(
    state: Path, bootstrap: str, database_url: str = ""
) -> tuple[ServiceHost, grpc.aio.Channel]:
    """Start a records service host on a free loopback port."""
    mint_token(state, subject="setup", roles=["doctor"], organization_id="org-1")
    environ = {
        "HIN_STATE_DIR": str(state),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HIN_GRPC_ADDRESS": "127.0.0.1:0",
        "HIN_RECORDS_RELAY_POLL_SECONDS": "0.2",
    }
    if database_url:
        environ["HIN_DATABASE_URL"] = database_url
    host = ServiceHost(
        settings=ServiceSettings.from_env("records", environ=environ),
        build=build,
        authorizer=RedactingAuthorizer(),
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    return host, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
async def records_server(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> AsyncIterator[RecordsServer]:
    """Records service on SQLite with a fresh state folder for the module."""
    state = tmp_path_factory.mktemp("records-state")
    host, channel = await start_records(state, kafka_bootstrap)
    yield RecordsServer(
        host=host,
        stub=pb_grpc.RecordsServiceStub(channel),
        state=state,
        doctor=bearer(state, "dr-1", "doctor"),
        clerk=bearer(state, "clerk-1", "billing_clerk"),
        admin=bearer(state, "admin-1", "administrator"),
        nobody=bearer(state, "nurse-1", "nurse"),
    )
    await channel.close()
    await host.stop(grace=1)
