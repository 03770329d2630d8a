"""Consumers of records events: patient snapshots and unmatched-result linking.

Each handler runs in the consumer's transaction with its inbox row. A
redelivered event is skipped by the inbox, and applying one twice is harmless
anyway: snapshots only move forward by version, and linking touches OPEN
worklist items only.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from sqlalchemy.orm import Session
from sqlmodel import Session as ModelSession

from hin.records.v1 import events_pb2 as records_events
from mesh.runtime.events import Envelope, Handler
from svc_labs import publishing, store

logger = logging.getLogger(__name__)

#: Actor of events caused by records events rather than by a caller.
HANDLER_ACTOR = "svc_labs/records-consumer"


class InvalidPatientEvent(ValueError):
    """A records event lacks the ids this consumer needs; it is dead-lettered."""


class PatientHandlers:
    """Keep patient snapshots and link waiting results when a patient appears."""

    def __init__(self, *, outbox: Any) -> None:
        self._outbox = outbox

    def handlers(self) -> list[Handler[Any]]:
        return [
            Handler(records_events.PatientRegistered, self.on_registered),
            Handler(records_events.PatientRecordUpdated, self.on_updated),
            Handler(records_events.PatientsMerged, self.on_merged),
        ]

    def on_registered(
        self,
        session: Session,
        event: records_events.PatientRegistered,
        envelope: Envelope,
    ) -> None:
        self._apply_snapshot(session, event.patient, envelope)

    def on_updated(
        self,
        session: Session,
        event: records_events.PatientRecordUpdated,
        envelope: Envelope,
    ) -> None:
        self._apply_snapshot(session, event.patient, envelope)

    def on_merged(
        self, session: Session, event: records_events.PatientsMerged, envelope: Envelope
    ) -> None:
        if not event.surviving_patient_id or not event.merged_patient_id:
            raise InvalidPatientEvent(
                "PatientsMerged needs surviving_patient_id and merged_patient_id"
            )
        if event.surviving_patient_id == event.merged_patient_id:
            raise InvalidPatientEvent("PatientsMerged merges a patient into itself")
        if event.survivor.patient_id:
            self._apply_snapshot(session, event.survivor, envelope)
        rows = _model_session(session)
        store.mark_merged(rows, event.merged_patient_id, event.surviving_patient_id)
        moved = store.move_patient_rows(
            rows, event.merged_patient_id, event.surviving_patient_id
        )
        logger.info(
            "patient merge applied",
            extra={
                "merged_patient_id": event.merged_patient_id,
                "surviving_patient_id": event.surviving_patient_id,
                "results_moved": len(moved),
                "event_id": envelope.id,
            },
        )

    def _apply_snapshot(
        self,
        session: Session,
        patient: records_events.PatientSnapshot,
        envelope: Envelope,
    ) -> None:
        if not patient.patient_id:
            raise InvalidPatientEvent(
                f"{envelope.type} carries a snapshot without patient_id"
            )
        rows = _model_session(session)
        written = store.save_patient(
            rows,
            patient.patient_id,
            patient.version,
            patient.managing_organization_id,
            patient.identifiers,
        )
        if not written:
            return
        linked = publishing.rematch_unmatched(
            rows,
            self._outbox,
            [identifier.value for identifier in patient.identifiers],
            actor=HANDLER_ACTOR,
        )
        if linked:
            logger.info(
                "unmatched results linked to a patient",
                extra={
                    "patient_id": patient.patient_id,
                    "unmatched_ids": linked,
                    "event_id": envelope.id,
                },
            )


def _model_session(session: Session) -> ModelSession:
    # Database.transaction yields a SQLModel session; the consumer's signature
    # names its SQLAlchemy base class.
    return cast(ModelSession, session)
