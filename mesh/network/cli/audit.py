"""``hin audit``: verify the audit hash chain and print a patient's disclosures.

Both subcommands ask the running network's AuthzService through the ingress
by default. With ``--database-url`` they read the authz database directly
instead: that is the tamper check, and it works with no service running.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import MetaData, Table, create_engine, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import authz_service_pb2_grpc as pb_grpc
from hin.authz.v1 import events_pb2 as events
from hin.common.v1 import types_pb2
from mesh.network.state import NetworkNotRunning
from mesh.runtime.audit_chain import (
    CHAINED_FIELDS,
    GENESIS_HASH,
    ChainReport,
    verify_chain,
)

#: Rows read per query while walking the chain.
BATCH_SIZE = 1000
HEAD_ID = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hin audit verify`` and ``hin audit patient``."""
    parser = subparsers.add_parser(
        "audit", help="verify the audit trail or print a patient's disclosures"
    )
    actions = parser.add_subparsers(
        dest="audit_command", metavar="ACTION", required=True
    )

    verify = actions.add_parser(
        "verify",
        help="recompute the audit hash chain; exit 1 and name the first broken "
        "record when it does not verify",
    )
    _add_database_url(verify)
    verify.set_defaults(func=run_verify)

    patient = actions.add_parser(
        "patient",
        help="print the accounting of disclosures of one patient (who was given "
        "their data, when, for what purpose)",
    )
    patient.add_argument("patient_id", help="HIN patient id")
    patient.add_argument(
        "--org",
        default="",
        help="hospital of the privacy officer asking; required without "
        "--database-url, because privacy officers see their own hospital's "
        "patients",
    )
    _add_database_url(patient)
    patient.set_defaults(func=run_patient)


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default="",
        help="SQLAlchemy URL of the authz database to read directly, such as "
        "sqlite:///.hin/data/authz.db (default: ask the running network)",
    )


# verify ---------------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> int:
    """Print whether the chain verifies; return 0 when intact, 1 when broken."""
    try:
        if args.database_url:
            report = verify_database(args.database_url)
        else:
            report = _verify_remote(args.state)
    except (SQLAlchemyError, grpc.RpcError, NetworkNotRunning, ValueError) as exc:
        print(f"hin audit verify: {_describe(exc)}", file=sys.stderr)
        return 2
    if report.intact:
        print(f"audit chain intact: {report.records_checked} records verified")
        return 0
    audit_id = (
        f" (audit id {report.first_broken_audit_id})"
        if (report.first_broken_audit_id)
        else ""
    )
    print(
        f"audit chain BROKEN at sequence {report.first_broken_sequence}{audit_id}: "
        f"{report.problem}; {report.records_checked} records before it verified"
    )
    return 1


def verify_database(url: str) -> ChainReport:
    """Verify the chain stored in the authz database at ``url``."""
    engine = create_engine(_driver_url(url))
    try:
        with engine.connect() as connection:
            records, head = _tables(connection)
            head_row = connection.execute(
                select(head).where(head.c.id == HEAD_ID)
            ).first()
            return verify_chain(
                _iter_records(connection, records),
                head_sequence=int(head_row.last_sequence) if head_row else 0,
                head_hash=str(head_row.last_hash) if head_row else GENESIS_HASH,
            )
    finally:
        engine.dispose()


def _iter_records(connection: Connection, records: Table) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        rows = (
            connection.execute(
                select(records)
                .where(records.c.sequence > last)
                .order_by(records.c.sequence)
                .limit(BATCH_SIZE)
            )
            .mappings()
            .all()
        )
        if not rows:
            return
        for row in rows:
            yield _chained(row)
        last = int(rows[-1]["sequence"])


def _chained(row: Any) -> dict[str, Any]:
    # SQLite returns booleans as 0 and 1; the hash was computed over JSON
    # true and false.
    fields = {name: row[name] for name in (*CHAINED_FIELDS, "hash")}
    for name in ("emergency", "redact_clinical"):
        fields[name] = bool(fields[name])
    return fields


def _verify_remote(state: Path) -> ChainReport:
    from mesh.network.clients import admin_metadata, ingress_channel_sync

    with ingress_channel_sync(state) as channel:
        response = pb_grpc.AuthzServiceStub(channel).VerifyAuditChain(
            pb.VerifyAuditChainRequest(), metadata=admin_metadata(state), timeout=120
        )
    return ChainReport(
        intact=response.intact,
        records_checked=response.records_checked,
        first_broken_sequence=response.first_broken_sequence,
        first_broken_audit_id=response.first_broken_audit_id,
        problem=response.problem,
    )


# patient --------------------------------------------------------------------


def run_patient(args: argparse.Namespace) -> int:
    """Print the patient's disclosures, oldest first."""
    try:
        if args.database_url:
            rows = list(disclosures_from_database(args.database_url, args.patient_id))
        else:
            if not args.org:
                print(
                    "hin audit patient: --org is required when asking the network; "
                    "give the patient's hospital",
                    file=sys.stderr,
                )
                return 2
            rows = list(_disclosures_remote(args.state, args.patient_id, args.org))
    except (SQLAlchemyError, grpc.RpcError, NetworkNotRunning, ValueError) as exc:
        print(f"hin audit patient: {_describe(exc)}", file=sys.stderr)
        return 2
    print(f"accounting of disclosures for patient {args.patient_id}: {len(rows)}")
    if rows:
        print(_format_row(_HEADER))
    for row in sorted(rows, key=lambda r: r["time"]):
        print(_format_row(row))
    return 0


_HEADER = {
    "time": "time (UTC)",
    "subject": "who",
    "roles": "roles",
    "organization": "organization",
    "action": "action",
    "purpose": "purpose",
    "emergency": "emergency",
    "trace_id": "trace id",
}


def _format_row(row: Mapping[str, str]) -> str:
    return (
        f"{row['time']:<28} {row['subject']:<24} {row['roles']:<18} "
        f"{row['organization']:<14} {row['action']:<30} {row['purpose']:<18} "
        f"{row['emergency']:<9} {row['trace_id']}"
    )


def disclosures_from_database(url: str, patient_id: str) -> Iterator[dict[str, str]]:
    """Yield the allowed accesses to the patient's data by anyone but themself."""
    engine = create_engine(_driver_url(url))
    try:
        with engine.connect() as connection:
            records, _ = _tables(connection)
            rows = (
                connection.execute(
                    select(records)
                    .where(
                        records.c.patient_id == patient_id,
                        records.c.decision == "ALLOW",
                        # Leave out callers whose only role is patient: such a
                        # caller reaches only their own record, so those records
                        # are the patient's own reads, not disclosures.
                        records.c.roles != "patient",
                    )
                    .order_by(records.c.sequence)
                )
                .mappings()
                .all()
            )
            for row in rows:
                yield {
                    "time": str(row["recorded_at"]),
                    "subject": str(row["subject"]),
                    "roles": str(row["roles"]),
                    "organization": str(row["organization_id"]),
                    "action": str(row["action"]),
                    "purpose": _purpose_name(int(row["purpose"])),
                    "emergency": "yes" if row["emergency"] else "",
                    "trace_id": str(row["trace_id"]),
                }
    finally:
        engine.dispose()


def _disclosures_remote(
    state: Path, patient_id: str, organization_id: str
) -> Iterator[dict[str, str]]:
    from mesh.network.clients import admin_metadata, ingress_channel_sync

    metadata = admin_metadata(
        state,
        subject="hin-cli-privacy",
        roles=("privacy_officer",),
        organization_id=organization_id,
    )
    with ingress_channel_sync(state) as channel:
        stub = pb_grpc.AuthzServiceStub(channel)
        token = ""
        while True:
            response = stub.AccountingOfDisclosures(
                pb.AccountingOfDisclosuresRequest(
                    patient_id=patient_id,
                    page=types_pb2.PageRequest(page_size=500, page_token=token),
                ),
                metadata=metadata,
                timeout=60,
            )
            for item in response.disclosures:
                yield {
                    "time": item.disclosed_at.ToJsonString(),
                    "subject": item.subject,
                    "roles": ",".join(item.roles),
                    "organization": item.organization_id,
                    "action": item.action,
                    "purpose": _purpose_name(item.purpose),
                    "emergency": "yes" if item.emergency else "",
                    "trace_id": item.trace_id,
                }
            token = response.page.next_page_token
            if not token:
                return


# Shared -----------------------------------------------------------------------


def _tables(connection: Connection) -> tuple[Table, Table]:
    metadata = MetaData()
    metadata.reflect(connection, only=["audit_records", "audit_head"])
    return metadata.tables["audit_records"], metadata.tables["audit_head"]


def _driver_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _purpose_name(number: int) -> str:
    try:
        return events.Purpose.Name(number).removeprefix("PURPOSE_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(number)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return f"the authz service returned {getattr(code, 'name', code)}: {details}"
    if isinstance(exc, SQLAlchemyError):
        return f"reading the authz database failed: {exc}"
    return str(exc)
