"""Read ORU^R01 results and ORM^O01 / OML^O21 orders out of decoded messages.

Reading is all or nothing: the first invalid field raises Hl7Error with its
location, and nothing of the message is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from svc_labs.hl7v2.er7 import Message, Segment
from svc_labs.hl7v2.errors import (
    CODE_REQUIRED_FIELD_MISSING,
    CODE_SEGMENT_SEQUENCE_ERROR,
    CODE_TABLE_VALUE_NOT_FOUND,
    CODE_UNSUPPORTED_EVENT_CODE,
    CODE_UNSUPPORTED_MESSAGE_TYPE,
    ErrorLocation,
    Hl7Error,
)
from svc_labs.hl7v2.fields import (
    optional_time,
    read_coding,
    read_observation,
    read_patient_identifiers,
)

#: Message types the listener stores, by MSH-9.1, with their accepted MSH-9.2.
#: A bare "ORU" without a trigger event is how HL7 v2.1 and v2.2 senders
#: write an unsolicited result, so it counts as R01.
SUPPORTED_TRIGGERS: Mapping[str, frozenset[str]] = {
    "ORU": frozenset({"R01", ""}),
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21"}),
}

#: ORC-7.6 / OBR-5 / TQ1-9 priority codes (HL7 table 0485 subset).
PRIORITY_CODES: Mapping[str, events.Priority.ValueType] = {
    "S": events.Priority.PRIORITY_STAT,
    "A": events.Priority.PRIORITY_URGENT,
    "P": events.Priority.PRIORITY_URGENT,
    "C": events.Priority.PRIORITY_URGENT,
    "R": events.Priority.PRIORITY_ROUTINE,
}


@dataclass
class OrderGroup:
    """One order (ORC and/or OBR) and the results reported under it."""

    order: pb.LabOrder
    #: Filler order number (OBR-3), used with the placer number to find a
    #: result's earlier versions.
    filler_order_number: str = ""
    results: list[events.TestResult] = field(default_factory=list)
    #: Per result: test system, code and OBX-4 sub-id, which identify the
    #: observation within its order across messages.
    observation_keys: list[str] = field(default_factory=list)


@dataclass
class PatientGroup:
    """Orders and results under one PID segment."""

    #: Occurrence of the PID segment in the message, from 1.
    pid_sequence: int
    identifiers: list[types.Identifier]
    orders: list[OrderGroup] = field(default_factory=list)


@dataclass
class InboundMessage:
    """Content of one accepted message: header fields and patient groups."""

    message_type: str
    trigger: str
    control_id: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    version: str
    sent_at: datetime | None
    patients: list[PatientGroup]


@dataclass(frozen=True)
class Header:
    """MSH fields that an ACK echoes, read even from a rejected message."""

    control_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    trigger: str = ""
    version: str = ""
    processing_id: str = ""
    #: MSH-18 as sent, for example "8859/1"; empty means ASCII.
    character_set: str = ""


@dataclass(frozen=True)
class ReadingRules:
    """Settings that reading a message depends on."""

    #: Sending facility (MSH-4.1) -> zone of its local timestamps.
    facility_zones: Mapping[str, ZoneInfo]
    default_zone: ZoneInfo
    #: Assigning authority (PID-3.4.1 or PID-3.4.2) -> identifier system.
    identifier_systems: Mapping[str, str]

    def zone_for(self, facility: str) -> ZoneInfo:
        return self.facility_zones.get(facility, self.default_zone)


def read_header(message: Message) -> Header:
    """Read the MSH fields an acknowledgment echoes."""
    msh = message.msh
    return Header(
        control_id=msh.component(10).strip(),
        sending_application=msh.component(3),
        sending_facility=msh.component(4).strip(),
        receiving_application=msh.component(5),
        receiving_facility=msh.component(6),
        message_type=msh.component(9, 1).strip().upper(),
        trigger=msh.component(9, 2).strip().upper(),
        version=msh.component(12).strip(),
        processing_id=msh.component(11).strip(),
        character_set=msh.component(18).strip().upper(),
    )


def check_header(header: Header) -> None:
    """Reject a message whose MSH lacks what storing it requires.

    Raises:
        Hl7Error: MSH-9 or MSH-10 is missing, or the type is not supported.
    """
    if not header.message_type:
        raise _msh_error("message type is required", 9, CODE_REQUIRED_FIELD_MISSING)
    triggers = SUPPORTED_TRIGGERS.get(header.message_type)
    if triggers is None:
        raise _msh_error(
            f"unsupported message type {header.message_type}; this listener "
            "accepts ORU^R01, ORM^O01 and OML^O21",
            9,
            CODE_UNSUPPORTED_MESSAGE_TYPE,
        )
    if header.trigger not in triggers:
        raise _msh_error(
            f"unsupported trigger event {header.trigger or '(empty)'} for "
            f"{header.message_type}; this listener accepts ORU^R01, ORM^O01 and "
            "OML^O21",
            9,
            CODE_UNSUPPORTED_EVENT_CODE,
        )
    if not header.control_id:
        raise _msh_error(
            "message control id is required; every message needs a unique "
            "MSH-10 so that a resend is recognized",
            10,
            CODE_REQUIRED_FIELD_MISSING,
        )


def read_body(message: Message, header: Header, rules: ReadingRules) -> InboundMessage:
    """Read the orders and results of a message whose header was checked.

    Raises:
        Hl7Error: a segment is out of order or a field is invalid.
    """
    zone = rules.zone_for(header.sending_facility)
    msh = message.msh
    sent_at = optional_time(msh, 7, zone)
    reader = _BodyReader(header=header, rules=rules, zone=zone, sent_at=sent_at)
    for segment in message.segments[1:]:
        reader.read(segment)
    patients = reader.finish()
    return InboundMessage(
        message_type=header.message_type,
        trigger=header.trigger,
        control_id=header.control_id,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        receiving_application=header.receiving_application,
        receiving_facility=header.receiving_facility,
        version=header.version,
        sent_at=sent_at,
        patients=patients,
    )


class _BodyReader:
    """Walk the segments after MSH and group them by PID, ORC/OBR and OBX."""

    def __init__(
        self,
        *,
        header: Header,
        rules: ReadingRules,
        zone: ZoneInfo,
        sent_at: datetime | None,
    ) -> None:
        self._header = header
        self._rules = rules
        self._zone = zone
        self._sent_at = sent_at
        self._is_result = header.message_type == "ORU"
        self._patients: list[PatientGroup] = []
        self._order: OrderGroup | None = None
        self._pending_orc: Segment | None = None
        self._last_result: events.TestResult | None = None
        self._obr_status = ""

    def read(self, segment: Segment) -> None:
        handler = {
            "PID": self._read_pid,
            "ORC": self._read_orc,
            "OBR": self._read_obr,
            "OBX": self._read_obx,
            "NTE": self._read_nte,
            "TQ1": self._read_tq1,
        }.get(segment.id)
        # Z-segments and segments this reader does not use (PV1, SPM, ...) are
        # allowed and skipped.
        if handler is not None:
            handler(segment)

    def finish(self) -> list[PatientGroup]:
        if not self._patients:
            raise Hl7Error(
                "the message has no PID segment; results and orders need a patient",
                code=CODE_SEGMENT_SEQUENCE_ERROR,
                location=None,
            )
        for patient in self._patients:
            if not patient.orders:
                raise Hl7Error(
                    "no order or result follows this PID; send ORC/OBR groups "
                    "after each PID",
                    code=CODE_SEGMENT_SEQUENCE_ERROR,
                    location=_pid_location(patient.pid_sequence),
                )
        return self._patients

    def _read_pid(self, segment: Segment) -> None:
        identifiers = read_patient_identifiers(segment, self._rules.identifier_systems)
        self._patients.append(PatientGroup(segment.sequence, identifiers))
        self._order = None
        self._pending_orc = None
        self._last_result = None

    def _current_patient(self, segment: Segment) -> PatientGroup:
        if not self._patients:
            raise Hl7Error(
                f"{segment.id} comes before any PID; send the PID segment first",
                code=CODE_SEGMENT_SEQUENCE_ERROR,
                location=segment.location(),
            )
        return self._patients[-1]

    def _read_orc(self, segment: Segment) -> None:
        patient = self._current_patient(segment)
        control = segment.component(1).strip().upper()
        # In ORU the ORC is informative and senders fill ORC-1 loosely, so the
        # order control code is checked in order messages only.
        if not self._is_result and control not in ("NW", ""):
            raise Hl7Error(
                "order control code is not supported in an order message; send "
                "NW for a new order",
                code=CODE_TABLE_VALUE_NOT_FOUND,
                location=segment.location(1),
            )
        self._pending_orc = segment
        if not self._is_result:
            # In ORM and OML, each ORC starts an order; its OBRs add the tests.
            order = self._new_order(orc=segment, obr=None)
            patient.orders.append(order)
            self._order = order

    def _read_obr(self, segment: Segment) -> None:
        patient = self._current_patient(segment)
        test = read_coding(segment, 4, self._header.sending_facility)
        if not test.code:
            raise Hl7Error(
                "universal service identifier (the ordered test) is required",
                code=CODE_REQUIRED_FIELD_MISSING,
                location=segment.location(4),
            )
        self._obr_status = segment.component(25).strip().upper()
        self._last_result = None
        if self._is_result:
            order = self._new_order(orc=self._pending_orc, obr=segment)
            self._pending_orc = None
            patient.orders.append(order)
            self._order = order
            order.order.tests.append(test)
            return
        if self._order is None:
            raise Hl7Error(
                "OBR comes before any ORC; an order message needs an ORC for "
                "each order",
                code=CODE_SEGMENT_SEQUENCE_ERROR,
                location=segment.location(),
            )
        self._order.order.tests.append(test)
        self._fill_order_from_obr(self._order, segment)

    def _read_tq1(self, segment: Segment) -> None:
        if self._order is None:
            return
        priority = PRIORITY_CODES.get(segment.component(9).strip().upper())
        if priority is not None:
            self._order.order.priority = priority

    def _read_obx(self, segment: Segment) -> None:
        if self._order is None:
            raise Hl7Error(
                "OBX comes before any OBR; each result belongs to an OBR",
                code=CODE_SEGMENT_SEQUENCE_ERROR,
                location=segment.location(),
            )
        result = read_observation(
            segment,
            facility=self._header.sending_facility,
            zone=self._zone,
            default_status=self._obr_status,
        )
        self._last_result = result
        # Observations in an order message answer ask-at-order-entry
        # questions; they are checked but not stored as results.
        if not self._is_result or result is None:
            return
        order = self._order.order
        result.ordering_practitioner_id = order.ordering_practitioner_id
        result.performing_organization_id = self._header.sending_facility
        if not result.HasField("effective_at") and order.HasField("placed_at"):
            result.effective_at.CopyFrom(order.placed_at)
        if not result.HasField("issued_at") and self._sent_at is not None:
            result.issued_at.FromDatetime(self._sent_at)
        self._order.results.append(result)
        sub_id = segment.component(4).strip()
        self._order.observation_keys.append(
            f"{result.test.system}|{result.test.code}|{sub_id}"
        )

    def _read_nte(self, segment: Segment) -> None:
        note = segment.text(3).strip("\n")
        if self._last_result is not None and note:
            self._last_result.notes.append(note)

    def _new_order(self, *, orc: Segment | None, obr: Segment | None) -> OrderGroup:
        order = pb.LabOrder(
            organization_id=self._header.sending_facility,
            status=pb.OrderStatus.ORDER_STATUS_PLACED,
            priority=events.Priority.PRIORITY_ROUTINE,
        )
        group = OrderGroup(order=order)
        if orc is not None:
            order.placer_order_number = orc.component(2).strip()
            order.ordering_practitioner_id = orc.component(12).strip()
            placed = optional_time(orc, 9, self._zone)
            if placed is not None:
                order.placed_at.FromDatetime(placed)
            priority = PRIORITY_CODES.get(orc.component(7, 6).strip().upper())
            if priority is not None:
                order.priority = priority
        if obr is not None:
            self._fill_order_from_obr(group, obr)
        if self._is_result:
            order.status = pb.OrderStatus.ORDER_STATUS_RESULTED
        return group

    def _fill_order_from_obr(self, group: OrderGroup, obr: Segment) -> None:
        order = group.order
        order.placer_order_number = (
            order.placer_order_number or obr.component(2).strip()
        )
        group.filler_order_number = (
            group.filler_order_number or obr.component(3).strip()
        )
        order.ordering_practitioner_id = (
            order.ordering_practitioner_id or obr.component(16).strip()
        )
        if not order.HasField("placed_at"):
            observed = optional_time(obr, 7, self._zone) or optional_time(
                obr, 6, self._zone
            )
            if observed is not None:
                order.placed_at.FromDatetime(observed)
        priority = PRIORITY_CODES.get(obr.component(5).strip().upper())
        if priority is not None:
            order.priority = priority


def _pid_location(sequence: int) -> ErrorLocation:
    return ErrorLocation("PID", sequence)


def _msh_error(message: str, field_number: int, code: int) -> Hl7Error:
    return Hl7Error(
        message,
        code=code,
        location=ErrorLocation("MSH", 1, field_number),
        reject=True,
    )
