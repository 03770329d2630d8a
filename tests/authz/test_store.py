"""Store queries on SQLite and PostgreSQL, on a migrated authz database."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from mesh.runtime.storage import Database
from svc_authz import store

NOW = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate("svc_authz:migrations")
    yield database
    database.dispose()


def _open(db: Database, closes_at: datetime.datetime | None) -> None:
    with db.transaction() as session:
        store.open_relationship(
            session,
            kind="appointment",
            source_id="ap-1",
            patient_id="p1",
            practitioner_id="pr-1",
            organization_id="h1",
            opened_at=NOW,
            closes_at=closes_at,
        )


def _related(db: Database, now: datetime.datetime, patient_id: str = "p1") -> bool:
    with db.transaction() as session:
        return store.has_practitioner_relationship(
            session, patient_id=patient_id, practitioner_id="pr-1", now=now
        )


def test_open_relationship_without_end(db: Database) -> None:
    _open(db, None)
    assert _related(db, NOW + 1000 * HOUR)


def test_relationship_ends_at_close_time(db: Database) -> None:
    _open(db, NOW + HOUR)
    assert _related(db, NOW + HOUR - datetime.timedelta(seconds=1))
    assert not _related(db, NOW + HOUR)


def test_redelivered_open_rewrites_row(db: Database) -> None:
    _open(db, NOW)
    _open(db, None)
    assert _related(db, NOW + HOUR)


def test_close_relationships_by_source(db: Database) -> None:
    _open(db, None)
    with db.transaction() as session:
        store.close_relationships(
            session, kind="appointment", source_id="ap-1", closes_at=NOW
        )
    assert not _related(db, NOW)


def test_lab_order_matches_organization(db: Database) -> None:
    with db.transaction() as session:
        store.open_relationship(
            session,
            kind="lab_order",
            source_id="o-1",
            patient_id="p1",
            practitioner_id="pr-9",
            organization_id="h1",
            opened_at=NOW,
            closes_at=NOW + HOUR,
        )
    with db.transaction() as session:
        same = store.has_lab_order_at(
            session, patient_id="p1", organization_id="h1", now=NOW
        )
        other = store.has_lab_order_at(
            session, patient_id="p1", organization_id="h2", now=NOW
        )
    assert same
    assert not other


def test_active_consents_skip_expired_and_revoked(db: Database) -> None:
    rows = [
        ("c-active", None, None, "1,2"),
        ("c-expired", NOW - HOUR, None, "1"),
        ("c-revoked", None, NOW - HOUR, "1"),
        ("c-future", NOW + HOUR, None, ""),
    ]
    with db.transaction() as session:
        for consent_id, expires_at, revoked_at, purposes in rows:
            session.add(
                store.ConsentRow(
                    consent_id=consent_id,
                    patient_id="p1",
                    grantee_organization_id=consent_id,
                    purposes=purposes,
                    granted_at=NOW - 2 * HOUR,
                    expires_at=expires_at,
                    revoked_at=revoked_at,
                )
            )
    with db.transaction() as session:
        active = store.active_consents(session, "p1", NOW)
    assert sorted(active) == [
        ("c-active", frozenset({1, 2})),
        ("c-future", frozenset()),
    ]


def test_grant_open_only_inside_window(db: Database) -> None:
    with db.transaction() as session:
        store.add_grant(
            session,
            store.BreakGlassGrantRow(
                grant_id="g-1",
                patient_id="p1",
                subject="dr",
                granted_at=NOW,
                expires_at=NOW + HOUR,
            ),
        )

    def active(now: datetime.datetime) -> bool:
        with db.transaction() as session:
            return store.has_active_grant(
                session, patient_id="p1", subject="dr", now=now
            )

    assert not active(NOW - datetime.timedelta(seconds=1))
    assert active(NOW)
    assert not active(NOW + HOUR)


def test_merge_rekeys_and_resolves(db: Database) -> None:
    _open(db, None)
    with db.transaction() as session:
        store.upsert_patient(
            session, patient_id="p9", managing_organization_id="h1", version=1, now=NOW
        )
        store.merge_patients(session, merged_id="p1", survivor_id="p9", now=NOW)
    with db.transaction() as session:
        resolved = store.resolve_patient(session, "p1")
    assert resolved == "p9"
    assert _related(db, NOW, patient_id="p9")
    assert not _related(db, NOW, patient_id="p1")


def test_older_snapshot_is_ignored(db: Database) -> None:
    with db.transaction() as session:
        store.upsert_patient(
            session, patient_id="p1", managing_organization_id="h2", version=3, now=NOW
        )
        store.upsert_patient(
            session, patient_id="p1", managing_organization_id="h1", version=2, now=NOW
        )
    with db.transaction() as session:
        row = store.get_patient(session, "p1")
    assert row is not None
    assert row.managing_organization_id == "h2"


def test_audit_record_reads_back_as_hashed(db: Database) -> None:
    entry = store.AuditEntry(
        subject="dr",
        subject_kind="person",
        roles="doctor",
        organization_id="h1",
        calling_service="records",
        method="",
        action="records.clinical.read",
        patient_id="p1",
        purpose=1,
        decision="ALLOW",
        reason_code="ROLE_PERMITTED",
        reason="ok",
        emergency=True,
        redact_clinical=False,
        trace_id="0" * 32,
        status_code="",
    )
    with db.transaction() as session:
        written = store.append_audit(session, entry, NOW)
    with db.transaction() as session:
        report = store.verify_audit(session)
        rows = store.list_patient_audit(session, "p1", before_sequence=0, limit=10)
    assert report.intact, report.problem
    assert [row.audit_id for row in rows] == [written.audit_id]
    assert rows[0].recorded_at == "2026-12-01T09:00:00.000000Z"
