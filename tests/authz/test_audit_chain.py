"""Audit hash chain: tampering is detected, appends stay linear, schema matches.

The database tests run on SQLite and on the PostgreSQL server, migrate a
fresh authz database with the service's Alembic migration, append records
through the store, change rows with plain SQL, and run ``hin audit verify
--database-url`` as an operator would.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from mesh.network.cli import main
from mesh.runtime.audit_chain import GENESIS_HASH, record_hash, verify_chain
from mesh.runtime.storage import Database
from svc_authz import store

NOW = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)


def _entry(index: int) -> store.AuditEntry:
    return store.AuditEntry(
        subject=f"dr-{index}",
        subject_kind="person",
        roles="doctor",
        organization_id="hosp-a",
        calling_service="records",
        method="/hin.records.v1.RecordsService/GetPatient",
        action="records.clinical.read",
        patient_id=f"p-{index % 3}",
        purpose=1,
        decision="ALLOW" if index % 2 else "DENY",
        reason_code="ROLE_PERMITTED" if index % 2 else "NO_CARE_RELATIONSHIP",
        reason="test",
        emergency=index == 4,
        redact_clinical=False,
        trace_id=f"{index:032x}",
        status_code="",
    )


# Pure chain ------------------------------------------------------------------


def _chain(count: int) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    previous = GENESIS_HASH
    for index in range(1, count + 1):
        fields: dict[str, object] = {
            "sequence": index,
            "audit_id": f"a-{index}",
            "recorded_at": "2026-12-01T09:00:00.000000Z",
            **_entry(index).__dict__,
            "previous_hash": previous,
        }
        fields["hash"] = record_hash(fields)
        previous = str(fields["hash"])
        records.append(fields)
    return records


def test_record_hash_matches_sha256() -> None:
    fields = _chain(1)[0]
    document = {k: v for k, v in fields.items() if k != "hash"}
    canonical = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    expected = hashlib.sha256(
        (GENESIS_HASH + "\n" + canonical).encode("utf-8")
    ).hexdigest()
    assert fields["hash"] == expected


def test_intact_chain_verifies() -> None:
    records = _chain(5)
    report = verify_chain(records, head_sequence=5, head_hash=str(records[-1]["hash"]))
    assert report.intact
    assert report.records_checked == 5


def test_changed_field_names_record() -> None:
    records = _chain(5)
    records[2]["decision"] = "ALLOW" if records[2]["decision"] == "DENY" else "DENY"
    report = verify_chain(records, head_sequence=5, head_hash=str(records[-1]["hash"]))
    assert not report.intact
    assert report.first_broken_sequence == 3
    assert report.first_broken_audit_id == "a-3"


def test_empty_chain_with_head_zero() -> None:
    report = verify_chain([], head_sequence=0, head_hash=GENESIS_HASH)
    assert report.intact
    assert report.records_checked == 0


# On a real database ------------------------------------------------------------


@pytest.fixture
def audit_db(database_url: str) -> Iterator[tuple[Database, str]]:
    """A migrated authz database with a chain of six records."""
    db = Database(database_url)
    db.migrate("svc_authz:migrations")
    with db.transaction() as session:
        for index in range(1, 7):
            store.append_audit(session, _entry(index), NOW)
    yield db, database_url
    db.dispose()


def _verify(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", "--database-url", url])
    return code, capsys.readouterr().out


def _audit_id(db: Database, sequence: int) -> str:
    with db.engine.connect() as connection:
        return str(
            connection.execute(
                text("SELECT audit_id FROM audit_records WHERE sequence = :s"),
                {"s": sequence},
            ).scalar_one()
        )


def _execute(db: Database, statement: str, **params: object) -> None:
    with db.engine.begin() as connection:
        connection.execute(text(statement), params)


@pytest.mark.postgres
def test_untouched_chain_verifies(
    audit_db: tuple[Database, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = audit_db
    code, output = _verify(url, capsys)
    assert code == 0
    assert "6 records verified" in output


@pytest.mark.postgres
def test_edited_row_is_named(
    audit_db: tuple[Database, str], capsys: pytest.CaptureFixture[str]
) -> None:
    db, url = audit_db
    _execute(db, "UPDATE audit_records SET decision = 'ALLOW' WHERE sequence = 4")
    code, output = _verify(url, capsys)
    assert code == 1
    assert "BROKEN at sequence 4 " in output
    assert _audit_id(db, 4) in output
    assert "hash does not match" in output


@pytest.mark.postgres
def test_deleted_row_is_named(
    audit_db: tuple[Database, str], capsys: pytest.CaptureFixture[str]
) -> None:
    db, url = audit_db
    _execute(db, "DELETE FROM audit_records WHERE sequence = 3")
    code, output = _verify(url, capsys)
    assert code == 1
    # The record after the gap is the first that does not fit.
    assert "BROKEN at sequence 4 " in output
    assert "sequence 4 where 3 was expected" in output


@pytest.mark.postgres
def test_swapped_rows_are_named(
    audit_db: tuple[Database, str], capsys: pytest.CaptureFixture[str]
) -> None:
    db, url = audit_db
    # Swap the positions of records 2 and 5, keeping every other column.
    _execute(db, "UPDATE audit_records SET sequence = 1000 WHERE sequence = 2")
    _execute(db, "UPDATE audit_records SET sequence = 2 WHERE sequence = 5")
    _execute(db, "UPDATE audit_records SET sequence = 5 WHERE sequence = 1000")
    code, output = _verify(url, capsys)
    assert code == 1
    assert "BROKEN at sequence 2 " in output


@pytest.mark.postgres
def test_deleted_last_row_is_detected(
    audit_db: tuple[Database, str], capsys: pytest.CaptureFixture[str]
) -> None:
    db, url = audit_db
    _execute(db, "DELETE FROM audit_records WHERE sequence = 6")
    code, output = _verify(url, capsys)
    assert code == 1
    assert "BROKEN at sequence 6" in output
    assert "records at the end were removed" in output


@pytest.mark.postgres
def test_concurrent_appends_stay_linear(database_url: str) -> None:
    db = Database(database_url)
    db.migrate("svc_authz:migrations")
    errors: list[BaseException] = []

    def append_many(worker: int) -> None:
        try:
            for index in range(15):
                with db.transaction() as session:
                    store.append_audit(session, _entry(worker * 100 + index), NOW)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append_many, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    with db.transaction() as session:
        report = store.verify_audit(session)
    db.dispose()
    assert report.intact, report.problem
    assert report.records_checked == 60


@pytest.mark.postgres
def test_migration_matches_models(database_url: str) -> None:
    db = Database(database_url)
    db.migrate("svc_authz:migrations")
    with db.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection), store.AuthzBase.metadata
        )
    db.dispose()
    assert differences == []
