"""LabsService servicer: validate, authorize, then change state with its events."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from sqlmodel import Session

from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from hin.labs.v1 import labs_service_pb2_grpc as pb_grpc
from mesh.runtime.authz import Authorizer, Decision, authorize
from mesh.runtime.errors import Unauthenticated
from mesh.runtime.principal import PrincipalKind, current_principal
from mesh.runtime.storage import Database
from svc_labs import domain, fhir, publishing, requests, store
from svc_labs.errors import (
    AlreadyLinked,
    OrderNotFound,
    ResultNotCritical,
    ResultNotFound,
    ResultWithoutPatient,
    StaleVersion,
    TestNotOrdered,
    UnmatchedNotFound,
)

logger = logging.getLogger(__name__)

READ = "labs.clinical.read"
WRITE = "labs.clinical.write"
IMPORT = "labs.admin.write"

R = TypeVar("R", bound=Message)


class LabsServicer(pb_grpc.LabsServiceServicer):
    """Implement hin.labs.v1.LabsService."""

    def __init__(
        self,
        *,
        db: Database,
        outbox: Any,
        authorizer: Authorizer,
        limits: domain.CriticalLimits,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._authorizer = authorizer
        self._limits = limits

    # Orders ----------------------------------------------------------------

    async def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlaceOrderResponse:
        principal = current_principal()
        requests.check_place_order(request, principal.practitioner_id)
        await authorize(self._authorizer, action=WRITE, patient_id=request.patient_id)

        def place(session: Session) -> pb.PlaceOrderResponse:
            order = pb.LabOrder(
                order_id=publishing.new_id(),
                patient_id=store.resolve_patient(session, request.patient_id),
                ordering_practitioner_id=request.ordering_practitioner_id
                or principal.practitioner_id,
                organization_id=request.organization_id or principal.organization_id,
                tests=request.tests,
                priority=request.priority or events.Priority.PRIORITY_ROUTINE,
                status=pb.OrderStatus.ORDER_STATUS_PLACED,
                version=1,
            )
            order.placed_at.GetCurrentTime()
            store.insert_order(session, order, source_key=None)
            publishing.announce_order(session, self._outbox, order)
            return pb.PlaceOrderResponse(order=order)

        return await self._run_idempotent(
            "PlaceOrder", request.idempotency_key, pb.PlaceOrderResponse, place
        )

    async def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOrderResponse:
        requests.check_id(request.order_id, "order_id")
        _require_caller()
        order = await self._db.run(_load_order, request.order_id)
        await authorize(self._authorizer, action=READ, patient_id=order.patient_id)
        return pb.GetOrderResponse(order=order)

    async def CollectSpecimen(
        self, request: pb.CollectSpecimenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectSpecimenResponse:
        requests.check_collect_specimen(request)
        _require_caller()
        order = await self._db.run(_load_order, request.order_id)
        await authorize(self._authorizer, action=WRITE, patient_id=order.patient_id)

        def collect(session: Session) -> pb.CollectSpecimenResponse:
            current = _load_order(session, request.order_id)
            _check_version(request.expected_version, current.version, current.order_id)
            specimen = pb.Specimen(
                specimen_id=publishing.new_id(),
                order_id=current.order_id,
                specimen_type=request.specimen_type,
            )
            if request.HasField("collected_at"):
                specimen.collected_at.CopyFrom(request.collected_at)
            else:
                specimen.collected_at.GetCurrentTime()
            current.specimens.append(specimen)
            if current.status == pb.OrderStatus.ORDER_STATUS_PLACED:
                current.status = pb.OrderStatus.ORDER_STATUS_SPECIMEN_COLLECTED
            current.version += 1
            store.update_order(session, current)
            if current.patient_id:
                event = events.SpecimenCollected(
                    specimen_id=specimen.specimen_id,
                    order_id=current.order_id,
                    patient_id=current.patient_id,
                    specimen_type=specimen.specimen_type,
                    collected_at=specimen.collected_at,
                )
                self._outbox.add(
                    session, event, key=current.patient_id, subject=current.order_id
                )
            return pb.CollectSpecimenResponse(order=current, specimen=specimen)

        return await self._run_idempotent(
            "CollectSpecimen",
            request.idempotency_key,
            pb.CollectSpecimenResponse,
            collect,
        )

    # Results ---------------------------------------------------------------

    async def RecordResult(
        self, request: pb.RecordResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordResultResponse:
        requests.check_record_result(request)
        _require_caller()
        order = await self._db.run(_load_order, request.order_id)
        await authorize(self._authorizer, action=WRITE, patient_id=order.patient_id)

        def record(session: Session) -> pb.RecordResultResponse:
            current = _load_order(session, request.order_id)
            if not current.patient_id:
                raise ResultWithoutPatient(
                    f"order {current.order_id} has no patient yet; link its "
                    "unmatched worklist item first",
                    reason="ORDER_WITHOUT_PATIENT",
                )
            if not any(t.code == request.test.code for t in current.tests):
                raise TestNotOrdered(
                    f"test {request.test.code} is not part of order "
                    f"{current.order_id}; record results of the ordered tests or "
                    "place a new order",
                    reason="TEST_NOT_ORDERED",
                )
            result = events.TestResult(
                result_id=publishing.new_id(),
                order_id=current.order_id,
                patient_id=current.patient_id,
                test=request.test,
                value=request.value,
                reference_range=request.reference_range,
                interpretation=request.interpretation,
                status=request.status,
                ordering_practitioner_id=current.ordering_practitioner_id,
                performing_organization_id=request.performing_organization_id,
                version=1,
            )
            if request.HasField("effective_at"):
                result.effective_at.CopyFrom(request.effective_at)
            result.issued_at.GetCurrentTime()
            domain.apply_critical_rules(result, self._limits)
            store.insert_result(session, result, source_key=None)
            publishing.publish_result(session, self._outbox, result)
            if current.status != pb.OrderStatus.ORDER_STATUS_RESULTED:
                current.status = pb.OrderStatus.ORDER_STATUS_RESULTED
                current.version += 1
                store.update_order(session, current)
            return pb.RecordResultResponse(result=result)

        return await self._run_idempotent(
            "RecordResult", request.idempotency_key, pb.RecordResultResponse, record
        )

    async def GetResult(
        self, request: pb.GetResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResultResponse:
        requests.check_id(request.result_id, "result_id")
        _require_caller()
        result, ack = await self._db.run(_load_result_and_ack, request.result_id)
        decision = await self._authorize_result(READ, result)
        response = pb.GetResultResponse(result=_redacted(result, decision))
        if ack is not None:
            response.acknowledgement.CopyFrom(ack)
        return response

    async def ListResults(
        self, request: pb.ListResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListResultsResponse:
        requests.check_id(request.patient_id, "patient_id")
        offset, limit = requests.check_page(request.page)
        decision = await authorize(
            self._authorizer, action=READ, patient_id=request.patient_id
        )

        def load(session: Session) -> tuple[list[events.TestResult], int]:
            patient_id = store.resolve_patient(session, request.patient_id)
            return store.list_results(
                session,
                patient_id,
                loinc_code=request.loinc_code,
                offset=offset,
                limit=limit,
            )

        results, total = await self._db.run(load)
        response = pb.ListResultsResponse(
            results=[_redacted(r, decision) for r in results]
        )
        response.page.total_size = total
        if offset + len(results) < total:
            response.page.next_page_token = store.encode_page_token(
                offset + len(results)
            )
        return response

    async def CorrectResult(
        self, request: pb.CorrectResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.CorrectResultResponse:
        requests.check_correct_result(request)
        _require_caller()
        result = await self._db.run(_load_result, request.result_id)
        await self._authorize_result(WRITE, result)

        def correct(session: Session) -> pb.CorrectResultResponse:
            current = _load_result(session, request.result_id)
            _require_patient(current)
            _check_version(request.expected_version, current.version, current.result_id)
            corrected = events.TestResult()
            corrected.CopyFrom(current)
            corrected.value.CopyFrom(request.value)
            corrected.reference_range.CopyFrom(request.reference_range)
            corrected.interpretation = request.interpretation
            corrected.status = events.ResultStatus.RESULT_STATUS_CORRECTED
            corrected.critical = False
            corrected.version = current.version + 1
            corrected.issued_at.GetCurrentTime()
            domain.apply_critical_rules(corrected, self._limits)
            store.replace_result(session, corrected, reason=request.reason)
            publishing.publish_correction(
                session,
                self._outbox,
                corrected,
                previous_version=current.version,
                reason=request.reason,
            )
            return pb.CorrectResultResponse(result=corrected)

        return await self._run_idempotent(
            "CorrectResult", request.idempotency_key, pb.CorrectResultResponse, correct
        )

    async def GetResultHistory(
        self, request: pb.GetResultHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResultHistoryResponse:
        requests.check_id(request.result_id, "result_id")
        _require_caller()
        result = await self._db.run(_load_result, request.result_id)
        decision = await self._authorize_result(READ, result)
        versions = await self._db.run(store.result_versions, request.result_id)
        return pb.GetResultHistoryResponse(
            versions=[_redacted(v, decision) for v in versions]
        )

    async def AcknowledgeCriticalResult(
        self,
        request: pb.AcknowledgeCriticalResultRequest,
        context: grpc.aio.ServicerContext,
    ) -> pb.AcknowledgeCriticalResultResponse:
        requests.check_id(request.result_id, "result_id")
        _require_caller()
        result = await self._db.run(_load_result, request.result_id)
        await self._authorize_result(WRITE, result)
        principal = current_principal()

        def acknowledge(session: Session) -> pb.AcknowledgeCriticalResultResponse:
            current = _load_result(session, request.result_id)
            _require_patient(current)
            if not current.critical:
                raise ResultNotCritical(
                    f"result {current.result_id} is not critical; only critical "
                    "results are acknowledged",
                    reason="RESULT_NOT_CRITICAL",
                )
            earlier = store.get_acknowledgement(session, current.result_id)
            if earlier is not None:
                return pb.AcknowledgeCriticalResultResponse(acknowledgement=earlier)
            ack = pb.CriticalAcknowledgement(
                result_id=current.result_id,
                acknowledged_by=principal.practitioner_id or principal.subject,
                note=request.note,
            )
            ack.acknowledged_at.GetCurrentTime()
            store.insert_acknowledgement(session, ack)
            event = events.CriticalResultAcknowledged(
                result_id=current.result_id,
                patient_id=current.patient_id,
                acknowledged_by=ack.acknowledged_by,
                acknowledged_at=ack.acknowledged_at,
            )
            self._outbox.add(
                session, event, key=current.patient_id, subject=current.result_id
            )
            return pb.AcknowledgeCriticalResultResponse(acknowledgement=ack)

        return await self._run_idempotent(
            "AcknowledgeCriticalResult",
            request.idempotency_key,
            pb.AcknowledgeCriticalResultResponse,
            acknowledge,
        )

    # Unmatched worklist ------------------------------------------------------

    async def ListUnmatchedResults(
        self, request: pb.ListUnmatchedResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUnmatchedResultsResponse:
        offset, limit = requests.check_page(request.page)
        # The worklist has no patient yet, so the check is on the role alone.
        await authorize(self._authorizer, action=READ)

        def load(session: Session) -> tuple[list[pb.UnmatchedResult], int]:
            return store.list_unmatched(
                session,
                include_linked=request.include_linked,
                offset=offset,
                limit=limit,
            )

        items, total = await self._db.run(load)
        response = pb.ListUnmatchedResultsResponse(items=items)
        response.page.total_size = total
        if offset + len(items) < total:
            response.page.next_page_token = store.encode_page_token(offset + len(items))
        return response

    async def GetUnmatchedResult(
        self, request: pb.GetUnmatchedResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUnmatchedResultResponse:
        requests.check_id(request.unmatched_id, "unmatched_id")
        await authorize(self._authorizer, action=READ)
        item = await self._db.run(_load_unmatched, request.unmatched_id)
        return pb.GetUnmatchedResultResponse(item=item)

    async def LinkUnmatchedResult(
        self, request: pb.LinkUnmatchedResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.LinkUnmatchedResultResponse:
        requests.check_link(request)
        await authorize(self._authorizer, action=WRITE, patient_id=request.patient_id)
        actor = current_principal().subject

        def link(session: Session) -> pb.LinkUnmatchedResultResponse:
            item = _load_unmatched(session, request.unmatched_id)
            if item.state != pb.UnmatchedState.UNMATCHED_STATE_OPEN:
                raise AlreadyLinked(
                    f"unmatched item {item.unmatched_id} is already linked to "
                    f"patient {item.patient_id}; correct the results instead",
                    reason="ALREADY_LINKED",
                )
            _check_version(request.expected_version, item.version, item.unmatched_id)
            patient_id = store.resolve_patient(session, request.patient_id)
            linked = publishing.link_unmatched(
                session, self._outbox, item.unmatched_id, patient_id, actor=actor
            )
            logger.info(
                "unmatched item linked by hand",
                extra={"unmatched_id": item.unmatched_id, "patient_id": patient_id},
            )
            return pb.LinkUnmatchedResultResponse(item=linked)

        return await self._db.run(link)

    # FHIR --------------------------------------------------------------------

    async def ImportFhir(
        self, request: pb.ImportFhirRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportFhirResponse:
        # Importing a bundle is data migration, an administrator's task like
        # records' and appointments' imports, not a clinician's write.
        await authorize(self._authorizer, action=IMPORT)
        plan = fhir.plan_import(request.bundle, dict(request.resolved_references))

        def run(session: Session) -> list[Any]:
            return fhir.apply_import(session, self._outbox, plan, self._limits)

        outcomes = await self._db.run(run)
        logger.info(
            "FHIR bundle imported",
            extra={"resources": len(outcomes), "patients": len(plan.patient_ids)},
        )
        return pb.ImportFhirResponse(outcomes=outcomes)

    # Helpers -----------------------------------------------------------------

    async def _authorize_result(
        self, action: str, result: events.TestResult
    ) -> Decision:
        if not result.patient_id:
            # A result in the unmatched worklist is readable by worklist staff.
            return await authorize(self._authorizer, action=action)
        return await authorize(
            self._authorizer, action=action, patient_id=result.patient_id
        )

    async def _run_idempotent(
        self,
        method: str,
        key: str,
        response_type: type[R],
        fn: Callable[[Session], R],
    ) -> R:
        """Run ``fn`` once per (method, caller, key); a retry gets the first reply."""
        if not key:
            return await self._db.run(fn)
        scoped = f"{method}:{current_principal().subject}:{key}"

        def once(session: Session) -> R:
            stored = store.get_idempotent(session, scoped)
            if stored is not None:
                return response_type.FromString(stored)
            response = fn(session)
            store.put_idempotent(session, scoped, response.SerializeToString())
            return response

        return await self._db.run(once)


def _require_caller() -> None:
    """Reject an anonymous caller before a lookup can reveal whether an id exists."""
    if current_principal().kind is PrincipalKind.ANONYMOUS:
        raise Unauthenticated(
            "this call needs a bearer token", reason="MISSING_CREDENTIALS"
        )


def _require_patient(result: events.TestResult) -> None:
    if not result.patient_id:
        raise ResultWithoutPatient(
            f"result {result.result_id} waits in the unmatched worklist and has no "
            "patient yet; link its worklist item first",
            reason="RESULT_WITHOUT_PATIENT",
        )


def _load_order(session: Session, order_id: str) -> pb.LabOrder:
    order = store.get_order(session, order_id)
    if order is None:
        raise OrderNotFound(
            f"order {order_id} not found; check the id returned by PlaceOrder",
            reason="ORDER_NOT_FOUND",
        )
    return order


def _load_result(session: Session, result_id: str) -> events.TestResult:
    result = store.get_result(session, result_id)
    if result is None:
        raise ResultNotFound(
            f"result {result_id} not found; list the patient's results for valid ids",
            reason="RESULT_NOT_FOUND",
        )
    return result


def _load_result_and_ack(
    session: Session, result_id: str
) -> tuple[events.TestResult, pb.CriticalAcknowledgement | None]:
    return _load_result(session, result_id), store.get_acknowledgement(
        session, result_id
    )


def _load_unmatched(session: Session, unmatched_id: str) -> pb.UnmatchedResult:
    item = store.get_unmatched(session, unmatched_id)
    if item is None:
        raise UnmatchedNotFound(
            f"unmatched item {unmatched_id} not found; list the worklist for valid ids",
            reason="UNMATCHED_NOT_FOUND",
        )
    return item


def _check_version(expected: int, stored: int, entity_id: str) -> None:
    if expected and expected != stored:
        raise StaleVersion(
            f"{entity_id} is at version {stored}, not {expected}; read it again "
            "and retry with the current version",
            reason="STALE_VERSION",
            metadata={"current_version": str(stored)},
        )


def _redacted(result: events.TestResult, decision: Decision) -> events.TestResult:
    """Drop clinical fields when the decision requires minimum necessary."""
    if not decision.redact_clinical:
        return result
    return events.TestResult(
        result_id=result.result_id,
        order_id=result.order_id,
        patient_id=result.patient_id,
        test=result.test,
        status=result.status,
        version=result.version,
        issued_at=result.issued_at,
    )
