"""Field checks of LabsService requests; each raises InvalidArgument naming fields."""

from __future__ import annotations

from google.protobuf.message import Message

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as events
from hin.labs.v1 import labs_service_pb2 as pb
from mesh.runtime.validation import Violations
from svc_labs import domain, store

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Largest accepted write request, serialized. Each write becomes an event,
#: and the outbox relay's producer rejects a record above librdkafka's
#: message.max.bytes (1,000,000 bytes by default). The relay then retries
#: that row forever, so no later labs event, critical results included,
#: would be published.
MAX_REQUEST_BYTES = 256 * 1024
#: Longest accepted id. Ids are UUIDs (36 characters), here and in the
#: records events that name patients.
MAX_ID_LENGTH = 64


def check_place_order(request: pb.PlaceOrderRequest, practitioner_id: str) -> None:
    v = Violations()
    _check_size(v, request)
    v.require(request.patient_id, "patient_id")
    if not request.ordering_practitioner_id and not practitioner_id:
        v.add(
            "ordering_practitioner_id",
            "is required when the caller's token names no practitioner",
        )
    if not request.tests:
        v.add("tests", "is required; give at least one LOINC-coded test")
    for index, test in enumerate(request.tests):
        _check_loinc(v, test, f"tests[{index}]")
    _check_enum(v, request.priority, events.Priority, "priority", allow_zero=True)
    v.check()


def check_collect_specimen(request: pb.CollectSpecimenRequest) -> None:
    v = Violations()
    _check_size(v, request)
    v.require(request.order_id, "order_id")
    v.require(request.specimen_type.code, "specimen_type.code")
    if request.expected_version < 0:
        v.add("expected_version", "must not be negative")
    v.check()


def check_record_result(request: pb.RecordResultRequest) -> None:
    v = Violations()
    _check_size(v, request)
    v.require(request.order_id, "order_id")
    _check_loinc(v, request.test, "test")
    _check_value(v, request.value, "value")
    _check_range(v, request.reference_range, "reference_range")
    _check_enum(
        v, request.interpretation, events.Interpretation, "interpretation", True
    )
    if request.status not in (
        events.ResultStatus.RESULT_STATUS_PRELIMINARY,
        events.ResultStatus.RESULT_STATUS_FINAL,
    ):
        v.add("status", "must be RESULT_STATUS_PRELIMINARY or RESULT_STATUS_FINAL")
    v.check()


def check_correct_result(request: pb.CorrectResultRequest) -> None:
    v = Violations()
    _check_size(v, request)
    v.require(request.result_id, "result_id")
    if request.expected_version <= 0:
        v.add("expected_version", "is required; pass the version you corrected")
    _check_value(v, request.value, "value")
    _check_range(v, request.reference_range, "reference_range")
    _check_enum(
        v, request.interpretation, events.Interpretation, "interpretation", True
    )
    v.require(request.reason.strip(), "reason")
    v.check()


def check_id(value: str, field: str) -> None:
    v = Violations()
    v.require(value, field)
    if len(value) > MAX_ID_LENGTH:
        # The NOT_FOUND message would repeat the id, and a message of many
        # kilobytes exceeds the gRPC Python client's default 16 KiB metadata
        # limit, so the caller would see RESOURCE_EXHAUSTED instead.
        v.add(field, f"is {len(value)} characters; at most {MAX_ID_LENGTH}")
    v.check()


def check_link(request: pb.LinkUnmatchedResultRequest) -> None:
    v = Violations()
    v.require(request.unmatched_id, "unmatched_id")
    v.require(request.patient_id, "patient_id")
    if request.expected_version < 0:
        v.add("expected_version", "must not be negative")
    v.check()


def check_page(page: types.PageRequest, field: str = "page") -> tuple[int, int]:
    """Return (offset, limit) of a page request.

    Raises:
        InvalidArgument: the page size is negative or the token is invalid.
    """
    v = Violations()
    if page.page_size < 0:
        v.add(f"{field}.page_size", "must not be negative")
    offset = store.decode_page_token(page.page_token)
    if offset is None:
        v.add(f"{field}.page_token", "is not a token from an earlier response")
    v.check()
    limit = min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    return offset or 0, limit


def _check_size(v: Violations, request: Message) -> None:
    size = request.ByteSize()
    if size <= MAX_REQUEST_BYTES:
        return
    # Name the top-level field that contributes most, so the caller knows
    # what to shorten.
    largest, largest_size = "", -1
    for field, value in request.ListFields():
        items = value if field.is_repeated else [value]
        field_size = sum(
            item.ByteSize() if isinstance(item, Message) else len(str(item).encode())
            for item in items
        )
        if field_size > largest_size:
            largest, largest_size = field.name, field_size
    v.add(
        largest,
        f"makes the request {size} bytes long; at most {MAX_REQUEST_BYTES} "
        "bytes are accepted",
    )


def _check_loinc(v: Violations, coding: types.Coding, field: str) -> None:
    if not coding.code:
        v.add(f"{field}.code", "is required")
    if coding.system != domain.LOINC_SYSTEM:
        v.add(f"{field}.system", f"must be {domain.LOINC_SYSTEM}")


def _check_value(v: Violations, value: events.ResultValue, field: str) -> None:
    kind = value.WhichOneof("value")
    if kind is None:
        v.add(field, "is required; set quantity, text or coded")
        return
    if kind == "quantity" and not domain.is_decimal(value.quantity):
        v.add(f"{field}.quantity", "must be a decimal number such as 6.9")
    if kind == "coded" and not any(c.code for c in value.coded.codings):
        v.add(f"{field}.coded.codings", "needs at least one coding with a code")
    if value.comparator not in ("", "<", "<=", ">=", ">"):
        v.add(f"{field}.comparator", "must be one of <, <=, >=, >")


def _check_range(v: Violations, reference: events.ReferenceRange, field: str) -> None:
    for name in ("low", "high"):
        text = getattr(reference, name)
        if text and not domain.is_decimal(text):
            v.add(f"{field}.{name}", "must be a decimal number")


def _check_enum(
    v: Violations, value: int, enum: object, field: str, allow_zero: bool
) -> None:
    values = enum.values()  # type: ignore[attr-defined]
    if value not in values or (value == 0 and not allow_zero):
        v.add(field, "is not a known value")
