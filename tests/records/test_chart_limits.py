"""Size checks on chart entries, which RecordEncounter publishes as events."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb

from .conftest import RecordsServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
    return [violation.field for violation in bad_request.field_violations]


async def new_patient(server: RecordsServer) -> str:
    patient = pb.PatientDemographics(
        names=[types_pb2.HumanName(family="Salem", given=["Karim"])],
        identifiers=[
            types_pb2.Identifier(system="urn:hin:id:mrn:org-1", value=uuid.uuid4().hex)
        ],
    )
    response = await server.stub.RegisterPatient(
        pb.RegisterPatientRequest(patient=patient), metadata=server.receptionist
    )
    return response.patient.patient_id


def encounter(patient_id: str, type_text: str) -> pb.RecordEncounterRequest:
    return pb.RecordEncounterRequest(
        encounter=pb.Encounter(
            patient_id=patient_id,
            status="finished",
            encounter_class="AMB",
            period=types_pb2.Period(start=Timestamp(seconds=int(time.time()) - 3600)),
            type=types_pb2.CodeableConcept(text=type_text),
        )
    )


async def test_huge_encounter_text_is_invalid(records_server: RecordsServer) -> None:
    patient_id = await new_patient(records_server)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.RecordEncounter(
            encounter(patient_id, "E" * (1 << 20)), metadata=records_server.doctor
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["encounter.type.text"]


async def test_long_encounter_text_is_recorded(records_server: RecordsServer) -> None:
    patient_id = await new_patient(records_server)

    response = await records_server.stub.RecordEncounter(
        encounter(patient_id, "Follow-up visit. " * 100), metadata=records_server.doctor
    )

    assert response.encounter.patient_id == patient_id


async def test_huge_medication_dosage_is_invalid(
    records_server: RecordsServer,
) -> None:
    patient_id = await new_patient(records_server)
    request = pb.RecordMedicationRequest(
        medication=pb.Medication(
            patient_id=patient_id,
            code=types_pb2.CodeableConcept(text="metformin"),
            dosage_text="d" * 100_000,
        )
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.RecordMedication(
            request, metadata=records_server.doctor
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["medication.dosage_text"]


async def test_multiline_dosage_is_recorded(records_server: RecordsServer) -> None:
    patient_id = await new_patient(records_server)
    request = pb.RecordMedicationRequest(
        medication=pb.Medication(
            patient_id=patient_id,
            code=types_pb2.CodeableConcept(text="metformin"),
            dosage_text="500 mg twice a day\nwith meals",
        )
    )

    response = await records_server.stub.RecordMedication(
        request, metadata=records_server.doctor
    )

    assert response.medication.dosage_text == "500 mg twice a day\nwith meals"
