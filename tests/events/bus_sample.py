"""Sample service for the event bus tests: a store, a handler and a servicer.

The servicer's Echo call stores a note for the patient id in ``message`` and
writes a PatientRecordUpdated event in the same transaction. The handler
records one effect row per applied event, so a duplicate shows as two rows.
"""

from __future__ import annotations

import grpc
from sqlalchemy import func
from sqlalchemy.orm import Session, registry
from sqlmodel import Field, SQLModel, select

from hin.echo.v1 import echo_service_pb2 as pb
from hin.echo.v1 import echo_service_pb2_grpc as pb_grpc
from hin.records.v1 import events_pb2
from mesh.runtime.events import Envelope, Handler, Outbox, add_event_tables
from mesh.runtime.storage import Database
from mesh.runtime.validation import Violations


class SampleBase(SQLModel, registry=registry()):
    pass


class NoteRow(SampleBase, table=True):
    """State change written by the servicer."""

    __tablename__ = "sample_note"

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str
    version: int


class EffectRow(SampleBase, table=True):
    """Effect written by the handler, one row per applied event."""

    __tablename__ = "sample_effect"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(index=True)
    patient_id: str
    version: int
    partition: int
    offset: int


add_event_tables(SampleBase.metadata)


def write_update(
    session: Session, outbox: Outbox, patient_id: str, version: int
) -> str:
    """Store a note and its event in the caller's transaction; return the event id."""
    session.add(NoteRow(patient_id=patient_id, version=version))
    event = events_pb2.PatientRecordUpdated()
    event.patient.patient_id = patient_id
    event.patient.version = version
    event.changed_fields.append("names")
    return outbox.add(session, event, key=patient_id, subject=patient_id)


def record_effect(
    session: Session, event: events_pb2.PatientRecordUpdated, envelope: Envelope
) -> None:
    """Handle PatientRecordUpdated by adding one effect row."""
    session.add(
        EffectRow(
            event_id=envelope.id,
            patient_id=event.patient.patient_id,
            version=event.patient.version,
            partition=envelope.partition,
            offset=envelope.offset,
        )
    )


HANDLER = Handler(events_pb2.PatientRecordUpdated, record_effect)


def effects(
    db: Database, *, event_id: str = "", patient_id: str = ""
) -> list[EffectRow]:
    """Return the effect rows, oldest first, optionally of one event or patient."""
    with db.transaction() as session:
        query = select(EffectRow).order_by(EffectRow.id)  # type: ignore[arg-type]
        if event_id:
            query = query.where(EffectRow.event_id == event_id)
        if patient_id:
            query = query.where(EffectRow.patient_id == patient_id)
        return list(session.exec(query).all())


def count_notes(db: Database) -> int:
    """Return the number of notes the servicer stored."""
    with db.transaction() as session:
        return int(session.exec(select(func.count()).select_from(NoteRow)).one())


class NoteServicer(pb_grpc.EchoServiceServicer):
    """Echo service whose Echo stores a note and its event in one transaction.

    ``message`` is the patient id. The echo contract has no version field, so
    ``delay_ms`` carries the note's version and is never waited on.
    """

    def __init__(self, *, db: Database, outbox: Outbox) -> None:
        self._db = db
        self._outbox = outbox

    async def Echo(
        self, request: pb.EchoRequest, context: grpc.aio.ServicerContext
    ) -> pb.EchoResponse:
        violations = Violations()
        violations.require(request.message, "message")
        if request.delay_ms < 0:
            violations.add("delay_ms", "must not be negative")
        violations.check()
        event_id = await self._db.run(
            write_update, self._outbox, request.message, request.delay_ms
        )
        return pb.EchoResponse(message=event_id)
