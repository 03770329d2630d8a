"""NotifyServiceServicer: validate, authorize, then read or write the store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import grpc
from sqlmodel import Session

from hin.notify.v1 import notify_service_pb2 as pb
from hin.notify.v1 import notify_service_pb2_grpc as pb_grpc
from mesh.runtime.authz import Authorizer, authorize
from mesh.runtime.errors import PermissionDenied
from mesh.runtime.principal import PrincipalKind, current_principal
from mesh.runtime.storage import Database
from mesh.runtime.validation import Violations
from svc_notify import messages, store, validation
from svc_notify.domain.recipients import Recipient, RecipientKind, may_read_stream
from svc_notify.errors import StaleVersion
from svc_notify.feed import Wakeups, stream_key, wait_for
from svc_notify.tables import NotificationRow, PreferencesRow, RoleMembersRow, RosterRow

logger = logging.getLogger(__name__)

READ = "notify.notification.read"
WRITE = "notify.notification.write"
ADMIN_READ = "notify.admin.read"
ADMIN_WRITE = "notify.admin.write"
#: Role that may manage other people's preferences.
ADMINISTRATOR_ROLE = "administrator"
#: Notifications read per database round of a Subscribe stream.
STREAM_BATCH = 100


class NotifyServicer(pb_grpc.NotifyServiceServicer):
    """Implements hin.notify.v1.NotifyService."""

    def __init__(
        self,
        *,
        db: Database,
        authorizer: Authorizer,
        wakeups: Wakeups,
        poll_seconds: float,
        clock: Callable[[], datetime],
        allow_private_webhooks: bool = False,
    ) -> None:
        self._allow_private_webhooks = allow_private_webhooks
        self._db = db
        self._authorizer = authorizer
        self._wakeups = wakeups
        self._poll_seconds = poll_seconds
        self._clock = clock

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """Replay stored notifications after after_id, then stream new ones."""
        violations = Violations()
        recipient = validation.check_recipient(
            violations, request.recipient, "recipient"
        )
        if request.after_id < 0:
            violations.add("after_id", "must be 0 or more")
        violations.check()
        assert recipient is not None
        await self._authorize_stream(recipient, READ)

        last = request.after_id
        key = stream_key(str(recipient))
        while True:
            # The waiter is taken before the read, so a notification committed
            # after the read still wakes this loop.
            waiter = self._wakeups.waiter(key)
            rows = await self._db.run(
                store.notifications_after, str(recipient), last, STREAM_BATCH
            )
            for row in rows:
                yield pb.SubscribeResponse(
                    notification=messages.notification_message(row)
                )
                last = row.sequence_id
            if len(rows) < STREAM_BATCH:
                await wait_for(waiter, self._poll_seconds)

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNotificationsResponse:
        """Return one page of a recipient's notifications, newest first."""
        violations = Violations()
        recipient = validation.check_recipient(
            violations, request.recipient, "recipient"
        )
        validation.check_page(violations, request.page)
        before = self._page_position(violations, request.page.page_token)
        violations.check()
        assert recipient is not None
        await self._authorize_stream(recipient, READ)

        size = messages.page_size(request.page.page_size)
        rows, total = await self._db.run(
            _notifications_page, str(recipient), before, size
        )
        response = pb.ListNotificationsResponse(
            notifications=[messages.notification_message(row) for row in rows]
        )
        response.page.total_size = total
        if len(rows) == size and rows[-1].sequence_id > 1:
            response.page.next_page_token = messages.encode_token(rows[-1].sequence_id)
        return response

    async def GetPreferences(
        self, request: pb.GetPreferencesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPreferencesResponse:
        """Return stored preferences, or the defaults at version 0."""
        violations = Violations()
        recipient = validation.check_recipient(
            violations, request.recipient, "recipient"
        )
        violations.check()
        assert recipient is not None
        await self._authorize_preferences(recipient, READ)

        row = await self._db.run(store.load_preferences, str(recipient))
        if row is None:
            return pb.GetPreferencesResponse(
                preferences=pb.Preferences(recipient=str(recipient))
            )
        return pb.GetPreferencesResponse(preferences=messages.preferences_message(row))

    async def SetPreferences(
        self, request: pb.SetPreferencesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPreferencesResponse:
        """Replace a recipient's preferences if expected_version is current."""
        violations = Violations()
        recipient = validation.check_preferences(
            violations, request, allow_private_webhooks=self._allow_private_webhooks
        )
        violations.check()
        assert recipient is not None
        await self._authorize_preferences(recipient, WRITE)

        row = await self._db.run(self._save_preferences, request, str(recipient))
        logger.info(
            "preferences saved",
            extra={"recipient": str(recipient), "version": row.version},
        )
        return pb.SetPreferencesResponse(preferences=messages.preferences_message(row))

    async def SetOnCallRoster(
        self, request: pb.SetOnCallRosterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetOnCallRosterResponse:
        """Replace the on-call order and head of one department."""
        violations = Violations()
        validation.check_roster(violations, request)
        violations.check()
        await self._authorize_admin(request.roster.organization_id, ADMIN_WRITE)

        row = await self._db.run(self._save_roster, request)
        logger.info(
            "on-call roster saved",
            extra={
                "organization_id": row.organization_id,
                "department": row.department,
                "version": row.version,
            },
        )
        return pb.SetOnCallRosterResponse(roster=messages.roster_message(row))

    async def SetRoleMembers(
        self, request: pb.SetRoleMembersRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetRoleMembersResponse:
        """Replace the members of a role in an organization."""
        violations = Violations()
        validation.check_role_members(violations, request)
        violations.check()
        await self._authorize_admin(request.organization_id, ADMIN_WRITE)

        row = await self._db.run(self._save_role_members, request)
        logger.info(
            "role members saved",
            extra={
                "organization_id": row.organization_id,
                "role": row.role,
                "version": row.version,
            },
        )
        return messages.role_members_message(row)

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeliveriesResponse:
        """Return one page of the delivery log, oldest first."""
        violations = Violations()
        recipient = None
        if request.recipient:
            recipient = validation.check_recipient(
                violations, request.recipient, "recipient"
            )
        validation.check_page(violations, request.page)
        offset = self._page_position(violations, request.page.page_token) or 0
        violations.check()
        principal = current_principal()
        if recipient is not None and may_read_stream(principal, recipient):
            await authorize(
                self._authorizer, action=READ, patient_id=_patient_of(recipient)
            )
        else:
            await authorize(
                self._authorizer,
                action=ADMIN_READ,
                organization_id=principal.organization_id,
            )

        size = messages.page_size(request.page.page_size)
        rows, total = await self._db.run(
            lambda session: store.list_deliveries(
                session,
                recipient=request.recipient,
                notification_id=request.notification_id,
                source_event_id=request.source_event_id,
                offset=offset,
                limit=size,
            )
        )
        response = pb.ListDeliveriesResponse(
            deliveries=[messages.delivery_message(row) for row in rows]
        )
        response.page.total_size = total
        if offset + len(rows) < total:
            response.page.next_page_token = messages.encode_token(offset + len(rows))
        return response

    # Authorization -------------------------------------------------------

    async def _authorize_stream(self, recipient: Recipient, action: str) -> None:
        await authorize(
            self._authorizer, action=action, patient_id=_patient_of(recipient)
        )
        if not may_read_stream(current_principal(), recipient):
            raise PermissionDenied(
                f"the caller is not {recipient} and does not hold that role in "
                "that organization; subscribe to your own recipient id",
                reason="NOT_THE_RECIPIENT",
                metadata={"recipient": str(recipient)},
            )

    async def _authorize_preferences(self, recipient: Recipient, action: str) -> None:
        principal = current_principal()
        if principal.kind is PrincipalKind.PERSON and principal.has_role(
            ADMINISTRATOR_ROLE
        ):
            await authorize(
                self._authorizer, action=action, patient_id=_patient_of(recipient)
            )
            return
        await self._authorize_stream(recipient, action)

    async def _authorize_admin(self, organization_id: str, action: str) -> None:
        await authorize(
            self._authorizer, action=action, organization_id=organization_id
        )
        principal = current_principal()
        if (
            principal.kind is PrincipalKind.PERSON
            and principal.organization_id != organization_id
        ):
            raise PermissionDenied(
                f"the caller belongs to organization {principal.organization_id!r}, "
                f"not {organization_id!r}; rosters and roles are managed by each "
                "organization's own staff",
                reason="OTHER_ORGANIZATION",
                metadata={"organization_id": organization_id},
            )

    @staticmethod
    def _page_position(violations: Violations, token: str) -> int | None:
        try:
            return messages.decode_token(token)
        except messages.InvalidPageToken:
            violations.add(
                "page.page_token",
                "is not a token from a previous response; omit it for the first page",
            )
            return None

    # Writes --------------------------------------------------------------

    def _save_preferences(
        self, session: Session, request: pb.SetPreferencesRequest, recipient: str
    ) -> PreferencesRow:
        row = store.load_preferences(session, recipient)
        _check_version(
            row.version if row else 0,
            request.expected_version,
            f"preferences of {recipient}",
        )
        preferences = request.preferences
        secret = request.webhook_secret or (row.webhook_secret if row else "")
        if preferences.webhook_url and not secret:
            missing_secret = Violations()
            missing_secret.add(
                "webhook_secret", "is required when a webhook_url is set first"
            )
            missing_secret.check()

        if row is None:
            row = PreferencesRow(recipient=recipient, updated_at=self._clock())
            session.add(row)
        row.channels = ",".join(str(c) for c in sorted(set(preferences.channels)))
        row.language = preferences.language
        row.time_zone = preferences.time_zone
        if preferences.HasField("quiet_hours"):
            start, end = preferences.quiet_hours.start, preferences.quiet_hours.end
            row.quiet_start_minute = start.hours * 60 + start.minutes
            row.quiet_end_minute = end.hours * 60 + end.minutes
        else:
            row.quiet_start_minute = row.quiet_end_minute = None
        row.email = preferences.email
        row.phone = preferences.phone
        row.webhook_url = preferences.webhook_url
        row.webhook_secret = secret if preferences.webhook_url else ""

        row.version += 1
        row.updated_at = self._clock()
        return row

    def _save_roster(
        self, session: Session, request: pb.SetOnCallRosterRequest
    ) -> RosterRow:
        roster = request.roster
        row = store.load_roster(session, roster.organization_id, roster.department)
        _check_version(
            row.version if row else 0,
            request.expected_version,
            f"roster {roster.organization_id}/{roster.department or '(default)'}",
        )
        if row is None:
            row = RosterRow(
                organization_id=roster.organization_id,
                department=roster.department,
                updated_at=self._clock(),
            )
            session.add(row)
        row.on_call_practitioner_ids = store.dump_json(
            list(roster.on_call_practitioner_ids)
        )
        row.department_head_practitioner_id = roster.department_head_practitioner_id
        row.version += 1
        row.updated_at = self._clock()
        return row

    def _save_role_members(
        self, session: Session, request: pb.SetRoleMembersRequest
    ) -> RoleMembersRow:
        row = store.load_role_members(session, request.organization_id, request.role)
        _check_version(
            row.version if row else 0,
            request.expected_version,
            f"role {request.role} of {request.organization_id}",
        )
        if row is None:
            row = RoleMembersRow(
                organization_id=request.organization_id,
                role=request.role,
                updated_at=self._clock(),
            )
            session.add(row)
        row.practitioner_ids = store.dump_json(list(request.practitioner_ids))
        row.version += 1
        row.updated_at = self._clock()
        return row


def _notifications_page(
    session: Session, recipient: str, before: int | None, size: int
) -> tuple[list[NotificationRow], int]:
    rows = store.notifications_before(session, recipient, before, size)
    return rows, store.count_notifications(session, recipient)


def _check_version(current: int, expected: int, resource: str) -> None:
    if current != expected:
        raise StaleVersion(
            f"{resource} is at version {current}, but the request expected version "
            f"{expected}; read the current version and apply the change again",
            reason="STALE_VERSION",
            metadata={"current_version": str(current)},
        )


def _patient_of(recipient: Recipient) -> str:
    return recipient.id if recipient.kind is RecipientKind.PATIENT else ""
