"""AppointmentsServiceServicer: validate, authorize, run the command, respond."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.appointments.v1 import appointments_service_pb2_grpc as pb_grpc
from hin.common.v1 import types_pb2
from mesh.runtime.authz import Authorizer, authorize, authorize_patients
from mesh.runtime.errors import Aborted, InvalidArgument
from mesh.runtime.storage import Database
from mesh.runtime.validation import Violations
from svc_appointments import convert, requests, store
from svc_appointments.errors import (
    AdmissionNotFound,
    AppointmentNotFound,
    PractitionerNotFound,
)
from svc_appointments.fhir_import import FhirImporter
from svc_appointments.scheduling import ScheduleChange, Scheduler, get_schedule
from svc_appointments.store import (
    AdmissionRow,
    AppointmentRow,
    PractitionerRow,
    ScheduleRow,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

READ = "appointments.schedule.read"
WRITE = "appointments.schedule.write"
#: Staff directory, working hours, leave and imports: administration that
#: names no patient, like the administrator role's other work.
ADMIN = "appointments.admin.write"


class ConcurrentWrite(Aborted):
    """Another transaction changed the same rows first; retrying can succeed."""


class AppointmentsServicer(pb_grpc.AppointmentsServiceServicer):
    """Serve AppointmentsService; the rules live in Scheduler and the domain."""

    def __init__(
        self,
        *,
        db: Database,
        scheduler: Scheduler,
        importer: FhirImporter,
        authorizer: Authorizer,
    ) -> None:
        self._db = db
        self._scheduler = scheduler
        self._importer = importer
        self._authorizer = authorizer

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(session, ...)`` in one transaction; map write conflicts."""

        def call(session: Session) -> T:
            return fn(session, *args, **kwargs)

        try:
            return await self._db.run(call)
        except IntegrityError as exc:
            raise ConcurrentWrite(
                "another request wrote the same record at the same time; retry "
                "the call (with the same idempotency_key, if it had one)",
                reason="CONCURRENT_WRITE",
            ) from exc
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", "") in {"40001", "40P01"}:
                raise ConcurrentWrite(
                    "the transaction conflicted with another one; retry the call",
                    reason="CONCURRENT_WRITE",
                ) from exc
            raise

    # --- practitioners and organizations ------------------------------------

    async def RegisterPractitioner(
        self, request: pb.RegisterPractitionerRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterPractitionerResponse:
        data = requests.register_practitioner(request)
        await authorize(self._authorizer, action=ADMIN)
        row = await self._run(
            self._scheduler.register_practitioner,
            data,
            requests.idempotency("RegisterPractitioner", request),
        )
        return pb.RegisterPractitionerResponse(
            practitioner=convert.practitioner_message(row)
        )

    async def GetPractitioner(
        self, request: pb.GetPractitionerRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPractitionerResponse:
        v = Violations()
        requests.require_id(v, request.practitioner_id, "practitioner_id")
        v.check()
        await authorize(self._authorizer, action=READ)
        row = await self._run(_load, PractitionerRow, request.practitioner_id)
        if row is None:
            raise PractitionerNotFound(
                f"practitioner {request.practitioner_id} not found",
                reason="PRACTITIONER_NOT_FOUND",
            )
        return pb.GetPractitionerResponse(
            practitioner=convert.practitioner_message(row)
        )

    async def ListPractitioners(
        self, request: pb.ListPractitionersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPractitionersResponse:
        v = Violations()
        offset, limit = requests.page_bounds(v, request.page)
        by_identifier = request.HasField("identifier")
        if by_identifier:
            requests.identifiers(v, [request.identifier], "identifier")
        v.check()
        await authorize(self._authorizer, action=READ)
        if by_identifier:
            rows, total = await self._run(
                _practitioner_by_identifier, request.identifier
            )
            offset = 0
        else:
            rows, total = await self._run(
                store.list_practitioners,
                organization_id=request.organization_id,
                offset=offset,
                limit=limit,
            )
        return pb.ListPractitionersResponse(
            practitioners=[convert.practitioner_message(row) for row in rows],
            page=types_pb2.PageResponse(
                next_page_token=requests.next_page_token(offset, limit, total),
                total_size=total,
            ),
        )

    async def RegisterOrganization(
        self, request: pb.RegisterOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterOrganizationResponse:
        identifiers = requests.register_organization(request)
        await authorize(self._authorizer, action=ADMIN)
        row = await self._run(
            self._scheduler.register_organization,
            name=request.name,
            identifiers=identifiers,
            time_zone=request.time_zone,
            idempotency=requests.idempotency("RegisterOrganization", request),
        )
        return pb.RegisterOrganizationResponse(
            organization=convert.organization_message(row)
        )

    # --- schedules ----------------------------------------------------------

    async def SetWeeklySchedule(
        self, request: pb.SetWeeklyScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetWeeklyScheduleResponse:
        rules = requests.weekly_rules(request)
        await authorize(self._authorizer, action=ADMIN)
        change = await self._run(
            self._scheduler.set_weekly_schedule,
            practitioner_id=request.practitioner_id,
            organization_id=request.organization_id,
            location_id=request.location_id,
            rules=rules,
            expected_version=request.expected_version,
            reason=request.reason,
        )
        return pb.SetWeeklyScheduleResponse(
            schedule=convert.schedule_message(change.schedule, change.exceptions),
            rescheduled=_appointments(change.rescheduled),
            cancelled=_appointments(change.cancelled),
        )

    async def GetWeeklySchedule(
        self, request: pb.GetWeeklyScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWeeklyScheduleResponse:
        v = Violations()
        requests.require_id(v, request.practitioner_id, "practitioner_id")
        v.check()
        await authorize(self._authorizer, action=READ)
        schedule, exceptions = await self._run(
            _load_schedule, self._scheduler, request.practitioner_id
        )
        return pb.GetWeeklyScheduleResponse(
            schedule=convert.schedule_message(schedule, exceptions)
        )

    async def AddScheduleException(
        self,
        request: pb.AddScheduleExceptionRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.AddScheduleExceptionResponse:
        kind, period = requests.schedule_exception(request)
        await authorize(self._authorizer, action=ADMIN)
        change: ScheduleChange = await self._run(
            self._scheduler.add_schedule_exception,
            practitioner_id=request.practitioner_id,
            kind=kind,
            period=period,
            reason=request.reason,
            idempotency=requests.idempotency("AddScheduleException", request),
        )
        assert change.exception is not None
        return pb.AddScheduleExceptionResponse(
            exception=convert.exception_message(change.exception),
            schedule=convert.schedule_message(change.schedule, change.exceptions),
            rescheduled=_appointments(change.rescheduled),
            cancelled=_appointments(change.cancelled),
        )

    async def AddHoliday(
        self, request: pb.AddHolidayRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddHolidayResponse:
        period = requests.holiday(request)
        await authorize(
            self._authorizer, action=ADMIN, organization_id=request.organization_id
        )
        changes: list[ScheduleChange] = await self._run(
            self._scheduler.add_holiday,
            organization_id=request.organization_id,
            period=period,
            reason=request.reason,
            idempotency=requests.idempotency("AddHoliday", request),
        )
        return pb.AddHolidayResponse(
            practitioner_ids=[c.schedule.practitioner_id for c in changes],
            rescheduled=[a for c in changes for a in _appointments(c.rescheduled)],
            cancelled=[a for c in changes for a in _appointments(c.cancelled)],
        )

    async def FindSlots(
        self, request: pb.FindSlotsRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindSlotsResponse:
        window, offset, limit = requests.find_slots(request)
        await authorize(self._authorizer, action=READ)
        schedule, slots = await self._run(
            self._scheduler.find_slots,
            practitioner_id=request.practitioner_id,
            window=window,
        )
        page = slots[offset : offset + limit]
        return pb.FindSlotsResponse(
            slots=[
                pb.Slot(
                    practitioner_id=schedule.practitioner_id,
                    organization_id=schedule.organization_id,
                    location_id=schedule.location_id,
                    period=convert.period_message(slot),
                )
                for slot in page
            ],
            page=types_pb2.PageResponse(
                next_page_token=requests.next_page_token(offset, limit, len(slots)),
                total_size=len(slots),
            ),
        )

    # --- appointments -------------------------------------------------------

    async def Book(
        self, request: pb.BookRequest, context: grpc.aio.ServicerContext
    ) -> pb.BookResponse:
        data = requests.book(request)
        decision = await authorize(
            self._authorizer, action=WRITE, patient_id=request.patient_id
        )
        row = await self._run(
            self._scheduler.book, data, requests.idempotency("Book", request)
        )
        logger.info("appointment booked", extra={"appointment_id": row.id})
        return pb.BookResponse(appointment=_appointment(row, decision.redact_clinical))

    async def Reschedule(
        self, request: pb.RescheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.RescheduleResponse:
        period = requests.reschedule(request)
        decision = await self._authorize_appointment(request.appointment_id, WRITE)
        row = await self._run(
            self._scheduler.reschedule,
            appointment_id=request.appointment_id,
            expected_version=request.expected_version,
            period=period,
            practitioner_id=request.practitioner_id,
            reason=request.reason,
        )
        return pb.RescheduleResponse(
            appointment=_appointment(row, decision.redact_clinical)
        )

    async def Cancel(
        self, request: pb.CancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelResponse:
        requests.cancel(request)
        decision = await self._authorize_appointment(request.appointment_id, WRITE)
        row = await self._run(
            self._scheduler.cancel,
            appointment_id=request.appointment_id,
            expected_version=request.expected_version,
            cancelled_by=convert.CANCELLED_BY[request.cancelled_by],
            reason=request.reason,
        )
        return pb.CancelResponse(
            appointment=_appointment(row, decision.redact_clinical)
        )

    async def CheckIn(
        self, request: pb.CheckInRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckInResponse:
        requests.appointment_change(request)
        decision = await self._authorize_appointment(request.appointment_id, WRITE)
        row = await self._run(
            self._scheduler.check_in,
            appointment_id=request.appointment_id,
            expected_version=request.expected_version,
        )
        return pb.CheckInResponse(
            appointment=_appointment(row, decision.redact_clinical)
        )

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteResponse:
        requests.appointment_change(request)
        decision = await self._authorize_appointment(request.appointment_id, WRITE)
        row = await self._run(
            self._scheduler.complete,
            appointment_id=request.appointment_id,
            expected_version=request.expected_version,
        )
        logger.info(
            "appointment completed",
            extra={"appointment_id": row.id, "encounter_id": row.encounter_id},
        )
        return pb.CompleteResponse(
            appointment=_appointment(row, decision.redact_clinical)
        )

    async def MarkNoShow(
        self, request: pb.MarkNoShowRequest, context: grpc.aio.ServicerContext
    ) -> pb.MarkNoShowResponse:
        requests.appointment_change(request)
        decision = await self._authorize_appointment(request.appointment_id, WRITE)
        row = await self._run(
            self._scheduler.mark_no_show,
            appointment_id=request.appointment_id,
            expected_version=request.expected_version,
        )
        return pb.MarkNoShowResponse(
            appointment=_appointment(row, decision.redact_clinical)
        )

    async def GetAppointment(
        self, request: pb.GetAppointmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAppointmentResponse:
        v = Violations()
        requests.require_id(v, request.appointment_id, "appointment_id")
        v.check()
        row = await self._load_appointment(request.appointment_id)
        decision = await authorize(
            self._authorizer, action=READ, patient_id=row.patient_id
        )
        return pb.GetAppointmentResponse(
            appointment=_appointment(row, decision.redact_clinical)
        )

    async def ListAppointments(
        self, request: pb.ListAppointmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAppointmentsResponse:
        window, offset, limit = requests.list_appointments(request)
        decision = await authorize(
            self._authorizer, action=READ, patient_id=request.patient_id
        )
        rows, total = await self._run(
            store.list_appointments,
            patient_id=request.patient_id,
            practitioner_id=request.practitioner_id,
            window=window,
            offset=offset,
            limit=limit,
        )
        if request.patient_id:
            appointments = [_appointment(row, decision.redact_clinical) for row in rows]
        else:
            appointments = await self._readable_appointments(rows)
        return pb.ListAppointmentsResponse(
            appointments=appointments,
            page=types_pb2.PageResponse(
                next_page_token=requests.next_page_token(offset, limit, total),
                total_size=total,
            ),
        )

    async def _readable_appointments(
        self, rows: list[AppointmentRow]
    ) -> list[pb.Appointment]:
        """Keep the appointments whose patient the caller may read.

        A list by practitioner spans many patients, and the role check before
        it covers none of them, so each patient is decided, and audited, here.
        """
        # NOTE: a page can come back shorter than page_size, and total_size
        # still counts the appointments that were removed.
        if not rows:
            return []
        decisions = await authorize_patients(
            self._authorizer,
            action=READ,
            patient_ids=[row.patient_id for row in rows],
        )
        return [
            _appointment(row, decisions[row.patient_id].redact_clinical)
            for row in rows
            if decisions[row.patient_id].allowed
        ]

    async def _load_appointment(self, appointment_id: str) -> AppointmentRow:
        row = await self._run(_load, AppointmentRow, appointment_id)
        if row is None:
            raise AppointmentNotFound(
                f"appointment {appointment_id} not found",
                reason="APPOINTMENT_NOT_FOUND",
            )
        return row

    async def _authorize_appointment(self, appointment_id: str, action: str) -> Any:
        row = await self._load_appointment(appointment_id)
        return await authorize(
            self._authorizer, action=action, patient_id=row.patient_id
        )

    # --- admissions ---------------------------------------------------------

    async def Admit(
        self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdmitResponse:
        data = requests.admit(request)
        await authorize(self._authorizer, action=WRITE, patient_id=request.patient_id)
        row = await self._run(
            self._scheduler.admit, data, requests.idempotency("Admit", request)
        )
        logger.info(
            "patient admitted",
            extra={"admission_id": row.id, "emergency": row.emergency},
        )
        return pb.AdmitResponse(admission=convert.admission_message(row))

    async def Discharge(
        self, request: pb.DischargeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DischargeResponse:
        v = Violations()
        requests.require_id(v, request.admission_id, "admission_id")
        requests.expected_version(v, request.expected_version)
        v.check()
        admission = await self._load_admission(request.admission_id)
        await authorize(self._authorizer, action=WRITE, patient_id=admission.patient_id)
        row = await self._run(
            self._scheduler.discharge,
            admission_id=request.admission_id,
            expected_version=request.expected_version,
        )
        return pb.DischargeResponse(admission=convert.admission_message(row))

    async def GetAdmission(
        self, request: pb.GetAdmissionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAdmissionResponse:
        v = Violations()
        requests.require_id(v, request.admission_id, "admission_id")
        v.check()
        row = await self._load_admission(request.admission_id)
        await authorize(self._authorizer, action=READ, patient_id=row.patient_id)
        return pb.GetAdmissionResponse(admission=convert.admission_message(row))

    async def _load_admission(self, admission_id: str) -> AdmissionRow:
        row = await self._run(_load, AdmissionRow, admission_id)
        if row is None:
            raise AdmissionNotFound(
                f"admission {admission_id} not found", reason="ADMISSION_NOT_FOUND"
            )
        return row

    # --- FHIR import --------------------------------------------------------

    async def ImportFhir(
        self, request: pb.ImportFhirRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportFhirResponse:
        bundle = _parse_bundle(request.bundle)
        await authorize(self._authorizer, action=ADMIN)
        outcomes = await self._run(
            self._importer.import_bundle,
            bundle,
            dict(request.resolved_references),
            request.source,
        )
        logger.info(
            "FHIR bundle imported",
            extra={"source": request.source, "resources": len(outcomes)},
        )
        return pb.ImportFhirResponse(outcomes=outcomes)


def _parse_bundle(payload: bytes) -> dict[str, Any]:
    try:
        bundle = json.loads(payload)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and integers
    # longer than Python's int conversion limit; RecursionError deep nesting.
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(
            f"bundle is not valid JSON: {exc}",
            violations=[],
            reason="INVALID_BUNDLE",
        ) from None
    v = Violations()
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        v.add("bundle", "must be a FHIR R4 Bundle (resourceType Bundle)")
    elif not isinstance(bundle.get("entry", []), list):
        v.add("bundle", "Bundle.entry must be a list")
    v.check()
    return bundle


def _appointment(row: AppointmentRow, redact_clinical: bool) -> pb.Appointment:
    message = convert.appointment_message(row)
    if redact_clinical:
        # The visit reason can name a condition: minimum necessary.
        message.ClearField("reason")
    return message


def _appointments(rows: list[AppointmentRow]) -> list[pb.Appointment]:
    return [convert.appointment_message(row) for row in rows]


def _load(session: Session, model: type[T], row_id: str) -> T | None:
    return session.get(model, row_id)


def _practitioner_by_identifier(
    session: Session, identifier: types_pb2.Identifier
) -> tuple[list[PractitionerRow], int]:
    holder = store.find_by_identifier(
        session, "Practitioner", identifier.system, identifier.value
    )
    row = session.get(PractitionerRow, holder) if holder else None
    return ([row], 1) if row is not None else ([], 0)


def _load_schedule(
    session: Session, scheduler: Scheduler, practitioner_id: str
) -> tuple[ScheduleRow, list[store.ScheduleExceptionRow]]:
    schedule = get_schedule(session, practitioner_id)
    exceptions = scheduler.future_exceptions(session, practitioner_id)
    return schedule, exceptions
