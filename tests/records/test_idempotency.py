"""Idempotency keys return a stored response only to the same caller and request."""

from __future__ import annotations

import uuid

import pytest

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb

from .conftest import Metadata, RecordsServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


def demographics(family: str) -> pb.PatientDemographics:
    return pb.PatientDemographics(
        names=[types_pb2.HumanName(family=family, given=["Mona"])],
        birth_date=types_pb2.Date(year=1975, month=7, day=7),
        identifiers=[
            types_pb2.Identifier(system="urn:hin:id:mrn:org-1", value=uuid.uuid4().hex)
        ],
    )


async def register(
    server: RecordsServer, metadata: Metadata, key: str, family: str
) -> pb.Patient:
    response = await server.stub.RegisterPatient(
        pb.RegisterPatientRequest(
            idempotency_key=key,
            patient=demographics(family),
            allow_possible_duplicate=True,
        ),
        metadata=metadata,
    )
    assert response.registered
    return response.patient


async def test_retry_returns_first_patient(records_server: RecordsServer) -> None:
    key = uuid.uuid4().hex
    request = pb.RegisterPatientRequest(
        idempotency_key=key, patient=demographics("Zaki"), allow_possible_duplicate=True
    )
    first = await records_server.stub.RegisterPatient(
        request, metadata=records_server.receptionist
    )
    retry = await records_server.stub.RegisterPatient(
        request, metadata=records_server.receptionist
    )

    assert retry.patient.patient_id == first.patient.patient_id


async def test_other_caller_key_is_not_replayed(
    records_server: RecordsServer,
) -> None:
    key = uuid.uuid4().hex
    first = await register(records_server, records_server.receptionist, key, "Zaki")

    second = await register(records_server, records_server.doctor, key, "Fahmy")

    assert second.patient_id != first.patient_id
    assert second.names[0].family == "Fahmy"


async def test_other_request_key_is_not_replayed(
    records_server: RecordsServer,
) -> None:
    key = uuid.uuid4().hex
    first = await register(records_server, records_server.receptionist, key, "Zaki")

    second = await register(records_server, records_server.receptionist, key, "Nour")

    assert second.patient_id != first.patient_id
    assert second.names[0].family == "Nour"


async def test_chart_key_is_not_replayed_for_other_patient(
    records_server: RecordsServer,
) -> None:
    first_patient = await register(
        records_server, records_server.receptionist, "", "Salem"
    )
    second_patient = await register(
        records_server, records_server.receptionist, "", "Adel"
    )
    key = uuid.uuid4().hex

    def condition(patient_id: str, code: str) -> pb.RecordConditionRequest:
        return pb.RecordConditionRequest(
            idempotency_key=key,
            condition=pb.Condition(
                patient_id=patient_id,
                code=types_pb2.CodeableConcept(
                    codings=[
                        types_pb2.Coding(system="http://snomed.info/sct", code=code)
                    ]
                ),
                clinical_status="active",
            ),
        )

    await records_server.stub.RecordCondition(
        condition(first_patient.patient_id, "44054006"), metadata=records_server.doctor
    )
    second = await records_server.stub.RecordCondition(
        condition(second_patient.patient_id, "38341003"), metadata=records_server.doctor
    )

    assert second.condition.patient_id == second_patient.patient_id
    assert second.condition.code.codings[0].code == "38341003"
