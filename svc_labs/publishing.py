"""State changes shared by the servicer, the MLLP listener and the handlers.

Each function writes rows and adds the matching events to the outbox in the
caller's transaction, so a change and its events commit together.
"""

from __future__ import annotations

from typing import Any

import uuid_utils
from sqlmodel import Session

from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from svc_labs import store


def new_id() -> str:
    """Return a new opaque id (UUIDv7, so ids sort by creation time)."""
    return str(uuid_utils.uuid7())


def publish_result(
    session: Session,
    outbox: Any,
    result: events.TestResult,
    *,
    historical: bool = False,
    actor: str = "",
) -> None:
    """Add TestResultPublished for a result that has a patient."""
    event = events.TestResultPublished(historical=historical)
    event.result.CopyFrom(result)
    event.context.actor = actor
    outbox.add(session, event, key=result.patient_id, subject=result.result_id)


def publish_correction(
    session: Session,
    outbox: Any,
    result: events.TestResult,
    *,
    previous_version: int,
    reason: str,
    actor: str = "",
) -> None:
    """Add TestResultCorrected for a new version of a published result."""
    event = events.TestResultCorrected(previous_version=previous_version, reason=reason)
    event.result.CopyFrom(result)
    event.context.actor = actor
    outbox.add(session, event, key=result.patient_id, subject=result.result_id)


def announce_order(
    session: Session, outbox: Any, order: pb.LabOrder, *, actor: str = ""
) -> None:
    """Add LabOrderPlaced for an order that has a patient."""
    event = events.LabOrderPlaced(
        order_id=order.order_id,
        patient_id=order.patient_id,
        ordering_practitioner_id=order.ordering_practitioner_id,
        organization_id=order.organization_id,
        priority=order.priority,
    )
    event.tests.extend(order.tests)
    if order.HasField("placed_at"):
        event.placed_at.CopyFrom(order.placed_at)
    event.context.actor = actor
    event.context.organization_id = order.organization_id
    outbox.add(session, event, key=order.patient_id, subject=order.order_id)


def link_unmatched(
    session: Session, outbox: Any, unmatched_id: str, patient_id: str, *, actor: str
) -> pb.UnmatchedResult:
    """Attach a worklist item's orders and results to a patient and publish them.

    Raises:
        LookupError: the worklist item does not exist.
    """
    item = store.get_unmatched(session, unmatched_id)
    if item is None:
        raise LookupError(unmatched_id)
    for order in item.orders:
        order.patient_id = patient_id
        store.update_order(session, order)
        announce_order(session, outbox, order, actor=actor)
    for result in item.results:
        result.patient_id = patient_id
        store.attach_result(session, result)
        publish_result(session, outbox, result, actor=actor)
    store.set_unmatched_state(
        session,
        unmatched_id,
        state=pb.UnmatchedState.UNMATCHED_STATE_LINKED,
        patient_id=patient_id,
        reason=item.reason,
    )
    linked = store.get_unmatched(session, unmatched_id)
    assert linked is not None
    return linked


def rematch_unmatched(
    session: Session, outbox: Any, values: list[str], *, actor: str
) -> list[str]:
    """Link every OPEN worklist item that now matches exactly one patient.

    Returns:
        Ids of the items that were linked.
    """
    linked: list[str] = []
    for unmatched_id in store.open_unmatched_with_values(session, values):
        item = store.get_unmatched(session, unmatched_id)
        if item is None:
            continue
        match = store.match_patient(session, item.identifiers)
        if match.patient_id:
            link_unmatched(session, outbox, unmatched_id, match.patient_id, actor=actor)
            linked.append(unmatched_id)
        elif match.reason != item.reason:
            store.set_unmatched_state(
                session,
                unmatched_id,
                state=pb.UnmatchedState.UNMATCHED_STATE_OPEN,
                patient_id="",
                reason=match.reason,
            )
    return linked
