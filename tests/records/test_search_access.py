"""SearchPatients and ListPatients return only patients the caller may read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb
from hin.records.v1 import records_service_pb2_grpc as pb_grpc
from mesh.runtime.authz import Decision
from mesh.runtime.principal import Principal
from mesh.runtime.server import ServiceHost
from mesh.runtime.settings import ServiceSettings
from svc_records.app import build

from .conftest import STOP_GRACE_SECONDS, Metadata, bearer, unique_name

pytestmark = pytest.mark.asyncio(loop_scope="session")


class PatientDenyingAuthorizer:
    """Allow every action, except on the patient ids in ``denied``.

    It replaces svc_authz denying a patient of another hospital or one
    without a care relationship, which a role check alone does not cover.
    """

    def __init__(self) -> None:
        self.denied: set[str] = set()

    async def check(
        self,
        principal: Principal,
        *,
        action: str,
        patient_id: str = "",
        purpose: int = 0,
        organization_id: str = "",
    ) -> Decision:
        if patient_id in self.denied:
            return Decision(False, "no care relationship with the patient")
        return Decision(True, "allowed")


class Server:
    """Running records service with its stub, authorizer and a doctor's token."""

    def __init__(
        self,
        stub: pb_grpc.RecordsServiceStub,
        authorizer: PatientDenyingAuthorizer,
        doctor: Metadata,
    ) -> None:
        self.stub = stub
        self.authorizer = authorizer
        self.doctor = doctor


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> AsyncIterator[Server]:
    state: Path = tmp_path_factory.mktemp("records-search-access")
    name = unique_name()
    environ = {
        "HIN_STATE_DIR": str(state),
        "HIN_DATABASE_URL": f"sqlite:///{state / 'records.db'}",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "HIN_GRPC_ADDRESS": "127.0.0.1:0",
    }
    doctor = bearer(state, "dr-1", "doctor")
    authorizer = PatientDenyingAuthorizer()
    host = ServiceHost(
        settings=ServiceSettings.from_env(name, environ=environ),
        build=build,
        authorizer=authorizer,
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Server(pb_grpc.RecordsServiceStub(channel), authorizer, doctor)
    await channel.close()
    await host.stop(grace=STOP_GRACE_SECONDS)


async def register(server: Server, family: str) -> str:
    patient = pb.PatientDemographics(
        names=[types_pb2.HumanName(family=family, given=["Karim"])],
        birth_date=types_pb2.Date(year=1981, month=3, day=4),
        identifiers=[
            types_pb2.Identifier(system="urn:hin:id:mrn:org-1", value=uuid.uuid4().hex)
        ],
    )
    response = await server.stub.RegisterPatient(
        pb.RegisterPatientRequest(patient=patient, allow_possible_duplicate=True),
        metadata=server.doctor,
    )
    return response.patient.patient_id


async def test_search_drops_denied_patient(server: Server) -> None:
    family = f"Salem{uuid.uuid4().hex[:6]}"
    readable = await register(server, family)
    denied = await register(server, family)
    server.authorizer.denied.add(denied)

    response = await server.stub.SearchPatients(
        pb.SearchPatientsRequest(name=family), metadata=server.doctor
    )

    found = [patient.patient_id for patient in response.patients]
    assert readable in found
    assert denied not in found


async def test_filtered_search_hides_total(server: Server) -> None:
    family = f"Haddad{uuid.uuid4().hex[:6]}"
    await register(server, family)
    denied = await register(server, family)
    server.authorizer.denied.add(denied)

    response = await server.stub.SearchPatients(
        pb.SearchPatientsRequest(name=family), metadata=server.doctor
    )

    # Two patients match, but the caller may know of one only.
    assert len(response.patients) == 1
    assert response.page.total_size == 0


async def test_unfiltered_search_counts_total(server: Server) -> None:
    family = f"Fahmy{uuid.uuid4().hex[:6]}"
    await register(server, family)
    await register(server, family)

    response = await server.stub.SearchPatients(
        pb.SearchPatientsRequest(name=family), metadata=server.doctor
    )

    assert response.page.total_size == 2


async def test_list_drops_denied_patient(server: Server) -> None:
    readable = await register(server, "Nour")
    denied = await register(server, "Nour")
    server.authorizer.denied.add(denied)

    response = await server.stub.ListPatients(
        pb.ListPatientsRequest(page=types_pb2.PageRequest(page_size=500)),
        metadata=server.doctor,
    )

    found = [patient.patient_id for patient in response.patients]
    assert readable in found
    assert denied not in found


async def test_search_without_match_is_empty(server: Server) -> None:
    response = await server.stub.SearchPatients(
        pb.SearchPatientsRequest(name=f"Nobody{uuid.uuid4().hex[:6]}"),
        metadata=server.doctor,
    )

    assert list(response.patients) == []
