"""RecordsService: validate, authorize, then change state in one transaction."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from hin.common.v1 import types_pb2
from hin.records.v1 import events_pb2
from hin.records.v1 import records_service_pb2 as pb
from hin.records.v1 import records_service_pb2_grpc as pb_grpc
from mesh.runtime.authz import Authorizer, authorize, authorize_patients
from mesh.runtime.errors import PermissionDenied
from mesh.runtime.principal import current_principal
from mesh.runtime.storage import Database
from mesh.runtime.validation import Violations
from svc_records import chart, paging, records, store
from svc_records.domain import fhir as fhir_domain
from svc_records.domain import patients as rules
from svc_records.domain.names import name_tokens
from svc_records.errors import (
    ConcurrentChange,
    MergeRejected,
    PatientMerged,
    PatientNotFound,
    StaleVersion,
)
from svc_records.importing import BundleImport

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=Message)
T = TypeVar("T")


class RecordsServicer(pb_grpc.RecordsServiceServicer):
    """Implements hin.records.v1.RecordsService."""

    def __init__(self, *, db: Database, outbox: Any, authorizer: Authorizer) -> None:
        self._db = db
        self._outbox = outbox
        self._authorizer = authorizer

    async def _run(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one transaction; map a lost race to ABORTED.

        Unique constraints (identifiers, idempotency keys, import source
        keys) decide races between concurrent writers; the loser's whole
        transaction rolls back.
        """
        try:
            return await self._db.run(fn)
        except IntegrityError as exc:
            logger.warning(
                "transaction lost a race on a unique constraint",
                extra={"error_type": type(exc.orig).__name__},
            )
            raise ConcurrentChange(
                "another request changed the same records at the same time; "
                "retry the call",
                reason="CONCURRENT_CHANGE",
            ) from exc

    # Patients ------------------------------------------------------------

    async def RegisterPatient(
        self, request: pb.RegisterPatientRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterPatientResponse:
        violations = Violations()
        if not request.HasField("patient"):
            violations.add("patient", "is required")
        rules.validate_demographics(request.patient, "patient", violations)
        violations.check()
        await authorize(self._authorizer, action="records.demographics.write")
        key = _scoped_key(request.idempotency_key, request)

        def register(session: Session) -> pb.RegisterPatientResponse:
            stored = _replay(session, "RegisterPatient", key)
            if stored is not None:
                return pb.RegisterPatientResponse.FromString(stored)
            records.check_identifiers_free(session, request.patient, "", "patient")
            if not request.allow_possible_duplicate:
                candidates = chart.possible_duplicates(session, request.patient)
                if candidates:
                    # Not stored under the idempotency key: the caller may
                    # retry with allow_possible_duplicate and the same key.
                    return pb.RegisterPatientResponse(
                        possible_duplicates=candidates, registered=False
                    )
            row = records.create_patient(session, self._outbox, request.patient)
            response = pb.RegisterPatientResponse(
                patient=records.patient_message(row, []), registered=True
            )
            _remember(session, "RegisterPatient", key, response)
            return response

        return await self._run(register)

    async def GetPatient(
        self, request: pb.GetPatientRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPatientResponse:
        _require_id(request.patient_id, "patient_id")
        await authorize(
            self._authorizer,
            action="records.demographics.read",
            patient_id=request.patient_id,
        )

        def load(session: Session) -> pb.GetPatientResponse:
            row = _load_survivor(session, request.patient_id)
            response = pb.GetPatientResponse(patient=_patient(session, row))
            if row.patient_id != request.patient_id:
                response.merged_patient_id = request.patient_id
            return response

        return await self._run(load)

    async def UpdatePatient(
        self, request: pb.UpdatePatientRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdatePatientResponse:
        violations = Violations()
        violations.require(request.patient_id, "patient_id")
        if request.expected_version <= 0:
            violations.add(
                "expected_version", "must be the version read, a positive number"
            )
        if not request.HasField("patient"):
            violations.add("patient", "is required")
        rules.validate_demographics(request.patient, "patient", violations)
        violations.check()
        await authorize(
            self._authorizer,
            action="records.demographics.write",
            patient_id=request.patient_id,
        )

        def update(session: Session) -> pb.UpdatePatientResponse:
            row = store.get_patient_for_update(session, request.patient_id)
            if row is None:
                raise _not_found(request.patient_id)
            if row.status == "merged":
                raise PatientMerged(
                    f"patient {row.patient_id} was merged into {row.merged_into}; "
                    "update the surviving record instead",
                    reason="PATIENT_MERGED",
                    metadata={"surviving_patient_id": row.merged_into or ""},
                )
            if row.version != request.expected_version:
                raise StaleVersion(
                    f"patient {row.patient_id} is at version {row.version}, not "
                    f"expected_version {request.expected_version}; read it again "
                    "and reapply the change",
                    reason="STALE_VERSION",
                    metadata={"current_version": str(row.version)},
                )
            records.check_identifiers_free(
                session, request.patient, row.patient_id, "patient"
            )
            before = records.demographics_of(row)
            changed = rules.changed_fields(before, request.patient)
            if changed:
                records.apply_demographics(row, request.patient)
                row.version += 1
                row.updated_at = records.now()
                session.add(row)
                store.replace_identifiers(
                    session, row.patient_id, rules.identifier_keys(request.patient)
                )
                self._outbox.add(
                    session,
                    events_pb2.PatientRecordUpdated(
                        context=records.event_context(row.managing_organization_id),
                        patient=records.snapshot(row),
                        changed_fields=rules.snapshot_fields(changed),
                    ),
                    key=row.patient_id,
                    subject=row.patient_id,
                )
            return pb.UpdatePatientResponse(
                patient=_patient(session, row), changed_fields=changed
            )

        return await self._run(update)

    async def SearchPatients(
        self, request: pb.SearchPatientsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchPatientsResponse:
        violations = Violations()
        words = name_tokens(request.name)
        phone = rules.phone_digits(request.phone)
        has_identifier = request.HasField("identifier")
        if has_identifier:
            violations.require(request.identifier.system, "identifier.system")
            violations.require(request.identifier.value, "identifier.value")
        if request.name and not words:
            violations.add("name", "contains no letters or digits to search for")
        if request.phone and len(phone) < rules.MIN_PHONE_DIGITS:
            violations.add("phone", f"needs at least {rules.MIN_PHONE_DIGITS} digits")
        rules.check_date(request.birth_date, "birth_date", violations)
        birth_date = rules.date_to_iso(request.birth_date)
        if not (has_identifier or words or birth_date or phone):
            violations.add(
                "name", "give at least one of identifier, name, birth_date or phone"
            )
        offset, size = paging.parse_page(request.page, violations)
        violations.check()
        await authorize(self._authorizer, action="records.demographics.read")

        def search(session: Session) -> pb.SearchPatientsResponse:
            patient_ids = None
            if has_identifier:
                holders = store.find_identifier_holders(
                    session, [(request.identifier.system, request.identifier.value)]
                )
                survivors = [
                    records.resolve_survivor(session, p) for p in holders.values()
                ]
                patient_ids = [r.patient_id for r in survivors if r is not None]
            rows, total = store.search_patients(
                session,
                patient_ids=patient_ids,
                name_words=words,
                birth_date=birth_date,
                phone_digits=phone[-rules.MIN_PHONE_DIGITS :] if phone else "",
                offset=offset,
                limit=size,
            )
            return pb.SearchPatientsResponse(
                patients=[_patient(session, r) for r in rows],
                page=paging.page_response(offset, size, total),
            )

        response = await self._run(search)
        await self._drop_denied(response.patients, response.page)
        return response

    async def ListPatients(
        self, request: pb.ListPatientsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPatientsResponse:
        violations = Violations()
        offset, size = paging.parse_page(request.page, violations)
        violations.check()
        await authorize(self._authorizer, action="records.demographics.read")

        def list_page(session: Session) -> pb.ListPatientsResponse:
            rows, total = store.search_patients(
                session,
                patient_ids=None,
                name_words=[],
                birth_date="",
                phone_digits="",
                offset=offset,
                limit=size,
            )
            return pb.ListPatientsResponse(
                patients=[_patient(session, r) for r in rows],
                page=paging.page_response(offset, size, total),
            )

        response = await self._run(list_page)
        await self._drop_denied(response.patients, response.page)
        return response

    async def _drop_denied(self, patients: Any, page: Any) -> None:
        """Remove from ``patients`` each one the caller may not read.

        The role check before the query does not cover care relationships,
        hospitals and consent, so every patient on the page is decided, and
        audited, on its own. When any is removed, ``page.total_size`` is
        cleared (0 means unknown), because it counted patients the caller may
        not know of.
        """
        # NOTE: a page can come back shorter than page_size.
        if not patients:
            return
        decisions = await authorize_patients(
            self._authorizer,
            action="records.demographics.read",
            patient_ids=[patient.patient_id for patient in patients],
        )
        allowed = [p for p in patients if decisions[p.patient_id].allowed]
        if len(allowed) < len(patients):
            page.total_size = 0
        del patients[:]
        patients.extend(allowed)

    async def MergePatients(
        self, request: pb.MergePatientsRequest, context: grpc.aio.ServicerContext
    ) -> pb.MergePatientsResponse:
        violations = Violations()
        violations.require(request.surviving_patient_id, "surviving_patient_id")
        violations.require(request.merged_patient_id, "merged_patient_id")
        if (
            request.surviving_patient_id
            and request.surviving_patient_id == request.merged_patient_id
        ):
            violations.add("merged_patient_id", "must differ from surviving_patient_id")
        violations.check()
        for patient_id in (request.surviving_patient_id, request.merged_patient_id):
            await authorize(
                self._authorizer,
                action="records.demographics.write",
                patient_id=patient_id,
            )

        key = _scoped_key(request.idempotency_key, request)

        def merge(session: Session) -> pb.MergePatientsResponse:
            stored = _replay(session, "MergePatients", key)
            if stored is not None:
                return pb.MergePatientsResponse.FromString(stored)
            response = self._merge(session, request)
            _remember(session, "MergePatients", key, response)
            return response

        return await self._run(merge)

    def _merge(
        self, session: Session, request: pb.MergePatientsRequest
    ) -> pb.MergePatientsResponse:
        survivor = store.get_patient_for_update(session, request.surviving_patient_id)
        merged = store.get_patient_for_update(session, request.merged_patient_id)
        if survivor is None:
            raise _not_found(request.surviving_patient_id)
        if merged is None:
            raise _not_found(request.merged_patient_id)
        for row, field in ((survivor, "surviving"), (merged, "merged")):
            if row.status == "merged":
                raise MergeRejected(
                    f"{field} patient {row.patient_id} was already merged into "
                    f"{row.merged_into}; merge into or from that record instead",
                    reason="PATIENT_ALREADY_MERGED",
                )

        # The merged record gives up its identifiers before the survivor takes
        # them, because an identifier can be held by one patient only.
        combined = rules.merge_demographics(
            records.demographics_of(survivor), records.demographics_of(merged)
        )
        store.replace_identifiers(session, merged.patient_id, [])
        store.replace_identifiers(
            session, survivor.patient_id, rules.identifier_keys(combined)
        )
        moved = store.move_entries(session, merged.patient_id, survivor.patient_id)

        records.apply_demographics(survivor, combined)
        survivor.version += 1
        survivor.updated_at = records.now()
        merged.status = "merged"
        merged.merged_into = survivor.patient_id
        merged.version += 1
        merged.updated_at = survivor.updated_at
        session.add_all([survivor, merged])
        session.flush()

        self._outbox.add(
            session,
            events_pb2.PatientsMerged(
                context=records.event_context(survivor.managing_organization_id),
                surviving_patient_id=survivor.patient_id,
                merged_patient_id=merged.patient_id,
                survivor=records.snapshot(survivor),
                reason=request.reason,
            ),
            key=survivor.patient_id,
            subject=survivor.patient_id,
        )
        logger.info(
            "patients merged",
            extra={
                "patient_id": survivor.patient_id,
                "merged_patient_id": merged.patient_id,
                "moved_entries": moved,
            },
        )
        return pb.MergePatientsResponse(survivor=_patient(session, survivor))

    # Clinical record -------------------------------------------------------

    async def _may_read_chart(self, patient_id: str) -> bool:
        """Authorize a chart read; return whether clinical data may be included.

        Reading the chart needs demographics access. Clinical data is left
        out (minimum necessary) when that decision sets redact_clinical or
        the caller may not read clinical data, so a billing clerk gets the
        demographics only instead of an error.
        """
        decision = await authorize(
            self._authorizer,
            action="records.demographics.read",
            patient_id=patient_id,
        )
        if decision.redact_clinical:
            return False
        try:
            clinical = await authorize(
                self._authorizer,
                action="records.clinical.read",
                patient_id=patient_id,
            )
        except PermissionDenied:
            return False
        return not clinical.redact_clinical

    async def GetPatientSummary(
        self, request: pb.GetPatientSummaryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPatientSummaryResponse:
        _require_id(request.patient_id, "patient_id")
        include_clinical = await self._may_read_chart(request.patient_id)

        def load(session: Session) -> pb.GetPatientSummaryResponse:
            row = _load_survivor(session, request.patient_id)
            summary = pb.PatientSummary(patient=_patient(session, row))
            if include_clinical:
                chart.fill_summary(
                    summary, store.entries_of_patient(session, row.patient_id)
                )
            return pb.GetPatientSummaryResponse(summary=summary)

        return await self._run(load)

    async def RecordEncounter(
        self, request: pb.RecordEncounterRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordEncounterResponse:
        violations = Violations()
        violations.require(request.encounter.patient_id, "encounter.patient_id")
        violations.require(
            request.encounter.encounter_class, "encounter.encounter_class"
        )
        if not request.encounter.period.HasField("start"):
            violations.add("encounter.period.start", "is required")
        violations.check()
        encounter = await self._record(
            "encounter", request.idempotency_key, request.encounter
        )
        return pb.RecordEncounterResponse(encounter=encounter)

    async def RecordCondition(
        self, request: pb.RecordConditionRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordConditionResponse:
        violations = Violations()
        violations.require(request.condition.patient_id, "condition.patient_id")
        _require_code(request.condition.code, "condition.code", violations)
        violations.check()
        condition = await self._record(
            "condition", request.idempotency_key, request.condition
        )
        return pb.RecordConditionResponse(condition=condition)

    async def RecordAllergy(
        self, request: pb.RecordAllergyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordAllergyResponse:
        violations = Violations()
        violations.require(request.allergy.patient_id, "allergy.patient_id")
        _require_code(request.allergy.code, "allergy.code", violations)
        if request.allergy.criticality not in ("", "low", "high", "unable-to-assess"):
            violations.add(
                "allergy.criticality", "must be low, high or unable-to-assess"
            )
        violations.check()
        allergy = await self._record(
            "allergy", request.idempotency_key, request.allergy
        )
        return pb.RecordAllergyResponse(allergy=allergy)

    async def RecordMedication(
        self, request: pb.RecordMedicationRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordMedicationResponse:
        violations = Violations()
        violations.require(request.medication.patient_id, "medication.patient_id")
        _require_code(request.medication.code, "medication.code", violations)
        violations.check()
        medication = await self._record(
            "medication", request.idempotency_key, request.medication
        )
        return pb.RecordMedicationResponse(medication=medication)

    async def _record(self, kind: str, idempotency_key: str, message: R) -> R:
        violations = Violations()
        rules.check_sizes(
            message,
            kind,
            violations,
            max_text_length=rules.MAX_CHART_TEXT_LENGTH,
            allow_line_breaks=True,
        )
        violations.check()
        patient_id = str(message.patient_id)  # type: ignore[attr-defined]
        await authorize(
            self._authorizer, action="records.clinical.write", patient_id=patient_id
        )
        method = f"Record/{kind}"
        entry = type(message)()
        entry.CopyFrom(message)
        key = _scoped_key(idempotency_key, message)

        def record(session: Session) -> R:
            stored = _replay(session, method, key)
            if stored is not None:
                return type(message).FromString(stored)
            row = _load_survivor(session, patient_id)
            entry.patient_id = row.patient_id  # type: ignore[attr-defined]
            records.add_chart_entry(
                session, self._outbox, kind=kind, message=entry, source_key=None
            )
            _remember(session, method, key, entry)
            return entry

        return await self._run(record)

    # FHIR ------------------------------------------------------------------

    async def ImportFhir(
        self, request: pb.ImportFhirRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportFhirResponse:
        violations = Violations()
        violations.require(request.bundle, "bundle")
        entries: list[fhir_domain.BundleEntry] = []
        if request.bundle:
            try:
                entries = fhir_domain.read_bundle(request.bundle)
            except fhir_domain.FhirError as exc:
                violations.add("bundle", str(exc))
        violations.check()
        # Bulk import is an operator's task (hin import runs as administrator).
        await authorize(self._authorizer, action="records.admin.write")

        def run_import(session: Session) -> pb.ImportFhirResponse:
            bundle_import = BundleImport(
                session,
                outbox=self._outbox,
                entries=entries,
                resolved_references=request.resolved_references,
            )
            return pb.ImportFhirResponse(outcomes=bundle_import.run())

        response = await self._run(run_import)
        logger.info(
            "FHIR bundle imported",
            extra={"entries": len(entries), "source": request.source},
        )
        return response

    async def ExportPatient(
        self, request: pb.ExportPatientRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportPatientResponse:
        _require_id(request.patient_id, "patient_id")
        include_clinical = await self._may_read_chart(request.patient_id)

        def export(session: Session) -> dict[str, Any]:
            row = _load_survivor(session, request.patient_id)
            return chart.export_patient(session, row, include_clinical=include_clinical)

        bundle = await self._run(export)
        return pb.ExportPatientResponse(
            bundle=json.dumps(bundle, ensure_ascii=False).encode()
        )


# Helpers ---------------------------------------------------------------------


def _require_id(value: str, field: str) -> None:
    violations = Violations()
    violations.require(value, field)
    violations.check()


def _require_code(
    concept: types_pb2.CodeableConcept, field: str, violations: Violations
) -> None:
    if not (concept.text or any(c.code for c in concept.codings)):
        violations.add(field, "needs a coding with a code, or text")


def _not_found(patient_id: str) -> PatientNotFound:
    return PatientNotFound(
        f"patient {patient_id} not found; check the id or search by identifier",
        reason="PATIENT_NOT_FOUND",
        metadata={"patient_id": patient_id},
    )


def _load_survivor(session: Session, patient_id: str) -> store.PatientRow:
    row = records.resolve_survivor(session, patient_id)
    if row is None:
        raise _not_found(patient_id)
    return row


def _patient(session: Session, row: store.PatientRow) -> pb.Patient:
    return chart.patient_with_links(session, row)


def _scoped_key(key: str, request: Message) -> str:
    """Bind a client's idempotency key to the caller and the request.

    Clients choose keys freely, so a key alone would hand the first call's
    response, which names a patient and may carry clinical data, to another
    caller or to a different request that reuses the key. Returns "" when
    ``key`` is empty, and otherwise a SHA-256 hex digest.
    """
    if not key:
        return ""
    principal = current_principal()
    digest = hashlib.sha256()
    caller = (principal.kind.value, principal.organization_id, principal.subject)
    for part in (*caller, key):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _replay(session: Session, method: str, key: str) -> bytes | None:
    if not key:
        return None
    return store.load_idempotent_response(session, method, key)


def _remember(session: Session, method: str, key: str, response: Message) -> None:
    if key:
        store.save_idempotent_response(
            session, method, key, response.SerializeToString(deterministic=True)
        )
