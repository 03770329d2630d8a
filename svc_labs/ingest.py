"""Store one HL7 v2 message and build its acknowledgment.

A message is stored all or nothing in one transaction, together with the
row that remembers its ACK code under (MSH-4 sending facility, MSH-10 control
id). A resent message gets the first ACK code again and stores nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from mesh.runtime.storage import Database
from svc_labs import domain, publishing, store
from svc_labs.hl7v2 import ack
from svc_labs.hl7v2.er7 import decode, decode_header
from svc_labs.hl7v2.errors import (
    CODE_APPLICATION_INTERNAL_ERROR,
    CODE_DUPLICATE_KEY,
    ErrorLocation,
    Hl7Error,
)
from svc_labs.hl7v2.messages import (
    Header,
    InboundMessage,
    OrderGroup,
    PatientGroup,
    ReadingRules,
    check_header,
    read_body,
    read_header,
)

logger = logging.getLogger(__name__)

#: Actor written into the events of messages that came over MLLP. The
#: listener has no caller identity; network-level trust guards it.
MLLP_ACTOR = "svc_labs/mllp"


@dataclass(frozen=True)
class StoredOutcome:
    """ACK code and error of a message, fresh or remembered from a first try."""

    code: str
    error: Hl7Error | None = None
    duplicate: bool = False
    #: MSH-9.1 of the message the outcome belongs to.
    message_type: str = ""


class Hl7Ingestor:
    """Turn one framed HL7 v2 message into stored rows, events and an ACK."""

    def __init__(
        self,
        *,
        db: Database,
        outbox: Any,
        rules: ReadingRules,
        limits: domain.CriticalLimits,
        clock: Callable[[], datetime] = store.now_utc,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._rules = rules
        self._limits = limits
        self._clock = clock

    async def handle(self, data: bytes) -> bytes:
        """Store ``data`` when it is valid and return the ACK bytes.

        Raises nothing but cancellation, because every failure becomes an AE
        or AR acknowledgment.
        """
        received_at = self._clock()
        try:
            return await self._handle(data, received_at)
        except Exception:
            logger.exception("handling an HL7 message failed; nothing was stored")
            return self._internal_error_ack(Header(), received_at)

    async def _handle(self, data: bytes, received_at: datetime) -> bytes:
        header = Header()
        try:
            header = read_header(decode_header(data))
            check_header(header)
        except Hl7Error as exc:
            return await self._answer_error(header, exc, received_at)

        remembered = await self._db.run(self._remembered, header)
        if remembered is not None and remembered.message_type != header.message_type:
            error = Hl7Error(
                f"control id already used by an earlier {remembered.message_type} "
                "message from this facility; give every message a unique MSH-10",
                code=CODE_DUPLICATE_KEY,
                location=ErrorLocation("MSH", 1, 10),
                reject=True,
            )
            return self._ack(header, StoredOutcome(ack.REJECT, error), received_at)
        if remembered is not None:
            return self._ack(header, remembered, received_at)

        try:
            inbound = await asyncio.to_thread(self._read, data, header)
        except Hl7Error as exc:
            return await self._answer_error(header, exc, received_at)

        try:
            outcome = await self._store_with_retry(inbound, received_at)
        except Hl7Error as exc:
            return await self._answer_error(header, exc, received_at)
        except Exception:
            logger.exception(
                "storing an HL7 message failed; nothing was stored",
                extra={
                    "control_id": header.control_id,
                    "message_type": header.message_type,
                },
            )
            return self._internal_error_ack(header, received_at)
        logger.info(
            "HL7 message acknowledged",
            extra={
                "control_id": header.control_id,
                "message_type": header.message_type,
                "ack_code": outcome.code,
                "duplicate": outcome.duplicate,
            },
        )
        return self._ack(header, outcome, received_at)

    def _read(self, data: bytes, header: Header) -> InboundMessage:
        inbound = read_body(decode(data), header, self._rules)
        for patient in inbound.patients:
            for order in patient.orders:
                for result in order.results:
                    domain.apply_critical_rules(result, self._limits)
        return inbound

    async def _answer_error(
        self, header: Header, error: Hl7Error, received_at: datetime
    ) -> bytes:
        code = ack.REJECT if error.reject else ack.ERROR
        outcome = StoredOutcome(code, error)
        if header.control_id:
            try:
                outcome = await self._store_with_retry_error(
                    header, outcome, received_at
                )
            except Exception:
                logger.exception(
                    "remembering a rejected HL7 message failed",
                    extra={"control_id": header.control_id},
                )
        logger.info(
            "HL7 message not stored",
            extra={
                "control_id": header.control_id,
                "message_type": header.message_type,
                "ack_code": outcome.code,
                "error_code": error.code,
            },
        )
        return self._ack(header, outcome, received_at)

    def _internal_error_ack(self, header: Header, now: datetime) -> bytes:
        error = Hl7Error(
            "the message could not be stored because of an internal error; "
            "nothing was stored, send it again later",
            code=CODE_APPLICATION_INTERNAL_ERROR,
        )
        return self._ack(header, StoredOutcome(ack.ERROR, error), now)

    def _ack(self, header: Header, outcome: StoredOutcome, now: datetime) -> bytes:
        return ack.build_ack(
            header,
            code=outcome.code,
            control_id=publishing.new_id(),
            now=now,
            error=outcome.error,
            text="duplicate message; already stored" if outcome.duplicate else "",
        )

    def _remembered(self, session: Session, header: Header) -> StoredOutcome | None:
        row = store.find_inbound(session, header.sending_facility, header.control_id)
        if row is None:
            return None
        error = None
        if row.ack_code != ack.ACCEPT:
            error = Hl7Error(row.error_text, code=row.error_code)
        return StoredOutcome(
            row.ack_code, error, duplicate=True, message_type=row.message_type
        )

    async def _store_with_retry(
        self, inbound: InboundMessage, received_at: datetime
    ) -> StoredOutcome:
        # Two connections may deliver the same message at once. The unique
        # (facility, control id) key lets one win, and the other then finds
        # the winner's row and returns its ACK code.
        try:
            return await self._db.run(self._store_message, inbound, received_at)
        except IntegrityError:
            header = _header_of(inbound)
            remembered = await self._db.run(self._remembered, header)
            if remembered is None:
                raise
            return remembered

    async def _store_with_retry_error(
        self, header: Header, outcome: StoredOutcome, received_at: datetime
    ) -> StoredOutcome:
        try:
            return await self._db.run(self._store_error, header, outcome, received_at)
        except IntegrityError:
            remembered = await self._db.run(self._remembered, header)
            return remembered or outcome

    def _store_error(
        self,
        session: Session,
        header: Header,
        outcome: StoredOutcome,
        received_at: datetime,
    ) -> StoredOutcome:
        remembered = self._remembered(session, header)
        if remembered is not None:
            return remembered
        assert outcome.error is not None
        store.insert_inbound(
            session,
            store.InboundMessageRow(
                sending_facility=header.sending_facility,
                control_id=header.control_id,
                message_type=header.message_type,
                ack_code=outcome.code,
                error_code=outcome.error.code,
                error_text=outcome.error.user_message,
                received_at=received_at,
            ),
        )
        return outcome

    def _store_message(
        self, session: Session, inbound: InboundMessage, received_at: datetime
    ) -> StoredOutcome:
        remembered = self._remembered(session, _header_of(inbound))
        if remembered is not None:
            return remembered
        for patient in inbound.patients:
            self._store_patient_group(session, inbound, patient, received_at)
        store.insert_inbound(
            session,
            store.InboundMessageRow(
                sending_facility=inbound.sending_facility,
                control_id=inbound.control_id,
                message_type=inbound.message_type,
                ack_code=ack.ACCEPT,
                received_at=received_at,
            ),
        )
        return StoredOutcome(ack.ACCEPT)

    def _store_patient_group(
        self,
        session: Session,
        inbound: InboundMessage,
        patient: PatientGroup,
        received_at: datetime,
    ) -> None:
        match = store.match_patient(session, patient.identifiers)
        unmatched_id = ""
        if not match.patient_id:
            unmatched_id = publishing.new_id()
            item = pb.UnmatchedResult(
                unmatched_id=unmatched_id,
                identifiers=patient.identifiers,
                reason=match.reason,
                state=pb.UnmatchedState.UNMATCHED_STATE_OPEN,
                sending_facility=inbound.sending_facility,
                message_control_id=inbound.control_id,
                version=1,
            )
            item.received_at.FromDatetime(received_at)
            store.insert_unmatched(session, item)
            logger.info(
                "HL7 patient group kept in the unmatched worklist",
                extra={
                    "unmatched_id": unmatched_id,
                    "reason": pb.UnmatchedReason.Name(match.reason),
                },
            )
        for group in patient.orders:
            order = self._store_order(
                session, inbound, group, match.patient_id, unmatched_id
            )
            self._store_results(
                session, inbound, group, order, match.patient_id, unmatched_id
            )

    def _store_order(
        self,
        session: Session,
        inbound: InboundMessage,
        group: OrderGroup,
        patient_id: str,
        unmatched_id: str,
    ) -> pb.LabOrder:
        number = group.order.placer_order_number or group.filler_order_number
        source_key = (
            f"hl7:{inbound.sending_facility}:order:{number}" if number else None
        )
        existing = _placed_order(session, group.order.placer_order_number, patient_id)
        if existing is None and source_key is not None:
            existing = store.find_order_by_source(session, source_key)
        if existing is not None:
            if (
                group.results
                and existing.status != pb.OrderStatus.ORDER_STATUS_RESULTED
            ):
                existing.status = pb.OrderStatus.ORDER_STATUS_RESULTED
                existing.version += 1
                store.update_order(session, existing)
            return existing
        order = pb.LabOrder()
        order.CopyFrom(group.order)
        order.order_id = publishing.new_id()
        order.patient_id = patient_id
        order.version = 1
        store.insert_order(
            session, order, source_key=source_key, unmatched_id=unmatched_id
        )
        if patient_id:
            publishing.announce_order(session, self._outbox, order, actor=MLLP_ACTOR)
        return order

    def _store_results(
        self,
        session: Session,
        inbound: InboundMessage,
        group: OrderGroup,
        order: pb.LabOrder,
        patient_id: str,
        unmatched_id: str,
    ) -> None:
        number = group.filler_order_number or group.order.placer_order_number
        seen: dict[str, int] = {}
        for index, result in enumerate(group.results):
            key = group.observation_keys[index]
            seen[key] = seen.get(key, 0) + 1
            facility = inbound.sending_facility
            if number:
                source_key = f"hl7:{facility}:result:{number}:{key}:{seen[key]}"
            else:
                source_key = f"hl7:{facility}:msg:{inbound.control_id}:{index + 1}"
            result.order_id = order.order_id
            result.patient_id = patient_id
            if order.ordering_practitioner_id:
                result.ordering_practitioner_id = order.ordering_practitioner_id
            existing = store.find_result_by_source(session, source_key)
            if existing is None:
                self._insert_result(session, result, source_key, unmatched_id)
            else:
                self._update_result(session, existing, result, inbound)

    def _insert_result(
        self,
        session: Session,
        result: events.TestResult,
        source_key: str,
        unmatched_id: str,
    ) -> None:
        result.result_id = publishing.new_id()
        result.version = 1
        store.insert_result(
            session, result, source_key=source_key, unmatched_id=unmatched_id
        )
        if result.patient_id:
            publishing.publish_result(session, self._outbox, result, actor=MLLP_ACTOR)

    def _update_result(
        self,
        session: Session,
        existing: events.TestResult,
        result: events.TestResult,
        inbound: InboundMessage,
    ) -> None:
        """Store a later report of an observation the lab sent before."""
        if existing.patient_id != result.patient_id:
            raise Hl7Error(
                "this observation was stored earlier under another patient or "
                "in the unmatched worklist; correct it there",
                code=CODE_APPLICATION_INTERNAL_ERROR,
            )
        result.result_id = existing.result_id
        result.version = existing.version
        if result.SerializeToString(deterministic=True) == existing.SerializeToString(
            deterministic=True
        ):
            return
        result.version = existing.version + 1
        reason = f"reported again in HL7 message {inbound.control_id}"
        store.replace_result(session, result, reason=reason)
        if not result.patient_id:
            return
        if result.status == events.ResultStatus.RESULT_STATUS_CORRECTED:
            publishing.publish_correction(
                session,
                self._outbox,
                result,
                previous_version=existing.version,
                reason=reason,
                actor=MLLP_ACTOR,
            )
        else:
            publishing.publish_result(session, self._outbox, result, actor=MLLP_ACTOR)


def _placed_order(
    session: Session, placer_order_number: str, patient_id: str
) -> pb.LabOrder | None:
    """Return the network's own order when the lab echoes its id as placer number.

    An order placed through PlaceOrder reaches the lab with its order id as
    the placer order number (ORC-2 / OBR-2). The order is used only when it
    belongs to the patient the message was matched to.
    """
    if not placer_order_number or not patient_id:
        return None
    order = store.get_order(session, placer_order_number)
    if order is None or order.patient_id != patient_id:
        return None
    return order


def _header_of(inbound: InboundMessage) -> Header:
    return Header(
        control_id=inbound.control_id,
        sending_facility=inbound.sending_facility,
        message_type=inbound.message_type,
    )
