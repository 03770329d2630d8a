"""RecordsService through a real in-process gRPC server and a generated stub."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
from fhir.resources.R4B.bundle import Bundle
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb

from .conftest import RecordsServer

NATIONAL_ID = "urn:hin:id:eg-national-id"
# Built by hand: century 2 (1900s), born 1990-05-17, governorate 01 (Cairo),
# sequence 2345 (last digit 5 is odd: male), check digit 1.
MALE_1990_05_17 = "29005170123451"
# Century 3 (2000s), born 2003-02-28, governorate 21 (Giza), sequence 0012
# (2 is even: female), check digit 7.
FEMALE_2003_02_28 = "30302282100127"


def demographics(
    given: str,
    family: str,
    *,
    birth: tuple[int, int, int] = (1980, 1, 1),
    gender: int = types_pb2.GENDER_MALE,
    identifiers: list[tuple[str, str]] | None = None,
    phone: str = "",
) -> pb.PatientDemographics:
    patient = pb.PatientDemographics(
        names=[types_pb2.HumanName(use="official", family=family, given=[given])],
        birth_date=types_pb2.Date(year=birth[0], month=birth[1], day=birth[2]),
        gender=gender,
    )
    for system, value in identifiers or [("urn:hin:id:mrn:org-1", uuid.uuid4().hex)]:
        patient.identifiers.add(system=system, value=value)
    if phone:
        patient.telecom.add(system="phone", value=phone, use="mobile")
    return patient


async def register(
    server: RecordsServer, patient: pb.PatientDemographics, **options: object
) -> pb.RegisterPatientResponse:
    return await server.stub.RegisterPatient(
        pb.RegisterPatientRequest(patient=patient, **options),  # type: ignore[arg-type]
        metadata=server.doctor,
    )


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


async def test_register_assigns_id_and_version_one(
    records_server: RecordsServer,
) -> None:
    response = await register(records_server, demographics("Omar", "Said"))
    assert response.registered
    assert response.patient.patient_id
    assert response.patient.version == 1
    assert response.patient.names[0].family == "Said"


async def test_register_retry_returns_first_result(
    records_server: RecordsServer,
) -> None:
    patient = demographics("Karim", "Nabil", birth=(1981, 2, 3))
    first = await register(records_server, patient, idempotency_key="reg-karim")
    second = await register(records_server, patient, idempotency_key="reg-karim")
    assert second.patient.patient_id == first.patient.patient_id


async def test_taken_identifier_is_already_exists(
    records_server: RecordsServer,
) -> None:
    identifier = ("urn:hin:id:mrn:org-1", "MRN-TAKEN-1")
    await register(
        records_server, demographics("Hany", "Adel", identifiers=[identifier])
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(
            records_server,
            demographics("Sami", "Fawzy", birth=(1970, 3, 3), identifiers=[identifier]),
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "patient.identifiers[0]" in (caught.value.details() or "")
    assert "MRN-TAKEN-1" not in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("national_id", "birth", "gender"),
    [
        # Month 13 does not exist.
        ("29013170123451", (1990, 5, 17), types_pb2.GENDER_MALE),
        # 1990-02-30 does not exist.
        ("29002300123451", (1990, 5, 17), types_pb2.GENDER_MALE),
        # Governorate 99 is not assigned.
        ("29005179923451", (1990, 5, 17), types_pb2.GENDER_MALE),
        # Century digit 5 is not assigned.
        ("59005170123451", (1990, 5, 17), types_pb2.GENDER_MALE),
        # Valid ID, but the patient's birth date differs.
        (MALE_1990_05_17, (1990, 5, 18), types_pb2.GENDER_MALE),
        # Valid ID of a man, given for a woman.
        (MALE_1990_05_17, (1990, 5, 17), types_pb2.GENDER_FEMALE),
        # Thirteen digits only.
        ("2900517012345", (1990, 5, 17), types_pb2.GENDER_MALE),
    ],
)
async def test_bad_national_id_names_identifier(
    records_server: RecordsServer,
    national_id: str,
    birth: tuple[int, int, int],
    gender: int,
) -> None:
    patient = demographics(
        "Tarek",
        "Zaki",
        birth=birth,
        gender=gender,
        identifiers=[(NATIONAL_ID, national_id)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(records_server, patient)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["patient.identifiers[0].value"]
    assert national_id not in (caught.value.details() or "")


async def test_valid_national_ids_register(records_server: RecordsServer) -> None:
    male = demographics(
        "Mahmoud",
        "Fathy",
        birth=(1990, 5, 17),
        identifiers=[(NATIONAL_ID, MALE_1990_05_17)],
    )
    female = demographics(
        "Mona",
        "Samir",
        birth=(2003, 2, 28),
        gender=types_pb2.GENDER_FEMALE,
        identifiers=[(NATIONAL_ID, FEMALE_2003_02_28)],
    )
    assert (await register(records_server, male)).registered
    assert (await register(records_server, female)).registered


async def test_missing_names_is_invalid(records_server: RecordsServer) -> None:
    patient = demographics("x", "y")
    del patient.names[:]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await register(records_server, patient)
    assert violated_fields(caught.value) == ["patient.names"]


async def test_similar_patient_returns_candidates(
    records_server: RecordsServer,
) -> None:
    first = await register(
        records_server, demographics("Ahmed", "Hassan", birth=(1975, 7, 9))
    )
    response = await register(
        records_server, demographics("Ahmad", "Hassan", birth=(1975, 7, 9))
    )
    assert not response.registered
    assert not response.HasField("patient")
    assert [c.patient.patient_id for c in response.possible_duplicates] == [
        first.patient.patient_id
    ]
    # "ahmad hassan" against "ahmed hassan": 11 matching characters of 24,
    # ratio 22/24; 60 * 22/24 = 55, plus 30 (birth date) and 10 (gender).
    assert response.possible_duplicates[0].match_score == 95
    assert list(response.possible_duplicates[0].matched_fields) == [
        "names",
        "birth_date",
        "gender",
    ]


async def test_allow_possible_duplicate_registers(
    records_server: RecordsServer,
) -> None:
    await register(records_server, demographics("Youssef", "Ali", birth=(1976, 1, 2)))
    response = await register(
        records_server,
        demographics("Yousef", "Ali", birth=(1976, 1, 2)),
        allow_possible_duplicate=True,
    )
    assert response.registered
    assert response.patient.patient_id


async def test_different_person_same_birthday_registers(
    records_server: RecordsServer,
) -> None:
    await register(records_server, demographics("Nadia", "Lotfy", birth=(1977, 4, 4)))
    response = await register(
        records_server, demographics("Bassem", "Kamal", birth=(1977, 4, 4))
    )
    assert response.registered
    assert list(response.possible_duplicates) == []


async def search_ids(server: RecordsServer, **criteria: object) -> list[str]:
    response = await server.stub.SearchPatients(
        pb.SearchPatientsRequest(**criteria),  # type: ignore[arg-type]
        metadata=server.doctor,
    )
    return [p.patient_id for p in response.patients]


async def test_arabic_search_ignores_hamza(records_server: RecordsServer) -> None:
    patient = demographics("أحمد", "الشناوي", birth=(1960, 6, 6))
    registered = await register(records_server, patient)
    assert await search_ids(records_server, name="احمد الشناوى") == [
        registered.patient.patient_id
    ]


async def test_arabic_search_folds_taa_marbuta(records_server: RecordsServer) -> None:
    patient = demographics(
        "فاطِمة", "مصطفى", birth=(1961, 6, 6), gender=types_pb2.GENDER_FEMALE
    )
    registered = await register(records_server, patient)
    assert await search_ids(records_server, name="فاطمه مصطفي") == [
        registered.patient.patient_id
    ]


async def test_latin_search_ignores_case(records_server: RecordsServer) -> None:
    lower = await register(
        records_server, demographics("Ahmed", "Qandil", birth=(1962, 1, 1))
    )
    upper = await register(
        records_server, demographics("AHMED", "QANDIL", birth=(1963, 1, 1))
    )
    found_by_upper = await search_ids(records_server, name="AHMED qandil")
    found_by_lower = await search_ids(records_server, name="ahmed QANDIL")
    expected = sorted([lower.patient.patient_id, upper.patient.patient_id])
    assert sorted(found_by_upper) == expected
    assert sorted(found_by_lower) == expected


async def test_latin_search_ignores_accents(records_server: RecordsServer) -> None:
    registered = await register(
        records_server, demographics("Hernán", "Ordóñez", birth=(1964, 1, 1))
    )
    assert await search_ids(records_server, name="hernan ordonez") == [
        registered.patient.patient_id
    ]


async def test_search_by_phone_digits(records_server: RecordsServer) -> None:
    registered = await register(
        records_server,
        demographics("Reda", "Farouk", birth=(1965, 1, 1), phone="+20 100 555 7788"),
    )
    assert await search_ids(records_server, phone="0100-555-7788") == [
        registered.patient.patient_id
    ]


async def test_search_by_identifier(records_server: RecordsServer) -> None:
    identifier = types_pb2.Identifier(system="urn:hin:id:member:payer-9", value="M-77")
    registered = await register(
        records_server,
        demographics(
            "Wael",
            "Gaber",
            birth=(1966, 1, 1),
            identifiers=[("urn:hin:id:member:payer-9", "M-77")],
        ),
    )
    assert await search_ids(records_server, identifier=identifier) == [
        registered.patient.patient_id
    ]


async def test_search_by_birth_date(records_server: RecordsServer) -> None:
    registered = await register(
        records_server, demographics("Lamia", "Hosny", birth=(1911, 11, 11))
    )
    found = await search_ids(
        records_server, birth_date=types_pb2.Date(year=1911, month=11, day=11)
    )
    assert found == [registered.patient.patient_id]


async def test_search_without_criteria_is_invalid(
    records_server: RecordsServer,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search_ids(records_server)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_pages_through_patients(records_server: RecordsServer) -> None:
    stub, metadata = records_server.stub, records_server.doctor
    seen: list[str] = []
    token = ""
    total = -1
    while True:
        response = await stub.ListPatients(
            pb.ListPatientsRequest(
                page=types_pb2.PageRequest(page_size=3, page_token=token)
            ),
            metadata=metadata,
        )
        assert len(response.patients) <= 3
        seen.extend(p.patient_id for p in response.patients)
        total = response.page.total_size
        token = response.page.next_page_token
        if not token:
            break
    assert len(seen) == total
    assert len(set(seen)) == total


async def test_update_bumps_version(records_server: RecordsServer) -> None:
    registered = await register(
        records_server, demographics("Sherif", "Mounir", birth=(1967, 1, 1))
    )
    changed = pb.PatientDemographics()
    changed.CopyFrom(demographics("Sherif", "Mounir", birth=(1967, 1, 1)))
    del changed.identifiers[:]
    changed.identifiers.extend(registered.patient.identifiers)
    changed.telecom.add(system="phone", value="+201112223334")
    response = await records_server.stub.UpdatePatient(
        pb.UpdatePatientRequest(
            patient_id=registered.patient.patient_id,
            expected_version=1,
            patient=changed,
        ),
        metadata=records_server.doctor,
    )
    assert response.patient.version == 2
    assert list(response.changed_fields) == ["telecom"]


async def test_stale_update_is_aborted(records_server: RecordsServer) -> None:
    registered = await register(
        records_server, demographics("Ola", "Ramzy", birth=(1968, 1, 1))
    )
    new = demographics("Ola", "Ramzy", birth=(1968, 1, 2))
    del new.identifiers[:]
    new.identifiers.extend(registered.patient.identifiers)
    request = pb.UpdatePatientRequest(
        patient_id=registered.patient.patient_id, expected_version=1, patient=new
    )
    await records_server.stub.UpdatePatient(request, metadata=records_server.doctor)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.UpdatePatient(request, metadata=records_server.doctor)
    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_unknown_patient_is_not_found(records_server: RecordsServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.GetPatient(
            pb.GetPatientRequest(patient_id="no-such-patient"),
            metadata=records_server.doctor,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_merge_moves_identifiers_and_chart(records_server: RecordsServer) -> None:
    survivor = await register(
        records_server, demographics("Adel", "Emam", birth=(1969, 1, 1))
    )
    duplicate = await register(
        records_server,
        demographics("Adel", "Imam", birth=(1969, 1, 1)),
        allow_possible_duplicate=True,
    )
    await records_server.stub.RecordCondition(
        pb.RecordConditionRequest(
            condition=pb.Condition(
                patient_id=duplicate.patient.patient_id,
                code=types_pb2.CodeableConcept(text="Asthma"),
            )
        ),
        metadata=records_server.doctor,
    )
    merged = await records_server.stub.MergePatients(
        pb.MergePatientsRequest(
            surviving_patient_id=survivor.patient.patient_id,
            merged_patient_id=duplicate.patient.patient_id,
            reason="same person registered twice",
        ),
        metadata=records_server.doctor,
    )
    survivor_identifiers = {(i.system, i.value) for i in merged.survivor.identifiers}
    assert (
        duplicate.patient.identifiers[0].system,
        duplicate.patient.identifiers[0].value,
    ) in survivor_identifiers
    assert list(merged.survivor.merged_patient_ids) == [duplicate.patient.patient_id]

    read = await records_server.stub.GetPatient(
        pb.GetPatientRequest(patient_id=duplicate.patient.patient_id),
        metadata=records_server.doctor,
    )
    assert read.patient.patient_id == survivor.patient.patient_id
    assert read.merged_patient_id == duplicate.patient.patient_id

    summary = await records_server.stub.GetPatientSummary(
        pb.GetPatientSummaryRequest(patient_id=survivor.patient.patient_id),
        metadata=records_server.doctor,
    )
    assert [c.code.text for c in summary.summary.conditions] == ["Asthma"]


async def test_merge_of_merged_record_is_rejected(
    records_server: RecordsServer,
) -> None:
    a = await register(
        records_server, demographics("Rami", "Fouad", birth=(1971, 1, 1))
    )
    b = await register(records_server, demographics("Hoda", "Gad", birth=(1972, 1, 1)))
    c = await register(records_server, demographics("Sayed", "Ezz", birth=(1973, 1, 1)))
    await records_server.stub.MergePatients(
        pb.MergePatientsRequest(
            surviving_patient_id=a.patient.patient_id,
            merged_patient_id=b.patient.patient_id,
        ),
        metadata=records_server.doctor,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.MergePatients(
            pb.MergePatientsRequest(
                surviving_patient_id=c.patient.patient_id,
                merged_patient_id=b.patient.patient_id,
            ),
            metadata=records_server.doctor,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def chart_of_new_patient(server: RecordsServer) -> str:
    registered = await register(
        server,
        demographics("Gamal", "Bakr", birth=(1974, 4, 4)),
        allow_possible_duplicate=True,
    )
    patient_id = registered.patient.patient_id
    encounter = pb.Encounter(patient_id=patient_id, encounter_class="AMB")
    encounter.period.start.FromJsonString("2024-03-01T09:00:00Z")
    await server.stub.RecordEncounter(
        pb.RecordEncounterRequest(encounter=encounter), metadata=server.doctor
    )
    await server.stub.RecordAllergy(
        pb.RecordAllergyRequest(
            allergy=pb.Allergy(
                patient_id=patient_id,
                code=types_pb2.CodeableConcept(text="Penicillin"),
                criticality="high",
            )
        ),
        metadata=server.doctor,
    )
    await server.stub.RecordMedication(
        pb.RecordMedicationRequest(
            medication=pb.Medication(
                patient_id=patient_id,
                code=types_pb2.CodeableConcept(text="Metformin 500 mg"),
            )
        ),
        metadata=server.doctor,
    )
    return patient_id


async def test_summary_contains_recorded_chart(records_server: RecordsServer) -> None:
    patient_id = await chart_of_new_patient(records_server)
    summary = (
        await records_server.stub.GetPatientSummary(
            pb.GetPatientSummaryRequest(patient_id=patient_id),
            metadata=records_server.doctor,
        )
    ).summary
    assert [e.encounter_class for e in summary.encounters] == ["AMB"]
    assert [a.code.text for a in summary.allergies] == ["Penicillin"]
    assert [m.code.text for m in summary.medications] == ["Metformin 500 mg"]


async def test_clerk_summary_has_no_clinical_data(
    records_server: RecordsServer,
) -> None:
    patient_id = await chart_of_new_patient(records_server)
    summary = (
        await records_server.stub.GetPatientSummary(
            pb.GetPatientSummaryRequest(patient_id=patient_id),
            metadata=records_server.clerk,
        )
    ).summary
    assert summary.patient.patient_id == patient_id
    assert len(summary.encounters) == 0
    assert len(summary.allergies) == 0
    assert len(summary.medications) == 0
    assert len(summary.conditions) == 0
    assert len(summary.observations) == 0


async def test_summary_without_clinical_role(records_server: RecordsServer) -> None:
    patient_id = await chart_of_new_patient(records_server)
    summary = (
        await records_server.stub.GetPatientSummary(
            pb.GetPatientSummaryRequest(patient_id=patient_id),
            metadata=records_server.receptionist,
        )
    ).summary
    assert summary.patient.patient_id == patient_id
    assert len(summary.encounters) == 0
    assert len(summary.allergies) == 0
    assert len(summary.medications) == 0


async def test_doctor_cannot_import_bundles(records_server: RecordsServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.ImportFhir(
            pb.ImportFhirRequest(bundle=b'{"resourceType": "Bundle", "entry": []}'),
            metadata=records_server.doctor,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_clerk_export_holds_patient_only(records_server: RecordsServer) -> None:
    patient_id = await chart_of_new_patient(records_server)
    response = await records_server.stub.ExportPatient(
        pb.ExportPatientRequest(patient_id=patient_id), metadata=records_server.clerk
    )
    bundle = json.loads(response.bundle)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient"]


async def test_clerk_cannot_record_clinical_data(
    records_server: RecordsServer,
) -> None:
    patient_id = await chart_of_new_patient(records_server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.RecordAllergy(
            pb.RecordAllergyRequest(
                allergy=pb.Allergy(
                    patient_id=patient_id, code=types_pb2.CodeableConcept(text="Dust")
                )
            ),
            metadata=records_server.clerk,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_call_without_token_is_unauthenticated(
    records_server: RecordsServer,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.GetPatient(pb.GetPatientRequest(patient_id="p-1"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_role_without_permission_is_denied(
    records_server: RecordsServer,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.ListPatients(
            pb.ListPatientsRequest(), metadata=records_server.nobody
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_update_of_merged_record_rejected(records_server: RecordsServer) -> None:
    survivor = await register(
        records_server, demographics("Ihab", "Nour", birth=(1978, 8, 8))
    )
    merged = await register(
        records_server,
        demographics("Ihab", "Nour", birth=(1978, 8, 8)),
        allow_possible_duplicate=True,
    )
    await records_server.stub.MergePatients(
        pb.MergePatientsRequest(
            surviving_patient_id=survivor.patient.patient_id,
            merged_patient_id=merged.patient.patient_id,
        ),
        metadata=records_server.doctor,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records_server.stub.UpdatePatient(
            pb.UpdatePatientRequest(
                patient_id=merged.patient.patient_id,
                expected_version=2,
                patient=demographics("Ihab", "Nour", birth=(1978, 8, 8)),
            ),
            metadata=records_server.doctor,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert survivor.patient.patient_id in (caught.value.details() or "")


async def test_record_retry_returns_first_entry(records_server: RecordsServer) -> None:
    registered = await register(
        records_server,
        demographics("Zeinab", "Rizk", birth=(1979, 9, 9)),
        allow_possible_duplicate=True,
    )
    request = pb.RecordConditionRequest(
        idempotency_key="condition-zeinab-1",
        condition=pb.Condition(
            patient_id=registered.patient.patient_id,
            code=types_pb2.CodeableConcept(text="Hypertension"),
        ),
    )
    first = await records_server.stub.RecordCondition(
        request, metadata=records_server.doctor
    )
    second = await records_server.stub.RecordCondition(
        request, metadata=records_server.doctor
    )
    summary = await records_server.stub.GetPatientSummary(
        pb.GetPatientSummaryRequest(patient_id=registered.patient.patient_id),
        metadata=records_server.doctor,
    )
    assert second.condition.condition_id == first.condition.condition_id
    assert len(summary.summary.conditions) == 1


async def test_import_resolves_patient_reference(
    records_server: RecordsServer,
) -> None:
    registered = await register(
        records_server,
        demographics("Marwa", "Saad", birth=(1982, 2, 2)),
        allow_possible_duplicate=True,
    )
    patient_id = registered.patient.patient_id
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "AllergyIntolerance",
                    "id": "allergy-marwa-1",
                    "patient": {"reference": "urn:uuid:outside-marwa"},
                    "code": {"text": "Peanuts"},
                }
            },
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": "condition-marwa-1",
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "code": {"text": "Migraine"},
                }
            },
        ],
    }
    response = await records_server.stub.ImportFhir(
        pb.ImportFhirRequest(
            bundle=json.dumps(bundle).encode(),
            resolved_references={"urn:uuid:outside-marwa": patient_id},
        ),
        metadata=records_server.admin,
    )
    summary = await records_server.stub.GetPatientSummary(
        pb.GetPatientSummaryRequest(patient_id=patient_id),
        metadata=records_server.doctor,
    )
    assert [o.reason for o in response.outcomes] == ["", ""]
    assert [a.code.text for a in summary.summary.allergies] == ["Peanuts"]
    assert [c.code.text for c in summary.summary.conditions] == ["Migraine"]


async def test_export_of_recorded_chart_validates(
    records_server: RecordsServer,
) -> None:
    patient_id = await chart_of_new_patient(records_server)
    await records_server.stub.RecordCondition(
        pb.RecordConditionRequest(
            condition=pb.Condition(
                patient_id=patient_id,
                code=types_pb2.CodeableConcept(
                    codings=[
                        types_pb2.Coding(
                            system="http://snomed.info/sct",
                            code="38341003",
                            display="Hypertension",
                        )
                    ]
                ),
                clinical_status="active",
            )
        ),
        metadata=records_server.doctor,
    )
    response = await records_server.stub.ExportPatient(
        pb.ExportPatientRequest(patient_id=patient_id), metadata=records_server.doctor
    )
    bundle = json.loads(response.bundle)
    Bundle.model_validate(bundle)
    assert sorted(e["resource"]["resourceType"] for e in bundle["entry"]) == [
        "AllergyIntolerance",
        "Condition",
        "Encounter",
        "MedicationRequest",
        "Patient",
    ]
    subjects = {
        e["resource"].get("subject", e["resource"].get("patient"))["reference"]
        for e in bundle["entry"][1:]
    }
    assert subjects == {f"Patient/{patient_id}"}
