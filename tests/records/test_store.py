"""Records storage on SQLite and PostgreSQL: migration, constraints, queries."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from hin.common.v1 import fhir_pb2, types_pb2
from hin.records.v1 import records_service_pb2 as pb
from mesh.runtime.events import Outbox, outbox_table
from mesh.runtime.storage import Database
from svc_records import records, store
from svc_records.domain.fhir import IMPORT_ORDER, read_bundle
from svc_records.importing import BundleImport
from svc_records.store import RecordsBase


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate("svc_records:migrations")
    yield database
    database.dispose()


def demographics(family: str, mrn: str) -> pb.PatientDemographics:
    return pb.PatientDemographics(
        names=[types_pb2.HumanName(family=family, given=["Store"])],
        birth_date=types_pb2.Date(year=1950, month=3, day=4),
        gender=types_pb2.GENDER_MALE,
        identifiers=[types_pb2.Identifier(system="urn:hin:id:mrn:org-1", value=mrn)],
        telecom=[types_pb2.ContactPoint(system="phone", value="+20 122 333 4444")],
    )


@pytest.mark.postgres
def test_migration_matches_models(db: Database) -> None:
    with db.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection), RecordsBase.metadata
        )
    assert differences == []


@pytest.mark.postgres
def test_migration_creates_every_table(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
    assert tables == set(RecordsBase.metadata.tables)


@pytest.mark.postgres
def test_identifier_held_once(db: Database) -> None:
    outbox = Outbox(service="records")
    with db.transaction() as session:
        records.create_patient(session, outbox, demographics("First", "MRN-1"))
    with pytest.raises(IntegrityError):
        with db.transaction() as session:
            records.create_patient(session, outbox, demographics("Second", "MRN-1"))
    with db.transaction() as session:
        rows, total = store.search_patients(
            session,
            patient_ids=None,
            name_words=[],
            birth_date="1950-03-04",
            phone_digits="",
            offset=0,
            limit=10,
        )
    assert total == 1
    assert [r.search_names for r in rows] == [" first store "]


@pytest.mark.postgres
def test_search_matches_word_starts(db: Database) -> None:
    outbox = Outbox(service="records")
    with db.transaction() as session:
        records.create_patient(session, outbox, demographics("Hassanein", "MRN-2"))
        records.create_patient(session, outbox, demographics("Abohassan", "MRN-3"))
    with db.transaction() as session:
        rows, total = store.search_patients(
            session,
            patient_ids=None,
            name_words=["hassan"],
            birth_date="",
            phone_digits="223334444",
            offset=0,
            limit=10,
        )
    assert total == 1
    assert records.demographics_of(rows[0]).names[0].family == "Hassanein"


@pytest.mark.postgres
def test_created_patient_emits_registered(db: Database) -> None:
    outbox = Outbox(service="records")
    with db.transaction() as session:
        row = records.create_patient(session, outbox, demographics("Evented", "MRN-4"))
    with db.transaction() as session:
        written = session.execute(
            select(outbox_table.c.event_type, outbox_table.c.key)
        ).all()
    assert [tuple(r) for r in written] == [
        ("hin.records.v1.PatientRegistered", row.patient_id)
    ]


@pytest.mark.postgres
def test_chart_lists_undated_entries_last(db: Database) -> None:
    outbox = Outbox(service="records")
    with db.transaction() as session:
        row = records.create_patient(session, outbox, demographics("Charted", "MRN-5"))
        undated = pb.Allergy(patient_id=row.patient_id, code={"text": "Dust"})
        dated = pb.Allergy(patient_id=row.patient_id, code={"text": "Pollen"})
        dated.recorded_at.FromJsonString("2020-05-01T00:00:00Z")
        older = pb.Allergy(patient_id=row.patient_id, code={"text": "Nuts"})
        older.recorded_at.FromJsonString("2019-05-01T00:00:00Z")
        for allergy in (undated, dated, older):
            records.add_chart_entry(
                session, outbox, kind="allergy", message=allergy, source_key=None
            )
    with db.transaction() as session:
        rows = store.entries_of_patient(session, row.patient_id)
    texts = [pb.Allergy.FromString(r.payload).code.text for r in rows]
    assert texts == ["Nuts", "Pollen", "Dust"]


@pytest.mark.postgres
def test_bundle_import_twice_on_both_databases(db: Database, shared_data: Path) -> None:
    path = next((shared_data / "fhir" / "synthea").glob("Jorge_Brekke_*.json"))
    data = path.read_bytes()
    expected = Counter(
        e["resource"]["resourceType"]
        for e in json.loads(data)["entry"]
        if e["resource"]["resourceType"] in IMPORT_ORDER
    )
    outbox = Outbox(service="records")
    rounds = []
    for _ in range(2):
        with db.transaction() as session:
            outcomes = BundleImport(
                session,
                outbox=outbox,
                entries=read_bundle(data),
                resolved_references={},
            ).run()
        rounds.append(Counter((o.resource_type, o.status) for o in outcomes))
    for resource_type, count in expected.items():
        assert rounds[0][(resource_type, fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED)] == count
        assert (
            rounds[1][(resource_type, fhir_pb2.FHIR_IMPORT_STATUS_DUPLICATE)] == count
        )
