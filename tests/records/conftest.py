"""A records service on a real in-process gRPC server, shared per module."""

from __future__ import annotations

import uuid
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

#: Seconds a stopping host gives its consumer to commit and leave the group.
STOP_GRACE_SECONDS = 5.0


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
                "billing_clerk": {"records.demographics.read"},
                "receptionist": {
                    "records.demographics.read",
                    "records.demographics.write",
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
    receptionist: Metadata
    admin: Metadata
    nobody: Metadata


def bearer(state: Path, subject: str, role: str) -> Metadata:
    """Return call metadata with a development token for one role."""
    token = mint_token(state, subject=subject, roles=[role], organization_id="org-1")
    return (("authorization", f"Bearer {token}"),)


def unique_name() -> str:
    """Return a service name of its own for one test host.

    The consumer group is ``hin.<name>``, so hosts with their own names never
    share partitions with a host of another test that is still stopping.
    """
    return f"records_{uuid.uuid4().hex[:8]}"


async def start_records(
    state: Path, bootstrap: str, database_url: str = "", name: str = ""
) -> tuple[ServiceHost, grpc.aio.Channel]:
    """Start a records service host on a free loopback port."""
    name = name or unique_name()
    mint_token(state, subject="setup", roles=["doctor"], organization_id="org-1")
    environ = {
        "HIN_STATE_DIR": str(state),
        "HIN_DATABASE_URL": f"sqlite:///{state / 'records.db'}",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HIN_GRPC_ADDRESS": "127.0.0.1:0",
        f"HIN_{name.upper()}_RELAY_POLL_SECONDS": "0.2",
        # A consumer group of its own: the embedded broker may never assign
        # partitions to a new member of a group whose earlier members left
        # before their first assignment (another module's short-lived host).
        "HIN_KAFKA_CONFIG": f"group.id=hin.{name}.test-{uuid.uuid4().hex[:12]}",
        # A new group reads the topics from the start, including other
        # modules' results for patients this service never saw, which fail
        # and are retried; fast retries keep that backlog short.
        f"HIN_{name.upper()}_EVENT_MAX_ATTEMPTS": "2",
        f"HIN_{name.upper()}_EVENT_BACKOFF_SECONDS": "0.01",
        f"HIN_{name.upper()}_EVENT_BACKOFF_MAX_SECONDS": "0.05",
    }
    if database_url:
        environ["HIN_DATABASE_URL"] = database_url
    host = ServiceHost(
        settings=ServiceSettings.from_env(name, environ=environ),
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
    yield records_client(host, channel, state)
    await channel.close()
    await host.stop(grace=STOP_GRACE_SECONDS)


def records_client(
    host: ServiceHost, channel: grpc.aio.Channel, state: Path
) -> RecordsServer:
    """Wrap a started host with a stub and people's call metadata."""
    return RecordsServer(
        host=host,
        stub=pb_grpc.RecordsServiceStub(channel),
        state=state,
        doctor=bearer(state, "dr-1", "doctor"),
        clerk=bearer(state, "clerk-1", "billing_clerk"),
        receptionist=bearer(state, "reception-1", "receptionist"),
        admin=bearer(state, "admin-1", "administrator"),
        nobody=bearer(state, "nurse-1", "nurse"),
    )
