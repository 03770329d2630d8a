"""Billing storage on SQLite and PostgreSQL: schema, uniqueness, price list."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from google.protobuf.message import Message
from sqlalchemy import inspect
from sqlmodel import select

from hin.labs.v1 import events_pb2 as labs
from hin.records.v1 import events_pb2 as records
from mesh.runtime.events import Envelope
from mesh.runtime.storage import Database
from svc_billing import ledger, prices, store
from svc_billing.app import MIGRATIONS
from svc_billing.handlers import build_handlers
from svc_billing.servicer import run_idempotent
from tests.billing.upstream import appointment_completed, result_published

pytestmark = pytest.mark.postgres


class RecordingOutbox:
    """Outbox stand-in that keeps the events a handler wrote."""

    def __init__(self) -> None:
        self.events: list[Message] = []

    def add(self, session: Any, event: Message, *, key: str, subject: str = "") -> str:
        self.events.append(event)
        return str(uuid.uuid4())


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate(MIGRATIONS)
    with database.transaction() as session:
        prices.load_price_list(session, prices.default_price_list())
    yield database
    database.dispose()


def envelope(event_id: str, event_type: str) -> Envelope:
    return Envelope(
        id=event_id,
        source="hin://test",
        type=event_type,
        time=None,
        subject="",
        topic="t",
        partition=0,
        offset=0,
        key="",
    )


def test_migration_matches_models(db: Database) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, store.BillingBase.metadata) == []
    tables = set(inspect(db.engine).get_table_names())
    assert set(store.BillingBase.metadata.tables) <= tables


def test_price_list_loads_once(db: Database) -> None:
    with db.transaction() as session:
        again = prices.load_price_list(session, prices.default_price_list())
        count = store.count_rows(session, store.PriceRow)
    assert again == 0
    shipped = Path(__file__).parents[2] / "svc_billing" / "data" / "default_prices.json"
    assert count == len(json.loads(shipped.read_text())["entries"])


def test_handler_twice_charges_once(db: Database) -> None:
    outbox = RecordingOutbox()
    handlers = {h.type_name: h for h in build_handlers(outbox)}
    handler = handlers["hin.appointments.v1.AppointmentCompleted"]
    patient_id = f"pat-{uuid.uuid4().hex[:10]}"
    event = appointment_completed(patient_id)
    event_id = str(uuid.uuid4())

    # No inbox here: the charge's unique source event id alone stops a repeat.
    for _ in range(2):
        with db.transaction() as session:
            handler.fn(session, event, envelope(event_id, handler.type_name))

    with db.transaction() as session:
        rows = list(
            session.exec(
                select(store.ChargeRow).where(store.ChargeRow.patient_id == patient_id)
            )
        )
    assert len(rows) == 1
    assert rows[0].source_event_id == event_id
    assert len(outbox.events) == 1


def test_duplicate_source_event_rejected(db: Database) -> None:
    def charge(session: Any, event_id: str) -> None:
        session.add(
            store.ChargeRow(
                charge_id=str(uuid.uuid4()),
                patient_id="pat-1",
                system="s",
                code="c",
                currency="EGP",
                source_event_id=event_id,
                service_date=dt.datetime.now(dt.UTC),
                posted_at=dt.datetime.now(dt.UTC),
            )
        )

    event_id = str(uuid.uuid4())
    with db.transaction() as session:
        charge(session, event_id)
    with pytest.raises(Exception, match="(?i)unique"):
        with db.transaction() as session:
            charge(session, event_id)


async def test_concurrent_key_one_charge(db: Database) -> None:
    patient_id = f"pat-{uuid.uuid4().hex[:10]}"
    item = ledger.ChargeInput(
        patient_id=patient_id,
        encounter_id="",
        system="urn:hin:code:visit-type",
        code="visit-general",
        display="",
        quantity=1,
        service_date=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
        idempotency_key=uuid.uuid4().hex,
        request_hash="h",
    )
    outbox = RecordingOutbox()
    ids = await asyncio.gather(
        *(
            run_idempotent(
                db, lambda s: ledger.post_charge(s, outbox, item).charge_id
            )
            for _ in range(6)
        )
    )
    assert len(set(ids)) == 1
    with db.transaction() as session:
        count = len(
            list(
                session.exec(
                    select(store.ChargeRow).where(
                        store.ChargeRow.patient_id == patient_id
                    )
                )
            )
        )
    assert count == 1


def test_merge_moves_charges_to_survivor(db: Database) -> None:
    outbox = RecordingOutbox()
    handlers = {h.type_name: h for h in build_handlers(outbox)}
    visit = handlers["hin.appointments.v1.AppointmentCompleted"]
    merge = handlers["hin.records.v1.PatientsMerged"]
    merged, survivor = (f"pat-{uuid.uuid4().hex[:10]}" for _ in range(2))

    with db.transaction() as session:
        visit.fn(session, appointment_completed(merged),
                 envelope(str(uuid.uuid4()), visit.type_name))
    with db.transaction() as session:
        merge.fn(
            session,
            records.PatientsMerged(
                surviving_patient_id=survivor, merged_patient_id=merged
            ),
            envelope(str(uuid.uuid4()), merge.type_name),
        )
    # A late event for the merged id is charged to the survivor.
    with db.transaction() as session:
        visit.fn(session, appointment_completed(merged),
                 envelope(str(uuid.uuid4()), visit.type_name))

    with db.transaction() as session:
        owners = [row.patient_id for row in session.exec(
            select(store.ChargeRow).where(
                store.ChargeRow.patient_id.in_([merged, survivor])  # type: ignore[attr-defined]
            )
        )]
    assert owners == [survivor, survivor]


def test_final_after_preliminary_charges_once(db: Database) -> None:
    outbox = RecordingOutbox()
    handlers = {h.type_name: h for h in build_handlers(outbox)}
    handler = handlers["hin.labs.v1.TestResultPublished"]
    patient_id = f"pat-{uuid.uuid4().hex[:10]}"
    preliminary = result_published(patient_id, status=labs.RESULT_STATUS_PRELIMINARY)
    final = labs.TestResultPublished()
    final.CopyFrom(preliminary)
    final.result.status = labs.RESULT_STATUS_FINAL
    cancelled = result_published(patient_id, status=labs.RESULT_STATUS_CANCELLED)

    for event in (preliminary, final, cancelled):
        with db.transaction() as session:
            handler.fn(session, event, envelope(str(uuid.uuid4()), handler.type_name))

    with db.transaction() as session:
        refs = [row.source_ref for row in session.exec(
            select(store.ChargeRow).where(store.ChargeRow.patient_id == patient_id)
        )]
    assert refs == [f"labs.result:{preliminary.result.result_id}"]
