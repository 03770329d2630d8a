"""Hash chain of the audit trail: canonical form, hashing and verification.

Each record's hash is SHA-256 over the previous record's hash and the
canonical JSON of the record's own fields, its sequence number included. So
changing a field breaks that record's hash, removing a record breaks the
sequence and the next record's ``previous_hash``, and swapping two records
breaks both hashes. The chain head (last sequence and hash) is stored apart
and compared at the end, which detects records removed from the tail.

svc_authz writes the chain; ``hin audit verify --database-url`` checks it on
the raw database without the service, so both read this one definition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: ``previous_hash`` of the first record.
GENESIS_HASH = "0" * 64

#: Fields covered by the hash, in the canonical form's key order.
CHAINED_FIELDS = (
    "sequence",
    "audit_id",
    "recorded_at",
    "subject",
    "subject_kind",
    "roles",
    "organization_id",
    "calling_service",
    "method",
    "action",
    "patient_id",
    "purpose",
    "decision",
    "reason_code",
    "reason",
    "emergency",
    "redact_clinical",
    "trace_id",
    "status_code",
    "previous_hash",
)


def canonical_bytes(fields: Mapping[str, object]) -> bytes:
    """Serialize the chained fields as compact JSON with sorted keys."""
    document = {name: fields[name] for name in CHAINED_FIELDS}
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def record_hash(fields: Mapping[str, object]) -> str:
    """Return the hex SHA-256 of the previous hash and the canonical fields."""
    digest = hashlib.sha256()
    digest.update(str(fields["previous_hash"]).encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical_bytes(fields))
    return digest.hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """Result of verifying the chain."""

    intact: bool
    records_checked: int
    #: Sequence of the first record that does not verify; 0 when intact.
    first_broken_sequence: int = 0
    first_broken_audit_id: str = ""
    problem: str = ""


def verify_chain(
    records: Iterable[Mapping[str, object]],
    *,
    head_sequence: int,
    head_hash: str,
) -> ChainReport:
    """Verify records given in ascending sequence order against the head.

    Each record maps every name in ``CHAINED_FIELDS`` plus ``hash``. The
    report names the first record that breaks the chain and what is wrong.
    """
    expected_sequence = 1
    previous_hash = GENESIS_HASH
    checked = 0
    for record in records:
        sequence = int(str(record["sequence"]))
        audit_id = str(record["audit_id"])
        if sequence != expected_sequence:
            return _broken(
                checked,
                sequence,
                audit_id,
                f"sequence {sequence} where {expected_sequence} was expected: "
                "a record was removed or inserted before it",
            )
        if record["previous_hash"] != previous_hash:
            return _broken(
                checked,
                sequence,
                audit_id,
                "previous_hash does not match the hash of the record before it: "
                "a record was removed, changed or moved",
            )
        if record_hash(record) != record["hash"]:
            return _broken(
                checked,
                sequence,
                audit_id,
                "hash does not match the record's fields: the record was changed "
                "or moved",
            )
        checked += 1
        previous_hash = str(record["hash"])
        expected_sequence += 1

    last_sequence = expected_sequence - 1
    if head_sequence != last_sequence or (last_sequence and head_hash != previous_hash):
        return _broken(
            checked,
            last_sequence + 1,
            "",
            f"the chain ends at sequence {last_sequence} but its head records "
            f"sequence {head_sequence}: records at the end were removed, or the "
            "head was changed",
        )
    return ChainReport(intact=True, records_checked=checked)


def _broken(checked: int, sequence: int, audit_id: str, problem: str) -> ChainReport:
    return ChainReport(
        intact=False,
        records_checked=checked,
        first_broken_sequence=sequence,
        first_broken_audit_id=audit_id,
        problem=problem,
    )
