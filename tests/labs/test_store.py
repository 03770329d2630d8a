"""svc_labs storage on SQLite and PostgreSQL: migration and patient matching."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from mesh.runtime.storage import Database
from svc_labs import store
from svc_labs.store import LabsBase

MRN_ORG_1 = "urn:hin:id:mrn:org-1"
MRN_ORG_2 = "urn:hin:id:mrn:org-2"
NO_MATCH = pb.UnmatchedReason.UNMATCHED_REASON_NO_MATCH
AMBIGUOUS = pb.UnmatchedReason.UNMATCHED_REASON_AMBIGUOUS


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate("svc_labs:migrations")
    try:
        yield database
    finally:
        database.dispose()


def test_migration_matches_models(db: Database) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, LabsBase.metadata)
        tables = set(inspect(connection).get_table_names())
    assert differences == []
    assert tables - {"alembic_version"} == set(LabsBase.metadata.tables)


def identifier(system: str, value: str, type_code: str = "") -> types.Identifier:
    return types.Identifier(system=system, value=value, type_code=type_code)


def test_match_by_system_and_value(db: Database) -> None:
    with db.transaction() as session:
        store.save_patient(session, "p-1", 1, "org-1", [identifier(MRN_ORG_1, "100")])
        match = store.match_patient(session, [identifier(MRN_ORG_1, "100")])
    assert match.patient_id == "p-1"


def test_mrn_value_matches_any_hospital(db: Database) -> None:
    with db.transaction() as session:
        store.save_patient(session, "p-1", 1, "org-1", [identifier(MRN_ORG_1, "100")])
        match = store.match_patient(
            session, [identifier("urn:hin:hl7v2:authority:X", "100", "MR")]
        )
    assert match.patient_id == "p-1"


def test_same_mrn_two_hospitals_ambiguous(db: Database) -> None:
    with db.transaction() as session:
        store.save_patient(session, "p-1", 1, "org-1", [identifier(MRN_ORG_1, "100")])
        store.save_patient(session, "p-2", 1, "org-2", [identifier(MRN_ORG_2, "100")])
        match = store.match_patient(
            session, [identifier("urn:hin:hl7v2:authority:X", "100", "MR")]
        )
    assert match.patient_id == ""
    assert match.reason == AMBIGUOUS


def test_unknown_value_no_match(db: Database) -> None:
    with db.transaction() as session:
        store.save_patient(session, "p-1", 1, "org-1", [identifier(MRN_ORG_1, "100")])
        match = store.match_patient(session, [identifier(MRN_ORG_1, "999")])
    assert match.patient_id == ""
    assert match.reason == NO_MATCH


def test_other_system_not_matched(db: Database) -> None:
    with db.transaction() as session:
        store.save_patient(session, "p-1", 1, "org-1", [identifier(MRN_ORG_1, "100")])
        match = store.match_patient(
            session, [identifier("urn:hin:id:member:payer-1", "100", "MB")]
        )
    assert match.reason == NO_MATCH


def test_merged_patient_resolves_to_survivor(db: Database) -> None:
    with db.transaction() as session:
        store.save_patient(session, "p-old", 1, "org-1", [identifier(MRN_ORG_1, "7")])
        store.save_patient(session, "p-new", 1, "org-1", [identifier(MRN_ORG_1, "8")])
        store.mark_merged(session, "p-old", "p-new")
        match = store.match_patient(
            session, [identifier(MRN_ORG_1, "7"), identifier(MRN_ORG_1, "8")]
        )
    assert match.patient_id == "p-new"


def test_older_snapshot_ignored(db: Database) -> None:
    with db.transaction() as session:
        store.save_patient(session, "p-1", 2, "org-1", [identifier(MRN_ORG_1, "new")])
        written = store.save_patient(
            session, "p-1", 1, "org-1", [identifier(MRN_ORG_1, "old")]
        )
        match = store.match_patient(session, [identifier(MRN_ORG_1, "old")])
    assert written is False
    assert match.reason == NO_MATCH


def test_result_versions_kept(db: Database) -> None:
    result = events.TestResult(
        result_id="r-1",
        patient_id="p-1",
        test=types.Coding(system="http://loinc.org", code="2823-3"),
        value=events.ResultValue(quantity="5.0", unit="mmol/L"),
        version=1,
    )
    with db.transaction() as session:
        store.insert_result(session, result, source_key="test:r-1")
        result.version = 2
        result.value.quantity = "5.5"
        store.replace_result(session, result, reason="recheck")
    with db.transaction() as session:
        versions = store.result_versions(session, "r-1")
        newest = store.get_result(session, "r-1")
    assert [v.value.quantity for v in versions] == ["5.0", "5.5"]
    assert newest is not None
    assert newest.version == 2
