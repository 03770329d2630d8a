"""A day in a hospital, walked through the ingress with people's tokens.

Every call goes through the grpc-web/gRPC ingress, its JWT check and the
services' sidecars, as a hospital system's would. Each flow sends its own W3C
``traceparent`` so that its trace id can be printed and looked up afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from hin.appointments.v1 import appointments_service_pb2 as appt
from hin.appointments.v1 import appointments_service_pb2_grpc as appt_grpc
from hin.authz.v1 import authz_service_pb2 as authz
from hin.authz.v1 import authz_service_pb2_grpc as authz_grpc
from hin.authz.v1 import events_pb2 as authz_events
from hin.billing.v1 import billing_service_pb2 as billing
from hin.billing.v1 import billing_service_pb2_grpc as billing_grpc
from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as lab_events
from hin.labs.v1 import labs_service_pb2 as labs
from hin.labs.v1 import labs_service_pb2_grpc as labs_grpc
from hin.notify.v1 import events_pb2 as notify_events
from hin.notify.v1 import notify_service_pb2 as notify
from hin.notify.v1 import notify_service_pb2_grpc as notify_grpc
from hin.records.v1 import records_service_pb2 as records
from hin.records.v1 import records_service_pb2_grpc as records_grpc
from mesh.network.devkeys import mint_token
from mesh.network.mllp import MllpClient

logger = logging.getLogger(__name__)

T = TypeVar("T")

HOSPITAL_A = "hosp-a"
HOSPITAL_B = "hosp-b"
POTASSIUM = types.Coding(
    system="http://loinc.org",
    code="2823-3",
    display="Potassium [Moles/volume] in Serum or Plasma",
)
VISIT_GENERAL = types.Coding(
    system="urn:hin:code:visit-type", code="visit-general", display="General visit"
)
#: Egyptian national ID: century 2 (1900s), born 1990-01-01, governorate 01
#: (Cairo), sequence 1235 (odd 13th digit: male), check digit 7.
NATIONAL_ID = "29001010112357"
MRN = "A-000123"
#: Seconds notify waits for an acknowledgement before escalating, in the demo.
ESCALATION_SECONDS = 4


class DemoFailure(RuntimeError):
    """A step of the hospital day did not do what it should."""


@dataclass
class DayResult:
    """Ids, amounts, notifications and trace ids of the day, for the report."""

    patient_id: str = ""
    appointment_id: str = ""
    admission_id: str = ""
    order_id: str = ""
    critical_result_id: str = ""
    critical_ack: str = ""
    notifications: dict[str, list[str]] = field(default_factory=dict)
    escalated_to: str = ""
    charges_minor_units: int = 0
    invoice_total_minor_units: int = 0
    patient_share_minor_units: int = 0
    payer_share_minor_units: int = 0
    claim_status: str = ""
    denied_before_glass: bool = False
    emergency_read_ok: bool = False
    access_log_entries: int = 0
    access_log_subjects: list[str] = field(default_factory=list)
    traces: dict[str, str] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)


class Person:
    """A person with a development token and a trace context per flow."""

    def __init__(
        self, state_dir: Path, subject: str, role: str, org: str, **claims: str
    ):
        self.subject = subject
        self.token = mint_token(
            state_dir,
            subject=subject,
            roles=[role],
            organization_id=org,
            practitioner_id=claims.get("practitioner_id", ""),
            patient_id=claims.get("patient_id", ""),
            lifetime_seconds=4 * 3600,
        )

    def metadata(self, trace_id: str = "") -> tuple[tuple[str, str], ...]:
        items = [("authorization", f"Bearer {self.token}")]
        if trace_id:
            items.append(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"))
        return tuple(items)


class HospitalDay:
    """Walk the day's flows against a running network."""

    def __init__(
        self,
        *,
        state_dir: Path,
        channel: grpc.aio.Channel,
        mllp_address: str,
        say: Callable[[str], None] = print,
    ) -> None:
        self._state = state_dir
        self._say = say
        self._mllp = mllp_address
        self.records = records_grpc.RecordsServiceStub(channel)
        self.appointments = appt_grpc.AppointmentsServiceStub(channel)
        self.labs = labs_grpc.LabsServiceStub(channel)
        self.billing = billing_grpc.BillingServiceStub(channel)
        self.authz = authz_grpc.AuthzServiceStub(channel)
        self.notify = notify_grpc.NotifyServiceStub(channel)
        self.result = DayResult()
        self.admin = Person(state_dir, "admin-001", "administrator", HOSPITAL_A)

    def _step(self, text: str) -> None:
        self.result.steps.append(text)
        self._say(f"  - {text}")

    def _trace(self, flow: str) -> str:
        trace_id = secrets.token_hex(16)
        self.result.traces[flow] = trace_id
        return trace_id

    async def run(self) -> DayResult:
        """Run every flow in order; raise DemoFailure when one goes wrong."""
        staff = await self.set_up_staff()
        await self.register_and_book(staff)
        await self._emergency_admission(staff)
        await self._order_and_critical_result(staff)
        await self._complete_and_bill(staff)
        await self._consent_and_break_glass(staff)
        await self._patient_reads_access_log()
        return self.result

    # Staff ------------------------------------------------------------------

    async def set_up_staff(self) -> dict[str, Any]:
        """Register practitioners, a schedule, the on-call roster and tokens."""
        meta = self.admin.metadata()
        staff: dict[str, Any] = {}
        for key, family, given, org, specialty in (
            ("internist", "Mansour", "Laila", HOSPITAL_A, "Internal medicine"),
            ("emergency", "Haddad", "Omar", HOSPITAL_A, "Emergency medicine"),
            ("head", "Fahmy", "Nadia", HOSPITAL_A, "Head of internal medicine"),
            ("privacy", "Kamel", "Sherif", HOSPITAL_A, "Privacy office"),
            ("outside", "Saleh", "Youssef", HOSPITAL_B, "Emergency medicine"),
        ):
            response = await self.appointments.RegisterPractitioner(
                appt.RegisterPractitionerRequest(
                    idempotency_key=f"demo-practitioner-{key}",
                    identifiers=[
                        types.Identifier(system=f"urn:hin:id:staff:{org}", value=key)
                    ],
                    names=[
                        types.HumanName(family=family, given=[given], prefix=["Dr."])
                    ],
                    organization_id=org,
                    specialty=types.Coding(display=specialty),
                ),
                metadata=meta,
            )
            staff[key] = response.practitioner.practitioner_id
        staff["people"] = {
            "receptionist": Person(self._state, "rec-001", "receptionist", HOSPITAL_A),
            "nurse": Person(self._state, "nurse-001", "nurse", HOSPITAL_A),
            "internist": Person(
                self._state,
                "dr-001",
                "doctor",
                HOSPITAL_A,
                practitioner_id=staff["internist"],
            ),
            "emergency": Person(
                self._state,
                "dr-002",
                "doctor",
                HOSPITAL_A,
                practitioner_id=staff["emergency"],
            ),
            "outside": Person(
                self._state,
                "dr-101",
                "doctor",
                HOSPITAL_B,
                practitioner_id=staff["outside"],
            ),
            "clerk": Person(self._state, "bill-001", "billing_clerk", HOSPITAL_A),
            "privacy": Person(
                self._state,
                "po-001",
                "privacy_officer",
                HOSPITAL_A,
                practitioner_id=staff["privacy"],
            ),
        }

        rules = [
            appt.WeeklyRule(
                weekday=weekday, start_time="08:00", end_time="16:00", slot_minutes=15
            )
            for weekday in appt.Weekday.values()
            if weekday != appt.WEEKDAY_UNSPECIFIED
        ]
        await self.appointments.SetWeeklySchedule(
            appt.SetWeeklyScheduleRequest(
                practitioner_id=staff["internist"],
                organization_id=HOSPITAL_A,
                rules=rules,
                reason="clinic hours",
            ),
            metadata=meta,
        )
        await self.notify.SetOnCallRoster(
            notify.SetOnCallRosterRequest(
                roster=notify.OnCallRoster(
                    organization_id=HOSPITAL_A,
                    on_call_practitioner_ids=[staff["emergency"]],
                    department_head_practitioner_id=staff["head"],
                )
            ),
            metadata=meta,
        )
        await self.notify.SetRoleMembers(
            notify.SetRoleMembersRequest(
                organization_id=HOSPITAL_A,
                role="privacy_officer",
                practitioner_ids=[staff["privacy"]],
            ),
            metadata=meta,
        )
        internist: Person = staff["people"]["internist"]
        await self.notify.SetPreferences(
            notify.SetPreferencesRequest(
                preferences=notify.Preferences(
                    recipient=f"practitioner:{staff['internist']}",
                    channels=[
                        notify_events.CHANNEL_IN_APP,
                        notify_events.CHANNEL_EMAIL,
                        notify_events.CHANNEL_SMS,
                    ],
                    language="ar",
                    time_zone="Africa/Cairo",
                    email="laila.mansour@hosp-a.example.org",
                    phone="+201001112223",
                )
            ),
            metadata=internist.metadata(),
        )
        self._step(
            "staff on duty: 4 practitioners at hosp-a, 1 at hosp-b; on-call roster "
            "and privacy officer set; the internist takes alerts in Arabic by "
            "app, e-mail and SMS"
        )
        return staff

    # Registration and booking --------------------------------------------------

    async def register_and_book(self, staff: dict[str, Any]) -> None:
        """Register the demo patient and book a visit with the internist."""
        receptionist: Person = staff["people"]["receptionist"]
        trace_id = self._trace("register patient")
        response = await self.records.RegisterPatient(
            records.RegisterPatientRequest(
                idempotency_key="demo-register-ahmed",
                patient=records.PatientDemographics(
                    identifiers=[
                        types.Identifier(
                            system="urn:hin:id:eg-national-id",
                            value=NATIONAL_ID,
                            type_code="NI",
                        ),
                        types.Identifier(
                            system=f"urn:hin:id:mrn:{HOSPITAL_A}",
                            value=MRN,
                            type_code="MR",
                        ),
                        types.Identifier(
                            system="urn:hin:id:member:misr-insurance",
                            value="MI-7781-2290",
                            type_code="MB",
                        ),
                    ],
                    names=[
                        types.HumanName(
                            use="official",
                            family="عبد الرحمن",
                            given=["أحمد", "محمود"],
                            text="أحمد محمود عبد الرحمن",
                        ),
                        types.HumanName(
                            use="usual",
                            family="Abdelrahman",
                            given=["Ahmed", "Mahmoud"],
                        ),
                    ],
                    birth_date=types.Date(year=1990, month=1, day=1),
                    gender=types.GENDER_MALE,
                    telecom=[
                        types.ContactPoint(
                            system="phone", value="+201012345678", use="mobile"
                        ),
                        types.ContactPoint(
                            system="email", value="ahmed.abdelrahman@example.org"
                        ),
                    ],
                    addresses=[
                        types.Address(
                            lines=["12 Tahrir St"], city="Cairo", country="EG"
                        )
                    ],
                    managing_organization_id=HOSPITAL_A,
                ),
                allow_possible_duplicate=True,
            ),
            metadata=receptionist.metadata(trace_id),
        )
        self.result.patient_id = patient_id = response.patient.patient_id
        self._step(
            f"receptionist registered patient {patient_id} (Arabic name, national ID)"
        )

        # Search results hold only patients the caller may see, and svc_authz
        # learns a new patient's hospital from the PatientRegistered event.
        try:
            await _wait_for(
                lambda: self.records.SearchPatients(
                    records.SearchPatientsRequest(name="احمد"),
                    metadata=receptionist.metadata(),
                ),
                lambda found: patient_id in [p.patient_id for p in _patients_of(found)],
                timeout=20,
                what="the search",
            )
        except DemoFailure:
            raise DemoFailure(
                "search for احمد did not find the patient registered as أحمد"
            ) from None
        self._step("search for 'احمد' finds 'أحمد' (Arabic normalization)")

        trace_id = self._trace("book visit")
        window_start = datetime.now(UTC) + timedelta(days=1)
        slots = await _retry_not_found(
            lambda: self.appointments.FindSlots(
                appt.FindSlotsRequest(
                    practitioner_id=staff["internist"],
                    window=types.Period(
                        start=_ts(window_start),
                        end=_ts(window_start + timedelta(days=7)),
                    ),
                ),
                metadata=receptionist.metadata(trace_id),
            )
        )
        if not slots.slots:
            raise DemoFailure("no free slot for the internist in the coming week")
        slot = slots.slots[0]
        booked = await _retry_patient_unknown(
            lambda: self.appointments.Book(
                appt.BookRequest(
                    idempotency_key="demo-book-ahmed",
                    patient_id=patient_id,
                    practitioner_id=staff["internist"],
                    period=slot.period,
                    service_type=VISIT_GENERAL,
                    reason="follow-up of hypertension",
                ),
                metadata=receptionist.metadata(trace_id),
            )
        )
        self.result.appointment_id = booked.appointment.appointment_id
        self._step(f"receptionist booked visit {self.result.appointment_id}")

    # Emergency admission --------------------------------------------------------

    async def _emergency_admission(self, staff: dict[str, Any]) -> None:
        # The emergency department's registration desk admits; the admission
        # is what gives the attending doctor a care relationship.
        desk: Person = staff["people"]["receptionist"]
        trace_id = self._trace("emergency admission")
        admitted = await self.appointments.Admit(
            appt.AdmitRequest(
                idempotency_key="demo-admit-ahmed",
                patient_id=self.result.patient_id,
                organization_id=HOSPITAL_A,
                ward="Emergency",
                emergency=True,
                attending_practitioner_id=staff["emergency"],
                reason="chest pain and palpitations",
            ),
            metadata=desk.metadata(trace_id),
        )
        self.result.admission_id = admitted.admission.admission_id
        self._step(f"emergency admission {self.result.admission_id} without a slot")

    # Lab order, critical result, escalation, acknowledgement ---------------------

    async def _order_and_critical_result(self, staff: dict[str, Any]) -> None:
        await self.place_order(staff)
        doctor: Person = staff["people"]["internist"]
        emergency: Person = staff["people"]["emergency"]

        doctor_inbox = Inbox(self.notify, f"practitioner:{staff['internist']}", doctor)
        on_call_inbox = Inbox(
            self.notify, f"practitioner:{staff['emergency']}", emergency
        )
        await doctor_inbox.start()
        await on_call_inbox.start()
        try:
            await self._send_critical_hl7(staff)
            alert = await doctor_inbox.wait_for(_is_critical, timeout=30)
            self.result.critical_result_id = alert.attributes.get("result_id", "")
            self._step(
                f"doctor's stream received the critical alert {alert.notification_id}"
            )
            escalation = await on_call_inbox.wait_for(
                _is_critical, timeout=ESCALATION_SECONDS * 6
            )
            self.result.escalated_to = escalation.recipient
            self._step(f"unacknowledged, it escalated to {escalation.recipient}")

            if not self.result.critical_result_id:
                self.result.critical_result_id = await self._find_critical_result(
                    doctor
                )
            trace_id = self._trace("acknowledge critical result")
            ack = await self.labs.AcknowledgeCriticalResult(
                labs.AcknowledgeCriticalResultRequest(
                    idempotency_key="demo-ack-potassium",
                    result_id=self.result.critical_result_id,
                    note="patient recalled, repeat sample and ECG ordered",
                ),
                metadata=doctor.metadata(trace_id),
            )
            self.result.critical_ack = ack.acknowledgement.acknowledged_by
            self._step("doctor acknowledged the critical result; escalation stops")
        finally:
            self.result.notifications[doctor_inbox.recipient] = doctor_inbox.kinds()
            self.result.notifications[on_call_inbox.recipient] = on_call_inbox.kinds()
            await doctor_inbox.stop()
            await on_call_inbox.stop()

    async def place_order(self, staff: dict[str, Any]) -> str:
        """Order a STAT potassium for the demo patient as the internist."""
        doctor: Person = staff["people"]["internist"]
        trace_id = self._trace("order labs")
        order = await _retry_denied(
            lambda: self.labs.PlaceOrder(
                labs.PlaceOrderRequest(
                    idempotency_key="demo-order-potassium",
                    patient_id=self.result.patient_id,
                    ordering_practitioner_id=staff["internist"],
                    organization_id=HOSPITAL_A,
                    tests=[POTASSIUM],
                    priority=lab_events.PRIORITY_STAT,
                ),
                metadata=doctor.metadata(trace_id),
            )
        )
        self.result.order_id = order.order.order_id
        self._step(f"doctor ordered a STAT potassium, order {self.result.order_id}")
        return self.result.order_id

    async def _send_critical_hl7(self, staff: dict[str, Any]) -> None:
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
        segments = [
            f"MSH|^~\\&|LIS|HOSP-A-LAB|HIN|HOSP-A|{now}||ORU^R01^ORU_R01|DEMO-K-0001|P|2.5.1",
            f"PID|1||{MRN}^^^HOSPA^MR||Abdelrahman^Ahmed||19900101|M",
            f"ORC|RE|{self.result.order_id}|LAB-DEMO-1||CM||||{now}|||"
            f"{staff['internist']}^Mansour^Laila",
            f"OBR|1|{self.result.order_id}|LAB-DEMO-1|2823-3^Potassium^LN|||{now}|||||||||"
            f"{staff['internist']}^Mansour^Laila||||||{now}|||F",
            f"OBX|1|NM|2823-3^Potassium^LN||6.9|mmol/L|3.5-5.1|HH|||F|||{now}",
        ]
        message = "\r".join(segments).encode() + b"\r"
        ack = await asyncio.to_thread(_send_one, self._mllp, message)
        if ack.code != "AA":
            raise DemoFailure(
                f"lab system's critical result was not accepted: {ack.code} {ack.error}"
            )
        self._step("lab system sent ORU^R01 with potassium 6.9 mmol/L over MLLP: AA")

    async def _find_critical_result(self, doctor: Person) -> str:
        listed = await self.labs.ListResults(
            labs.ListResultsRequest(
                patient_id=self.result.patient_id, loinc_code="2823-3"
            ),
            metadata=doctor.metadata(),
        )
        for result in listed.results:
            if result.critical:
                return result.result_id
        raise DemoFailure(
            "the critical potassium result is not in the patient's results"
        )

    # Visit completion and billing ---------------------------------------------

    async def _complete_and_bill(self, staff: dict[str, Any]) -> None:
        receptionist: Person = staff["people"]["receptionist"]
        clerk: Person = staff["people"]["clerk"]
        patient_id = self.result.patient_id

        await self.billing.CreatePolicy(
            billing.CreatePolicyRequest(
                idempotency_key="demo-policy-ahmed",
                patient_id=patient_id,
                payer_id="misr-insurance",
                member_id="MI-7781-2290",
                plan_code="GOLD",
                coverage_basis_points=8000,
                copay=types.Money(currency="EGP", minor_units=5000),
                deductible=types.Money(currency="EGP", minor_units=0),
                period=types.Period(
                    start=_ts(datetime.now(UTC) - timedelta(days=365)),
                    end=_ts(datetime.now(UTC) + timedelta(days=365)),
                ),
            ),
            metadata=clerk.metadata(),
        )
        self._step(
            "billing clerk recorded the patient's insurance: 80% cover, 50 EGP copay"
        )

        trace_id = self._trace("complete visit")
        current = await self.appointments.GetAppointment(
            appt.GetAppointmentRequest(appointment_id=self.result.appointment_id),
            metadata=receptionist.metadata(trace_id),
        )
        checked_in = await self.appointments.CheckIn(
            appt.CheckInRequest(
                appointment_id=self.result.appointment_id,
                expected_version=current.appointment.version,
            ),
            metadata=receptionist.metadata(trace_id),
        )
        await self.appointments.Complete(
            appt.CompleteRequest(
                appointment_id=self.result.appointment_id,
                expected_version=checked_in.appointment.version,
            ),
            metadata=receptionist.metadata(trace_id),
        )
        self._step("patient checked in, visit completed")

        charges = await _wait_for(
            lambda: self._charges(clerk),
            lambda found: len(found) >= 2,
            timeout=30,
            what="the visit charge and the lab charge",
        )
        self.result.charges_minor_units = sum(c.amount.minor_units for c in charges)
        self._step(
            f"billing posted {len(charges)} charges from events: "
            f"{format_egp(self.result.charges_minor_units)}"
        )

        invoice = await self.billing.IssueInvoice(
            billing.IssueInvoiceRequest(
                idempotency_key="demo-invoice-ahmed", patient_id=patient_id
            ),
            metadata=clerk.metadata(),
        )
        self.result.invoice_total_minor_units = invoice.invoice.total.minor_units
        self.result.patient_share_minor_units = (
            invoice.invoice.patient_responsibility.minor_units
        )
        self.result.payer_share_minor_units = (
            invoice.invoice.payer_responsibility.minor_units
        )
        claim = await self.billing.CreateClaim(
            billing.CreateClaimRequest(
                idempotency_key="demo-claim-ahmed",
                invoice_id=invoice.invoice.invoice_id,
            ),
            metadata=clerk.metadata(),
        )
        submitted = await self.billing.SubmitClaim(
            billing.SubmitClaimRequest(
                claim_id=claim.claim.claim_id, expected_version=claim.claim.version
            ),
            metadata=clerk.metadata(),
        )
        self.result.claim_status = billing.ClaimStatus.Name(submitted.claim.status)
        self._step(
            f"invoice {format_egp(self.result.invoice_total_minor_units)}: "
            "patient pays "
            f"{format_egp(self.result.patient_share_minor_units)}, insurer "
            f"{format_egp(self.result.payer_share_minor_units)}; "
            f"claim {self.result.claim_status}"
        )

    async def _charges(self, clerk: Person) -> list[Any]:
        listed = await self.billing.ListCharges(
            billing.ListChargesRequest(patient_id=self.result.patient_id),
            metadata=clerk.metadata(),
        )
        return list(listed.charges)

    # Consent and break the glass ------------------------------------------------

    async def _consent_and_break_glass(self, staff: dict[str, Any]) -> None:
        patient = Person(
            self._state,
            "patient-ahmed",
            "patient",
            HOSPITAL_A,
            patient_id=self.result.patient_id,
        )
        outside: Person = staff["people"]["outside"]
        await self.authz.GrantConsent(
            authz.GrantConsentRequest(
                patient_id=self.result.patient_id,
                grantee_organization_id=HOSPITAL_B,
                purposes=[authz_events.PURPOSE_TREATMENT],
                expires_at=_ts(datetime.now(UTC) + timedelta(days=30)),
                idempotency_key="demo-consent-hosp-b",
            ),
            metadata=patient.metadata(),
        )
        self._step("patient consented to share with hosp-b for treatment (30 days)")

        try:
            await self.records.GetPatient(
                records.GetPatientRequest(patient_id=self.result.patient_id),
                metadata=outside.metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise
            self.result.denied_before_glass = True
        self._step(
            "doctor at hosp-b without a care relationship: "
            + ("denied" if self.result.denied_before_glass else "NOT denied")
        )

        trace_id = self._trace("break the glass")
        await self.authz.BreakGlass(
            authz.BreakGlassRequest(
                patient_id=self.result.patient_id,
                reason="patient unconscious in hosp-b emergency room; allergy check",
                duration_minutes=30,
                idempotency_key="demo-break-glass",
            ),
            metadata=outside.metadata(trace_id),
        )
        await self.records.GetPatient(
            records.GetPatientRequest(patient_id=self.result.patient_id),
            metadata=outside.metadata(trace_id),
        )
        self.result.emergency_read_ok = True
        self._step(
            "after breaking the glass with a reason, the read is allowed and flagged"
        )

    async def _patient_reads_access_log(self) -> None:
        patient = Person(
            self._state,
            "patient-ahmed",
            "patient",
            HOSPITAL_A,
            patient_id=self.result.patient_id,
        )
        log = await self.authz.ListAccessLog(
            authz.ListAccessLogRequest(
                patient_id=self.result.patient_id, page=types.PageRequest(page_size=500)
            ),
            metadata=patient.metadata(),
        )
        self.result.access_log_entries = len(log.records)
        self.result.access_log_subjects = sorted({_subject_of(r) for r in log.records})
        self._step(
            f"patient read the access log: {len(log.records)} entries by "
            f"{', '.join(self.result.access_log_subjects)}"
        )


class Inbox:
    """A person's Subscribe stream, collected in the background."""

    def __init__(
        self, stub: notify_grpc.NotifyServiceStub, recipient: str, person: Person
    ):
        self.recipient = recipient
        self._stub = stub
        self._person = person
        self.received: list[Any] = []
        self._arrived = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read())
        await asyncio.sleep(0.2)

    async def _read(self) -> None:
        call = self._stub.Subscribe(
            notify.SubscribeRequest(recipient=self.recipient),
            metadata=self._person.metadata(),
        )
        async for item in call:
            async with self._arrived:
                self.received.append(item.notification)
                self._arrived.notify_all()

    async def wait_for(
        self, predicate: Callable[[Any], bool], *, timeout: float
    ) -> Any:
        deadline = time.monotonic() + timeout
        async with self._arrived:
            while True:
                for item in self.received:
                    if predicate(item):
                        return item
                if self._task is not None and self._task.done():
                    error = self._task.exception()
                    raise DemoFailure(f"stream of {self.recipient} ended: {error}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DemoFailure(f"nothing expected arrived for {self.recipient}")
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    continue

    def kinds(self) -> list[str]:
        return [notify.NotificationKind.Name(n.kind) for n in self.received]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _send_one(address: str, message: bytes) -> Any:
    with MllpClient.connect(address) as client:
        return client.send(message)


def _is_critical(notification: Any) -> bool:
    return notification.priority == notify.NOTIFICATION_PRIORITY_URGENT


def _patients_of(found: Any) -> list[Any]:
    for name in ("patients", "matches", "results"):
        if hasattr(found, name):
            items = list(getattr(found, name))
            return [getattr(i, "patient", i) for i in items]
    return []


def _subject_of(record: Any) -> str:
    subject = getattr(record, "subject", None)
    return getattr(subject, "subject", subject) or "?"


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def format_egp(minor_units: int) -> str:
    sign = "-" if minor_units < 0 else ""
    pounds, piastres = divmod(abs(minor_units), 100)
    return f"{sign}{pounds:,}.{piastres:02d} EGP"


async def _retry(
    call: Callable[[], Awaitable[T]], codes: set[grpc.StatusCode], timeout: float = 20
) -> T:
    """Repeat ``call`` while it fails with one of ``codes`` (events in flight)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in codes or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.25)


async def _retry_denied(call: Callable[[], Awaitable[T]]) -> T:
    # The care relationship is built by authz from the booking event.
    return await _retry(call, {grpc.StatusCode.PERMISSION_DENIED})


async def _retry_patient_unknown(call: Callable[[], Awaitable[T]]) -> T:
    # Appointments learns of a new patient from the PatientRegistered event.
    return await _retry(
        call, {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
    )


async def _retry_not_found(call: Callable[[], Awaitable[T]]) -> T:
    return await _retry(call, {grpc.StatusCode.NOT_FOUND})


async def _wait_for(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise DemoFailure(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.5)
