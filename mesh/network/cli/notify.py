"""``hin notify``: watch a notification stream and manage rosters and roles.

Every subcommand calls NotifyService through the ingress of the running
network, with a development token signed by the local key:

- ``hin notify watch RECIPIENT`` streams a recipient's notifications.
- ``hin notify roster ORG`` replaces the on-call order of a department.
- ``hin notify role-members ORG ROLE`` replaces the members of a role.
- ``hin notify deliveries`` prints the delivery log of a recipient or event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from hin.common.v1 import types_pb2
from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb
from hin.notify.v1 import notify_service_pb2_grpc as pb_grpc
from mesh.network.devkeys import mint_token

Metadata = tuple[tuple[str, str], ...]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hin notify watch|roster|role-members|deliveries``."""
    parser = subparsers.add_parser(
        "notify", help="watch notification streams; manage on-call rosters and roles"
    )
    actions = parser.add_subparsers(
        dest="notify_command", metavar="ACTION", required=True
    )

    watch = actions.add_parser(
        "watch",
        help="stream the notifications of practitioner:<id>, patient:<id> or "
        "role:<role>@<org> until interrupted",
    )
    watch.add_argument("recipient", help="recipient id to subscribe to")
    watch.add_argument(
        "--after",
        type=int,
        default=0,
        help="sequence id of the last notification already seen (default: 0, "
        "replay every stored one)",
    )
    watch.add_argument(
        "--count",
        type=int,
        default=0,
        help="stop after this many notifications (default: 0, never stop)",
    )
    watch.add_argument(
        "--org", default="", help="organization id in the token (default: none)"
    )
    watch.add_argument(
        "--json", action="store_true", help="print one JSON object per line"
    )
    watch.set_defaults(func=run_watch)

    roster = actions.add_parser(
        "roster", help="replace the on-call order and head of one department"
    )
    roster.add_argument("organization_id", help="organization (hospital) id")
    roster.add_argument(
        "--department",
        default="",
        help="department or ward code (default: the organization's default roster)",
    )
    roster.add_argument(
        "--on-call",
        default="",
        help="comma-separated practitioner ids in call order",
    )
    roster.add_argument("--head", default="", help="department head practitioner id")
    roster.add_argument(
        "--expected-version",
        type=int,
        default=0,
        help="version the change is based on (default: 0, a new roster)",
    )
    roster.set_defaults(func=run_roster)

    members = actions.add_parser(
        "role-members", help="replace the practitioners holding a role"
    )
    members.add_argument("organization_id", help="organization (hospital) id")
    members.add_argument("role", help="role name, such as privacy_officer")
    members.add_argument("practitioner_ids", nargs="*", help="member practitioner ids")
    members.add_argument(
        "--expected-version",
        type=int,
        default=0,
        help="version the change is based on (default: 0, no members yet)",
    )
    members.set_defaults(func=run_role_members)

    log = actions.add_parser("deliveries", help="print the delivery log")
    log.add_argument("--recipient", default="", help="recipient id to filter by")
    log.add_argument("--event", default="", help="source event id to filter by")
    log.add_argument(
        "--org",
        default="",
        help="organization id of the administrator token (default: none)",
    )
    log.set_defaults(func=run_deliveries)


# watch ------------------------------------------------------------------------


def run_watch(args: argparse.Namespace) -> int:
    """Stream notifications to stdout; return 0 on interrupt or after --count."""
    from mesh.network.clients import ingress_channel

    try:
        metadata = recipient_metadata(args.state, args.recipient, args.org)
    except ValueError as exc:
        print(f"hin notify watch: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        async with ingress_channel(args.state) as channel:
            return await watch(
                pb_grpc.NotifyServiceStub(channel),
                metadata,
                recipient=args.recipient,
                after_id=args.after,
                count=args.count,
                as_json=args.json,
                out=sys.stdout,
            )

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except grpc.aio.AioRpcError as exc:
        print(f"hin notify watch: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


async def watch(
    stub: pb_grpc.NotifyServiceStub,
    metadata: Metadata,
    *,
    recipient: str,
    after_id: int,
    count: int,
    as_json: bool,
    out: TextIO,
) -> int:
    """Print notifications from a Subscribe stream; stop after ``count`` if set."""
    call = stub.Subscribe(
        pb.SubscribeRequest(recipient=recipient, after_id=after_id),
        metadata=metadata,
    )
    printed = 0
    try:
        async for response in call:
            out.write(format_notification(response.notification, as_json) + "\n")
            out.flush()
            printed += 1
            if count and printed >= count:
                break
    finally:
        call.cancel()
    return 0


def format_notification(notification: pb.Notification, as_json: bool) -> str:
    """Return one line describing a notification."""
    if as_json:
        return json.dumps(
            json_format.MessageToDict(notification), ensure_ascii=False, sort_keys=True
        )
    kind = pb.NotificationKind.Name(notification.kind).removeprefix(
        "NOTIFICATION_KIND_"
    )
    urgent = (
        " URGENT" if notification.priority == pb.NOTIFICATION_PRIORITY_URGENT else ""
    )
    return (
        f"#{notification.sequence_id} {kind}{urgent} "
        f"{notification.created_at.ToJsonString()} {notification.title}: "
        f"{notification.body}"
    )


def recipient_metadata(state: Path, recipient: str, organization_id: str) -> Metadata:
    """Mint a development token that makes the caller the recipient.

    Raises:
        ValueError: when the recipient id has none of the three forms.
    """
    prefix, _, rest = recipient.partition(":")
    practitioner_id = patient_id = ""
    if prefix == "practitioner" and rest:
        roles, practitioner_id = ["doctor"], rest
    elif prefix == "patient" and rest:
        roles, patient_id = ["patient"], rest
    elif prefix == "role" and "@" in rest:
        role, _, organization_id = rest.partition("@")
        roles = [role]
    else:
        raise ValueError(
            f"recipient {recipient!r} is invalid; use practitioner:<id>, "
            "patient:<id> or role:<role>@<organization id>"
        )
    token = mint_token(
        state,
        subject=f"hin-cli:{recipient}",
        roles=roles,
        organization_id=organization_id,
        practitioner_id=practitioner_id,
        patient_id=patient_id,
    )
    return (("authorization", f"Bearer {token}"),)


# roster, role-members, deliveries ------------------------------------------------


def run_roster(args: argparse.Namespace) -> int:
    """Replace a roster and print it."""
    request = pb.SetOnCallRosterRequest(
        roster=pb.OnCallRoster(
            organization_id=args.organization_id,
            department=args.department,
            on_call_practitioner_ids=_split(args.on_call),
            department_head_practitioner_id=args.head,
        ),
        expected_version=args.expected_version,
    )
    return _call(
        args.state,
        args.organization_id,
        "roster",
        lambda stub, metadata: stub.SetOnCallRoster(request, metadata=metadata).roster,
    )


def run_role_members(args: argparse.Namespace) -> int:
    """Replace the members of a role and print them."""
    request = pb.SetRoleMembersRequest(
        organization_id=args.organization_id,
        role=args.role,
        practitioner_ids=args.practitioner_ids,
        expected_version=args.expected_version,
    )
    return _call(
        args.state,
        args.organization_id,
        "role-members",
        lambda stub, metadata: stub.SetRoleMembers(request, metadata=metadata),
    )


def run_deliveries(args: argparse.Namespace) -> int:
    """Print the delivery log of a recipient or a source event, one per line."""
    request = pb.ListDeliveriesRequest(
        recipient=args.recipient,
        source_event_id=args.event,
        page=types_pb2.PageRequest(page_size=500),
    )

    def list_deliveries(
        stub: pb_grpc.NotifyServiceStub, metadata: Metadata
    ) -> pb.ListDeliveriesResponse:
        return stub.ListDeliveries(request, metadata=metadata)

    return _call(args.state, args.org, "deliveries", list_deliveries)


def format_delivery(delivery: pb.Delivery) -> str:
    """Return one line of the delivery log."""
    channel = events.Channel.Name(delivery.channel).removeprefix("CHANNEL_")
    status = pb.DeliveryStatus.Name(delivery.status).removeprefix("DELIVERY_STATUS_")
    error = f" ({delivery.last_error})" if delivery.last_error else ""
    return (
        f"{delivery.recipient} {channel} {status} attempts={delivery.attempts} "
        f"event={delivery.source_event_id}{error}"
    )


def _call(
    state: Path,
    organization_id: str,
    action: str,
    call: Callable[[pb_grpc.NotifyServiceStub, Metadata], Message],
) -> int:
    from mesh.network.clients import admin_metadata, ingress_channel_sync

    try:
        with ingress_channel_sync(state) as channel:
            stub = pb_grpc.NotifyServiceStub(channel)
            metadata = admin_metadata(state, organization_id=organization_id)
            response = call(stub, metadata)
    except grpc.RpcError as exc:
        print(f"hin notify {action}: {_describe(exc)}", file=sys.stderr)
        return 1
    if isinstance(response, pb.ListDeliveriesResponse):
        for delivery in response.deliveries:
            print(format_delivery(delivery))
    else:
        print(json_format.MessageToJson(response, sort_keys=True))
    return 0


def _split(text: str) -> Sequence[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _describe(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)
