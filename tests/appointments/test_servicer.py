"""AppointmentsService through a real in-process server and a generated stub."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.appointments.v1 import events_pb2
from hin.common.v1 import types_pb2
from mesh.runtime.events import outbox_table

from .conftest import (
    Running,
    cairo,
    new_practitioner,
    next_weekday,
    period,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

MONDAY = 1


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status details")


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields |= {v.field for v in bad_request.field_violations}
    return fields


def outbox_events(service: Running, subjects: list[str]) -> list[tuple[str, str]]:
    """Return (subject, event type) of the outbox rows about ``subjects``.

    AppointmentBooked rows are left out: they come from the test's setup.
    """
    statement = select(outbox_table.c.subject, outbox_table.c.event_type).where(
        outbox_table.c.subject.in_(subjects),
        outbox_table.c.event_type != "hin.appointments.v1.AppointmentBooked",
    )
    with service.host.db.transaction() as session:
        return [(row.subject, row.event_type) for row in session.execute(statement)]


def availability_changed(
    service: Running, practitioner_id: str
) -> events_pb2.PractitionerAvailabilityChanged:
    statement = select(outbox_table.c.payload).where(
        outbox_table.c.subject == practitioner_id,
        outbox_table.c.event_type
        == "hin.appointments.v1.PractitionerAvailabilityChanged",
    )
    with service.host.db.transaction() as session:
        payload = session.execute(statement).scalar_one()
    return events_pb2.PractitionerAvailabilityChanged.FromString(payload)


def book_request(
    patient_id: str, practitioner_id: str, hour: int, minute: int, **extra: object
) -> pb.BookRequest:
    day = next_weekday(MONDAY)
    start = cairo(day, hour, minute)
    return pb.BookRequest(
        patient_id=patient_id,
        practitioner_id=practitioner_id,
        period=period(start, start + timedelta(minutes=15)),
        service_type=types_pb2.Coding(
            system="urn:hin:code:visit-type", code="visit-general"
        ),
        **extra,  # type: ignore[arg-type]
    )


async def test_book_returns_booked_appointment(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000001")
    service.register_patients("patient-book-1")

    response = await service.stub.Book(
        book_request("patient-book-1", practitioner_id, 9, 0),
        metadata=service.scheduler_auth,
    )

    appointment = response.appointment
    assert appointment.status == pb.APPOINTMENT_STATUS_BOOKED
    assert appointment.version == 1
    assert appointment.practitioner_id == practitioner_id
    # 09:00 Cairo on that Monday, computed by hand through zoneinfo.
    expected_start = cairo(next_weekday(MONDAY), 9, 0)
    assert appointment.period.start.ToDatetime().replace(
        tzinfo=expected_start.tzinfo
    ) == (expected_start)


async def test_book_retry_returns_first_result(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000002")
    service.register_patients("patient-retry-1")
    request = book_request(
        "patient-retry-1", practitioner_id, 10, 0, idempotency_key="retry-key-1"
    )

    first = await service.stub.Book(request, metadata=service.scheduler_auth)
    second = await service.stub.Book(request, metadata=service.scheduler_auth)

    assert second.appointment.appointment_id == first.appointment.appointment_id
    listed = await service.stub.ListAppointments(
        pb.ListAppointmentsRequest(patient_id="patient-retry-1"),
        metadata=service.scheduler_auth,
    )
    assert len(listed.appointments) == 1


async def test_book_key_reused_for_other_request(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000003")
    service.register_patients("patient-reuse-1")
    await service.stub.Book(
        book_request("patient-reuse-1", practitioner_id, 9, 0, idempotency_key="k-2"),
        metadata=service.scheduler_auth,
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Book(
            book_request(
                "patient-reuse-1", practitioner_id, 11, 0, idempotency_key="k-2"
            ),
            metadata=service.scheduler_auth,
        )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"


async def test_book_unknown_patient_rejected(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000004")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Book(
            book_request("patient-nobody", practitioner_id, 9, 0),
            metadata=service.scheduler_auth,
        )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "PATIENT_UNKNOWN"
    assert "not known" in (caught.value.details() or "")


async def test_book_merged_patient_names_survivor(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000005")
    service.register_patients("patient-dup-1", "patient-survivor-1")
    service.merge_patients("patient-dup-1", "patient-survivor-1")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Book(
            book_request("patient-dup-1", practitioner_id, 9, 0),
            metadata=service.scheduler_auth,
        )

    info = error_info(caught.value)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "PATIENT_MERGED"
    assert info.metadata["surviving_patient_id"] == "patient-survivor-1"
    assert "patient-survivor-1" in (caught.value.details() or "")


async def test_book_invalid_request_names_fields(service: Running) -> None:
    request = pb.BookRequest(
        practitioner_id="p-1",
        period=types_pb2.Period(),
        service_type=types_pb2.Coding(system="urn:hin:code:visit-type", code="spa-day"),
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Book(request, metadata=service.scheduler_auth)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == {
        "patient_id",
        "period.start",
        "period.end",
        "service_type.code",
    }


async def test_book_outside_hours_rejected(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000006")
    service.register_patients("patient-late-1")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Book(
            book_request("patient-late-1", practitioner_id, 12, 50),
            metadata=service.scheduler_auth,
        )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "OUTSIDE_WORKING_HOURS"


async def test_book_without_permission_denied(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000007")
    service.register_patients("patient-denied-1")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Book(
            book_request("patient-denied-1", practitioner_id, 9, 0),
            metadata=service.receptionist_auth,
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_find_slots_skips_booked_slot(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000008")
    service.register_patients("patient-slots-1")
    await service.stub.Book(
        book_request("patient-slots-1", practitioner_id, 9, 15),
        metadata=service.scheduler_auth,
    )
    day = next_weekday(MONDAY)

    response = await service.stub.FindSlots(
        pb.FindSlotsRequest(
            practitioner_id=practitioner_id,
            window=period(cairo(day, 0, 0), cairo(day, 23, 59)),
        ),
        metadata=service.scheduler_auth,
    )

    # 09:00-13:00 in 15-minute slots is 16 slots; one is booked.
    assert response.page.total_size == 15
    starts = [s.period.start.ToSeconds() for s in response.slots]
    assert int(cairo(day, 9, 15).timestamp()) not in starts
    assert starts[0] == int(cairo(day, 9, 0).timestamp())


async def test_visit_life_cycle_assigns_encounter(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000009")
    service.register_patients("patient-visit-1")
    booked = await service.stub.Book(
        book_request("patient-visit-1", practitioner_id, 9, 30),
        metadata=service.scheduler_auth,
    )
    appointment_id = booked.appointment.appointment_id

    checked_in = await service.stub.CheckIn(
        pb.CheckInRequest(appointment_id=appointment_id, expected_version=1),
        metadata=service.scheduler_auth,
    )
    completed = await service.stub.Complete(
        pb.CompleteRequest(appointment_id=appointment_id, expected_version=2),
        metadata=service.scheduler_auth,
    )

    assert checked_in.appointment.status == pb.APPOINTMENT_STATUS_CHECKED_IN
    assert completed.appointment.status == pb.APPOINTMENT_STATUS_COMPLETED
    assert completed.appointment.version == 3
    assert completed.appointment.encounter_id != ""


async def test_stale_version_is_aborted(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000010")
    service.register_patients("patient-stale-1")
    booked = await service.stub.Book(
        book_request("patient-stale-1", practitioner_id, 9, 45),
        metadata=service.scheduler_auth,
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Cancel(
            pb.CancelRequest(
                appointment_id=booked.appointment.appointment_id,
                expected_version=7,
                cancelled_by=pb.CANCELLED_BY_PATIENT,
            ),
            metadata=service.scheduler_auth,
        )

    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert error_info(caught.value).metadata["current_version"] == "1"


async def test_complete_before_check_in_rejected(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000011")
    service.register_patients("patient-early-1")
    booked = await service.stub.Book(
        book_request("patient-early-1", practitioner_id, 10, 15),
        metadata=service.scheduler_auth,
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Complete(
            pb.CompleteRequest(
                appointment_id=booked.appointment.appointment_id, expected_version=1
            ),
            metadata=service.scheduler_auth,
        )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "INVALID_APPOINTMENT_STATUS"


async def test_no_show_after_start_only(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000012")
    service.register_patients("patient-absent-1")
    booked = await service.stub.Book(
        book_request("patient-absent-1", practitioner_id, 11, 0),
        metadata=service.scheduler_auth,
    )
    request = pb.MarkNoShowRequest(
        appointment_id=booked.appointment.appointment_id, expected_version=1
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.MarkNoShow(request, metadata=service.scheduler_auth)
    service.clock.fixed = cairo(next_weekday(MONDAY), 11, 20)
    try:
        response = await service.stub.MarkNoShow(
            request, metadata=service.scheduler_auth
        )
    finally:
        service.clock.fixed = None

    assert error_info(caught.value).reason == "APPOINTMENT_NOT_STARTED"
    assert response.appointment.status == pb.APPOINTMENT_STATUS_NO_SHOW


async def test_leave_moves_then_cancels_bookings(service: Running) -> None:
    rules = [
        pb.WeeklyRule(
            weekday=pb.WEEKDAY_MONDAY,
            start_time="09:00",
            end_time="10:00",
            slot_minutes=30,
        )
    ]
    practitioner_id = await new_practitioner(service, "1000000013", rules)
    service.register_patients(*(f"patient-leave-{n}" for n in range(1, 6)))
    monday = next_weekday(MONDAY)
    later = monday + timedelta(days=7)
    latest = monday + timedelta(days=14)
    bookings = [
        ("patient-leave-1", monday, 9, 0),
        ("patient-leave-2", monday, 9, 30),
        # Fill the Monday after, and 09:00 of the Monday after that.
        ("patient-leave-3", later, 9, 0),
        ("patient-leave-4", later, 9, 30),
        ("patient-leave-5", latest, 9, 0),
    ]
    for patient_id, day, hour, minute in bookings:
        start = cairo(day, hour, minute)
        await service.stub.Book(
            pb.BookRequest(
                patient_id=patient_id,
                practitioner_id=practitioner_id,
                period=period(start, start + timedelta(minutes=30)),
            ),
            metadata=service.scheduler_auth,
        )

    response = await service.stub.AddScheduleException(
        pb.AddScheduleExceptionRequest(
            practitioner_id=practitioner_id,
            kind=pb.SCHEDULE_EXCEPTION_KIND_LEAVE,
            period=period(cairo(monday, 0, 0), cairo(monday, 23, 59)),
            reason="conference",
        ),
        metadata=service.scheduler_auth,
    )

    # The only free slot within 14 days of either start is 09:30 two Mondays
    # later: exactly 14 days after the 09:30 visit, 14.5 days after the 09:00
    # one. The 09:30 visit moves there and the 09:00 visit is cancelled.
    assert [a.patient_id for a in response.rescheduled] == ["patient-leave-2"]
    moved = response.rescheduled[0].period.start.ToSeconds()
    assert moved == int(cairo(latest, 9, 30).timestamp())
    assert [a.patient_id for a in response.cancelled] == ["patient-leave-1"]
    assert response.cancelled[0].status == pb.APPOINTMENT_STATUS_CANCELLED

    # The same transaction wrote one event per displaced appointment and one
    # PractitionerAvailabilityChanged naming both.
    moved_id = response.rescheduled[0].appointment_id
    cancelled_id = response.cancelled[0].appointment_id
    events = outbox_events(service, [moved_id, cancelled_id, practitioner_id])
    assert sorted(events) == sorted(
        [
            (cancelled_id, "hin.appointments.v1.AppointmentCancelled"),
            (moved_id, "hin.appointments.v1.AppointmentRescheduled"),
            (practitioner_id, "hin.appointments.v1.PractitionerAvailabilityChanged"),
        ]
    )
    change = availability_changed(service, practitioner_id)
    assert sorted(change.affected_appointment_ids) == sorted([moved_id, cancelled_id])
    assert change.reason == "conference"


async def test_emergency_admission_then_discharge(service: Running) -> None:
    service.register_patients("patient-er-1")

    admitted = await service.stub.Admit(
        pb.AdmitRequest(
            patient_id="patient-er-1",
            organization_id="org-1",
            ward="emergency",
            emergency=True,
            idempotency_key="admit-er-1",
        ),
        metadata=service.scheduler_auth,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Admit(
            pb.AdmitRequest(
                patient_id="patient-er-1",
                organization_id="org-1",
                ward="icu",
                emergency=True,
            ),
            metadata=service.scheduler_auth,
        )
    discharged = await service.stub.Discharge(
        pb.DischargeRequest(
            admission_id=admitted.admission.admission_id, expected_version=1
        ),
        metadata=service.scheduler_auth,
    )

    assert admitted.admission.status == pb.ADMISSION_STATUS_ADMITTED
    assert error_info(caught.value).reason == "ALREADY_ADMITTED"
    assert discharged.admission.status == pb.ADMISSION_STATUS_DISCHARGED


async def test_practitioner_identifier_taken_rejected(service: Running) -> None:
    await new_practitioner(service, "1000000014")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.RegisterPractitioner(
            pb.RegisterPractitionerRequest(
                identifiers=[
                    types_pb2.Identifier(
                        system="http://hl7.org/fhir/sid/us-npi", value="1000000014"
                    )
                ],
                names=[types_pb2.HumanName(family="Other")],
            ),
            metadata=service.scheduler_auth,
        )

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_schedule_rules_invalid_fields_named(service: Running) -> None:
    request = pb.SetWeeklyScheduleRequest(
        practitioner_id="p-1",
        rules=[
            pb.WeeklyRule(
                weekday=pb.WEEKDAY_MONDAY,
                start_time="09:00",
                end_time="12:00",
                slot_minutes=15,
            ),
            pb.WeeklyRule(
                weekday=pb.WEEKDAY_MONDAY,
                start_time="11:00",
                end_time="10:00",
                slot_minutes=2,
            ),
            pb.WeeklyRule(
                weekday=pb.WEEKDAY_MONDAY,
                start_time="9am",
                end_time="13:00",
                slot_minutes=15,
            ),
        ],
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.SetWeeklySchedule(request, metadata=service.scheduler_auth)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == {
        "rules[1].end_time",
        "rules[1].slot_minutes",
        "rules[2].start_time",
    }


async def test_shorter_hours_move_displaced_booking(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000015")
    service.register_patients("patient-hours-1")
    booked = await service.stub.Book(
        book_request("patient-hours-1", practitioner_id, 12, 0),
        metadata=service.scheduler_auth,
    )
    schedule = await service.stub.GetWeeklySchedule(
        pb.GetWeeklyScheduleRequest(practitioner_id=practitioner_id),
        metadata=service.scheduler_auth,
    )

    response = await service.stub.SetWeeklySchedule(
        pb.SetWeeklyScheduleRequest(
            practitioner_id=practitioner_id,
            rules=[
                pb.WeeklyRule(
                    weekday=pb.WEEKDAY_MONDAY,
                    start_time="09:00",
                    end_time="11:00",
                    slot_minutes=15,
                )
            ],
            expected_version=schedule.schedule.version,
            reason="clinic closes earlier",
        ),
        metadata=service.scheduler_auth,
    )

    # 12:00 is outside the new 09:00-11:00 hours. The practitioner's other
    # Monday slots are free, so the visit moves to 09:00 one week later.
    assert schedule.schedule.time_zone == "Africa/Cairo"
    assert [a.appointment_id for a in response.rescheduled] == [
        booked.appointment.appointment_id
    ]
    moved = response.rescheduled[0].period.start.ToSeconds()
    later_monday = next_weekday(MONDAY) + timedelta(days=7)
    assert moved == int(cairo(later_monday, 9, 0).timestamp())
    assert response.schedule.version == schedule.schedule.version + 1


async def test_schedule_stale_version_aborted(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000016")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.SetWeeklySchedule(
            pb.SetWeeklyScheduleRequest(
                practitioner_id=practitioner_id,
                rules=[
                    pb.WeeklyRule(
                        weekday=pb.WEEKDAY_SUNDAY,
                        start_time="09:00",
                        end_time="11:00",
                        slot_minutes=15,
                    )
                ],
                expected_version=0,
            ),
            metadata=service.scheduler_auth,
        )

    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_reschedule_into_taken_slot_rejected(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000017")
    service.register_patients("patient-move-1", "patient-move-2")
    first = await service.stub.Book(
        book_request("patient-move-1", practitioner_id, 9, 0),
        metadata=service.scheduler_auth,
    )
    await service.stub.Book(
        book_request("patient-move-2", practitioner_id, 9, 30),
        metadata=service.scheduler_auth,
    )
    day = next_weekday(MONDAY)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Reschedule(
            pb.RescheduleRequest(
                appointment_id=first.appointment.appointment_id,
                expected_version=1,
                period=period(cairo(day, 9, 30), cairo(day, 9, 45)),
            ),
            metadata=service.scheduler_auth,
        )
    moved = await service.stub.Reschedule(
        pb.RescheduleRequest(
            appointment_id=first.appointment.appointment_id,
            expected_version=1,
            period=period(cairo(day, 10, 0), cairo(day, 10, 15)),
        ),
        metadata=service.scheduler_auth,
    )

    assert error_info(caught.value).reason == "SLOT_UNAVAILABLE"
    assert moved.appointment.version == 2
    assert moved.appointment.period.start.ToSeconds() == int(
        cairo(day, 10, 0).timestamp()
    )


async def test_elective_admission_follows_appointment(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000018")
    service.register_patients("patient-ward-1", "patient-ward-2")
    booked = await service.stub.Book(
        book_request("patient-ward-1", practitioner_id, 9, 0),
        metadata=service.scheduler_auth,
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Admit(
            pb.AdmitRequest(
                patient_id="patient-ward-2",
                organization_id="org-1",
                ward="surgery",
                attending_practitioner_id=practitioner_id,
                appointment_id=booked.appointment.appointment_id,
            ),
            metadata=service.scheduler_auth,
        )
    admitted = await service.stub.Admit(
        pb.AdmitRequest(
            patient_id="patient-ward-1",
            organization_id="org-1",
            ward="surgery",
            attending_practitioner_id=practitioner_id,
            appointment_id=booked.appointment.appointment_id,
        ),
        metadata=service.scheduler_auth,
    )

    assert error_info(caught.value).reason == "APPOINTMENT_OF_OTHER_PATIENT"
    assert admitted.admission.emergency is False
    assert admitted.admission.appointment_id == booked.appointment.appointment_id


async def test_import_fhir_rejects_non_bundle(service: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ImportFhir(
            pb.ImportFhirRequest(bundle=b'{"resourceType": "Patient"}'),
            metadata=service.scheduler_auth,
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == {"bundle"}


async def test_organization_time_zone_must_exist(service: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.RegisterOrganization(
            pb.RegisterOrganizationRequest(name="Clinic", time_zone="Africa/Atlantis"),
            metadata=service.scheduler_auth,
        )

    assert violated_fields(caught.value) == {"time_zone"}


async def test_overlapping_rules_named_by_request_index(service: Running) -> None:
    rule = pb.WeeklyRule(
        weekday=pb.WEEKDAY_MONDAY, start_time="09:00", end_time="12:00", slot_minutes=15
    )
    invalid = pb.WeeklyRule(
        weekday=pb.WEEKDAY_MONDAY, start_time="bad", end_time="12:00", slot_minutes=15
    )
    request = pb.SetWeeklyScheduleRequest(
        practitioner_id="p-1", rules=[invalid, rule, rule]
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.SetWeeklySchedule(request, metadata=service.scheduler_auth)

    assert violated_fields(caught.value) == {"rules[0].start_time", "rules[2]"}


async def test_holiday_moves_bookings_of_organization(service: Running) -> None:
    first_id = await new_practitioner(service, "1000000019", organization_id="org-eid")
    second_id = await new_practitioner(service, "1000000020", organization_id="org-eid")
    other_id = await new_practitioner(service, "1000000021", organization_id="org-2")
    service.register_patients("patient-eid-1", "patient-eid-2", "patient-eid-3")
    for patient_id, practitioner_id in (
        ("patient-eid-1", first_id),
        ("patient-eid-2", second_id),
        ("patient-eid-3", other_id),
    ):
        await service.stub.Book(
            book_request(patient_id, practitioner_id, 9, 0),
            metadata=service.scheduler_auth,
        )
    monday = next_weekday(MONDAY)
    request = pb.AddHolidayRequest(
        idempotency_key="eid-holiday",
        organization_id="org-eid",
        period=period(cairo(monday, 0, 0), cairo(monday + timedelta(days=1), 0, 0)),
        reason="Eid al-Fitr",
    )

    first = await service.stub.AddHoliday(request, metadata=service.scheduler_auth)
    retried = await service.stub.AddHoliday(request, metadata=service.scheduler_auth)

    assert sorted(first.practitioner_ids) == sorted([first_id, second_id])
    assert sorted(a.patient_id for a in first.rescheduled) == [
        "patient-eid-1",
        "patient-eid-2",
    ]
    # The schedules cover Mondays and Tuesdays, so each visit moves to 09:00
    # on the Tuesday after the holiday, its first free slot.
    tuesday = cairo(monday + timedelta(days=1), 9, 0)
    assert {a.period.start.ToSeconds() for a in first.rescheduled} == {
        int(tuesday.timestamp())
    }
    assert list(retried.practitioner_ids) == list(first.practitioner_ids)
    assert [a.appointment_id for a in retried.rescheduled] == [
        a.appointment_id for a in first.rescheduled
    ]


async def test_exception_retry_returns_moved_bookings(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "1000000022")
    service.register_patients("patient-retry-leave-1")
    await service.stub.Book(
        book_request("patient-retry-leave-1", practitioner_id, 9, 0),
        metadata=service.scheduler_auth,
    )
    monday = next_weekday(MONDAY)
    request = pb.AddScheduleExceptionRequest(
        idempotency_key="leave-retry-1",
        practitioner_id=practitioner_id,
        kind=pb.SCHEDULE_EXCEPTION_KIND_LEAVE,
        period=period(cairo(monday, 8, 0), cairo(monday, 10, 0)),
    )

    first = await service.stub.AddScheduleException(
        request, metadata=service.scheduler_auth
    )
    retried = await service.stub.AddScheduleException(
        request, metadata=service.scheduler_auth
    )

    assert retried.exception.exception_id == first.exception.exception_id
    assert len(first.rescheduled) == 1
    assert [a.appointment_id for a in retried.rescheduled] == [
        first.rescheduled[0].appointment_id
    ]
    assert len(retried.schedule.exceptions) == 1


async def test_reschedule_to_other_practitioner(service: Running) -> None:
    first_id = await new_practitioner(service, "1000000023")
    second_id = await new_practitioner(service, "1000000024")
    service.register_patients("patient-handover-1")
    booked = await service.stub.Book(
        book_request("patient-handover-1", first_id, 9, 0),
        metadata=service.scheduler_auth,
    )
    day = next_weekday(MONDAY)

    moved = await service.stub.Reschedule(
        pb.RescheduleRequest(
            appointment_id=booked.appointment.appointment_id,
            expected_version=1,
            period=period(cairo(day, 9, 0), cairo(day, 9, 15)),
            practitioner_id=second_id,
            reason="first practitioner unavailable",
        ),
        metadata=service.scheduler_auth,
    )
    second_slots = await service.stub.FindSlots(
        pb.FindSlotsRequest(
            practitioner_id=second_id,
            window=period(cairo(day, 9, 0), cairo(day, 9, 15)),
        ),
        metadata=service.scheduler_auth,
    )
    first_slots = await service.stub.FindSlots(
        pb.FindSlotsRequest(
            practitioner_id=first_id,
            window=period(cairo(day, 9, 0), cairo(day, 9, 15)),
        ),
        metadata=service.scheduler_auth,
    )

    assert moved.appointment.practitioner_id == second_id
    assert moved.appointment.version == 2
    assert len(second_slots.slots) == 0
    assert len(first_slots.slots) == 1
