"""``hin appointments``: read practitioners, free slots and appointments.

Calls go through the ingress of the running network with a development
token of a receptionist, the role that works with schedules. Times print as
UTC in RFC 3339 form, followed by the wall-clock time in ``--time-zone``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.appointments.v1 import appointments_service_pb2_grpc as pb_grpc
from hin.common.v1 import types_pb2 as types
from mesh.network.clients import admin_metadata, ingress_channel_sync
from mesh.network.state import NetworkNotRunning

CALL_TIMEOUT_SECONDS = 30.0
DEFAULT_TIME_ZONE = "Africa/Cairo"
#: FindSlots searches at most 31 days per call.
MAX_DAYS = 31
PAGE_SIZE = 500

Metadata = tuple[tuple[str, str], ...]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hin appointments practitioners|slots|list``."""
    parser = subparsers.add_parser(
        "appointments", help="read practitioners, free slots and appointments"
    )
    parser.add_argument(
        "--time-zone",
        default=DEFAULT_TIME_ZONE,
        help=f"IANA time zone for dates and local times (default: {DEFAULT_TIME_ZONE})",
    )
    actions = parser.add_subparsers(
        dest="appointments_command", metavar="ACTION", required=True
    )
    practitioners = actions.add_parser("practitioners", help="print practitioners")
    practitioners.add_argument(
        "--organization", default="", help="only practitioners of this organization id"
    )
    practitioners.set_defaults(func=run, appointments_action=print_practitioners)

    slots = actions.add_parser("slots", help="print a practitioner's free slots")
    slots.add_argument("practitioner_id", help="HIN practitioner id")
    slots.add_argument(
        "--date",
        type=date.fromisoformat,
        default=None,
        help="first day, YYYY-MM-DD in --time-zone (default: today)",
    )
    slots.add_argument(
        "--days",
        type=int,
        default=7,
        help=f"number of days to search, 1 to {MAX_DAYS} (default: 7)",
    )
    slots.set_defaults(func=run, appointments_action=print_slots)

    listing = actions.add_parser("list", help="print appointments, earliest first")
    owner = listing.add_mutually_exclusive_group(required=True)
    owner.add_argument("--patient", default="", help="HIN patient id")
    owner.add_argument("--practitioner", default="", help="HIN practitioner id")
    listing.set_defaults(func=run, appointments_action=print_appointments)


def run(args: argparse.Namespace) -> int:
    """Call scheduling through the ingress and print the result."""
    try:
        ZoneInfo(args.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        print(
            f"hin appointments: --time-zone {args.time_zone!r} is not an IANA "
            "time zone such as Africa/Cairo",
            file=sys.stderr,
        )
        return 2
    try:
        channel = ingress_channel_sync(args.state)
    except NetworkNotRunning as exc:
        print(f"hin appointments: {exc}", file=sys.stderr)
        return 1
    with channel:
        stub = pb_grpc.AppointmentsServiceStub(channel)
        metadata = admin_metadata(args.state, roles=("receptionist",))
        try:
            args.appointments_action(stub, metadata, args, sys.stdout)
        except grpc.RpcError as exc:
            code = exc.code().name  # type: ignore[attr-defined]
            details = exc.details()  # type: ignore[attr-defined]
            print(f"hin appointments: {code}: {details}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"hin appointments: {exc}", file=sys.stderr)
            return 2
    return 0


def print_practitioners(
    stub: pb_grpc.AppointmentsServiceStub,
    metadata: Metadata,
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    """Print one line per practitioner: id, identifiers, name."""
    token = ""
    while True:
        response = stub.ListPractitioners(
            pb.ListPractitionersRequest(
                organization_id=args.organization,
                page=types.PageRequest(page_size=PAGE_SIZE, page_token=token),
            ),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        for practitioner in response.practitioners:
            identifiers = ",".join(
                f"{i.system}|{i.value}" for i in practitioner.identifiers
            )
            print(
                f"{practitioner.practitioner_id}\t{identifiers}\t"
                f"{format_name(practitioner.names)}",
                file=out,
            )
        token = response.page.next_page_token
        if not token:
            return


def print_slots(
    stub: pb_grpc.AppointmentsServiceStub,
    metadata: Metadata,
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    """Print one line per free slot: UTC start, UTC end, local start."""
    if not 1 <= args.days <= MAX_DAYS:
        raise ValueError(f"--days {args.days} is not between 1 and {MAX_DAYS}")
    zone = ZoneInfo(args.time_zone)
    first = args.date or datetime.now(zone).date()
    start = datetime.combine(first, time(0), tzinfo=zone)
    end = datetime.combine(first + timedelta(days=args.days), time(0), tzinfo=zone)
    token = ""
    while True:
        response = stub.FindSlots(
            pb.FindSlotsRequest(
                practitioner_id=args.practitioner_id,
                window=types.Period(start=_timestamp(start), end=_timestamp(end)),
                page=types.PageRequest(page_size=PAGE_SIZE, page_token=token),
            ),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        for slot in response.slots:
            print(
                f"{format_utc(slot.period.start)}\t{format_utc(slot.period.end)}\t"
                f"{format_local(slot.period.start, zone)}",
                file=out,
            )
        token = response.page.next_page_token
        if not token:
            return


def print_appointments(
    stub: pb_grpc.AppointmentsServiceStub,
    metadata: Metadata,
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    """Print one line per appointment: id, start, status, visit type, other party."""
    zone = ZoneInfo(args.time_zone)
    token = ""
    while True:
        response = stub.ListAppointments(
            pb.ListAppointmentsRequest(
                patient_id=args.patient,
                practitioner_id=args.practitioner,
                page=types.PageRequest(page_size=PAGE_SIZE, page_token=token),
            ),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        for appointment in response.appointments:
            other = (
                appointment.practitioner_id if args.patient else appointment.patient_id
            )
            status = pb.AppointmentStatus.Name(appointment.status).removeprefix(
                "APPOINTMENT_STATUS_"
            )
            print(
                f"{appointment.appointment_id}\t"
                f"{format_utc(appointment.period.start)}\t"
                f"{format_local(appointment.period.start, zone)}\t{status}\t"
                f"{appointment.service_type.code}\t{other}",
                file=out,
            )
        token = response.page.next_page_token
        if not token:
            return


def format_name(names: Sequence[types.HumanName]) -> str:
    """Return the first name as "prefix given family", or "" when there is none."""
    if not names:
        return ""
    name = names[0]
    if name.text:
        return name.text
    return " ".join([*name.prefix, *name.given, name.family]).strip()


def format_utc(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def format_local(stamp: Timestamp, zone: ZoneInfo) -> str:
    return stamp.ToDatetime(tzinfo=UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp
