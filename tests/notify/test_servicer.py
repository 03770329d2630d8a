"""NotifyService through a real in-process server and a generated stub."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hin.labs.v1 import events_pb2 as labs
from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb
from hin.notify.v1 import notify_service_pb2_grpc as pb_grpc
from mesh.network.cli.notify import recipient_metadata, watch
from mesh.runtime.events import Outbox
from svc_notify import escalation, store
from svc_notify.tables import IntentRow
from tests.notify.conftest import (
    ConsentAuthorizer,
    NotifyNetwork,
    SteppedClock,
    eventually,
    start_notify,
)

ORG = f"org-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
async def net(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> AsyncIterator[NotifyNetwork]:
    state = tmp_path_factory.mktemp("notify-servicer")
    clock, authorizer = SteppedClock(), ConsentAuthorizer()
    host, port = await start_notify(
        state,
        kafka_bootstrap,
        database_url=f"sqlite:///{state / 'notify.db'}",
        extra={},
        clock=clock,
        authorizer=authorizer,
    )
    yield NotifyNetwork(host, port, state, clock, authorizer, ORG)
    await host.stop(grace=1)


@pytest.fixture(scope="module")
async def stub(net: NotifyNetwork) -> AsyncIterator[pb_grpc.NotifyServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{net.port}")
    yield pb_grpc.NotifyServiceStub(channel)
    await channel.close()


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


async def add_intent(
    net: NotifyNetwork,
    recipient: str,
    *,
    patient_id: str = "",
    test: str = "K",
    kind: int = pb.NOTIFICATION_KIND_TEST_RESULT,
) -> str:
    """Store an intent as an event handler would; return its source event id."""
    source_event_id = str(uuid.uuid4())

    def write(session: store.Session) -> None:
        store.add_intents(
            session,
            source_event_id=source_event_id,
            source_event_type="hin.labs.v1.TestResultPublished",
            intents=[
                store.NewIntent(
                    recipient=recipient,
                    kind=kind,
                    priority=pb.NOTIFICATION_PRIORITY_NORMAL,
                    patient_id=patient_id,
                    organization_id=ORG,
                    attributes={"test": test, "result_id": source_event_id},
                )
            ],
            now=net.clock(),
        )

    await net.host.db.run(write)
    return source_event_id


async def read_stream(
    stub: pb_grpc.NotifyServiceStub,
    request: pb.SubscribeRequest,
    metadata: tuple[tuple[str, str]],
    count: int,
) -> list[pb.Notification]:
    """Read ``count`` notifications from a Subscribe stream, then disconnect."""
    call = stub.Subscribe(request, metadata=metadata)
    received = []
    try:
        async with asyncio.timeout(20):
            async for response in call:
                received.append(response.notification)
                if len(received) == count:
                    break
    finally:
        call.cancel()
    return received


async def test_subscribe_rejects_invalid_recipient(net, stub) -> None:
    metadata = net.metadata(roles=["doctor"], practitioner_id="p-1")
    call = stub.Subscribe(
        pb.SubscribeRequest(recipient="doctor-1", after_id=-1), metadata=metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["recipient", "after_id"]


async def test_subscribe_without_token_unauthenticated(stub) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(recipient="practitioner:p-1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_subscribe_to_someone_else_denied(net, stub) -> None:
    metadata = net.metadata(roles=["doctor"], practitioner_id="p-1")
    call = stub.Subscribe(
        pb.SubscribeRequest(recipient="practitioner:p-2"), metadata=metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_subscribe_to_role_of_other_org_denied(net, stub) -> None:
    metadata = net.metadata(roles=["privacy_officer"], organization_id="org-a")
    call = stub.Subscribe(
        pb.SubscribeRequest(recipient="role:privacy_officer@org-b"),
        metadata=metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_subscribe_replays_then_streams_live(net, stub) -> None:
    practitioner_id = f"p-{uuid.uuid4().hex[:6]}"
    recipient = f"practitioner:{practitioner_id}"
    metadata = net.metadata(roles=["doctor"], practitioner_id=practitioner_id)
    stored = [await add_intent(net, recipient) for _ in range(2)]

    call = stub.Subscribe(pb.SubscribeRequest(recipient=recipient), metadata=metadata)
    try:
        async with asyncio.timeout(20):
            replayed = [(await call.read()).notification for _ in range(2)]
            live_source = await add_intent(net, recipient)
            live = (await call.read()).notification
    finally:
        call.cancel()

    assert [n.sequence_id for n in replayed] == [1, 2]
    assert [n.source_event_id for n in replayed] == stored
    assert live.sequence_id == 3
    assert live.source_event_id == live_source


async def test_subscribe_resumes_after_last_id(net, stub) -> None:
    practitioner_id = f"p-{uuid.uuid4().hex[:6]}"
    recipient = f"practitioner:{practitioner_id}"
    metadata = net.metadata(roles=["doctor"], practitioner_id=practitioner_id)
    sources = [await add_intent(net, recipient) for _ in range(3)]

    first = await read_stream(
        stub, pb.SubscribeRequest(recipient=recipient), metadata, 2
    )
    sources += [await add_intent(net, recipient) for _ in range(2)]
    rest = await read_stream(
        stub,
        pb.SubscribeRequest(recipient=recipient, after_id=first[-1].sequence_id),
        metadata,
        3,
    )

    received = first + rest
    assert [n.sequence_id for n in received] == [1, 2, 3, 4, 5]
    assert [n.source_event_id for n in received] == sources


async def test_notification_denied_by_consent_skipped(net, stub) -> None:
    practitioner_id = f"p-{uuid.uuid4().hex[:6]}"
    recipient = f"practitioner:{practitioner_id}"
    net.authorizer.denied.add((recipient, "pat-secret"))
    denied_source = await add_intent(net, recipient, patient_id="pat-secret")
    allowed_source = await add_intent(net, recipient, patient_id="pat-open")
    metadata = net.metadata(roles=["doctor"], practitioner_id=practitioner_id)

    received = await read_stream(
        stub, pb.SubscribeRequest(recipient=recipient), metadata, 1
    )

    assert [n.source_event_id for n in received] == [allowed_source]

    def outcome(session: store.Session) -> str:
        intent = session.exec(
            store.select(IntentRow).where(IntentRow.source_event_id == denied_source)
        ).one()
        return intent.status + " " + intent.outcome

    assert await net.host.db.run(outcome) == (
        f'done {{"denied": ["{recipient}"], "notified": []}}'
    )


async def test_failing_intent_does_not_block_others(net, stub) -> None:
    practitioner_id = f"p-{uuid.uuid4().hex[:6]}"
    recipient = f"practitioner:{practitioner_id}"
    # No template exists for kind 999, so rendering this intent fails.
    broken_source = await add_intent(net, recipient, kind=999)
    good_source = await add_intent(net, recipient)
    metadata = net.metadata(roles=["doctor"], practitioner_id=practitioner_id)

    [received] = await read_stream(
        stub, pb.SubscribeRequest(recipient=recipient), metadata, 1
    )

    def broken(session: store.Session) -> IntentRow:
        return session.exec(
            store.select(IntentRow).where(IntentRow.source_event_id == broken_source)
        ).one()

    intent = await net.host.db.run(broken)
    assert received.source_event_id == good_source
    assert received.sequence_id == 1
    assert intent.status == "pending"
    assert intent.attempts >= 1
    assert '"error": "KeyError: 999"' in intent.outcome


async def test_list_notifications_pages_newest_first(net, stub) -> None:
    patient_id = f"pat-{uuid.uuid4().hex[:6]}"
    recipient = f"patient:{patient_id}"
    metadata = net.metadata(roles=["patient"], patient_id=patient_id)
    for _ in range(5):
        await add_intent(net, recipient, patient_id=patient_id)

    async def all_stored() -> bool:
        response = await stub.ListNotifications(
            pb.ListNotificationsRequest(recipient=recipient), metadata=metadata
        )
        return response.page.total_size == 5

    await eventually(all_stored)
    pages, token = [], ""
    while True:
        response = await stub.ListNotifications(
            pb.ListNotificationsRequest(
                recipient=recipient,
                page={"page_size": 2, "page_token": token},
            ),
            metadata=metadata,
        )
        pages.append([n.sequence_id for n in response.notifications])
        token = response.page.next_page_token
        if not token:
            break

    assert pages == [[5, 4], [3, 2], [1]]


async def test_list_notifications_bad_token_rejected(net, stub) -> None:
    metadata = net.metadata(roles=["patient"], patient_id="pat-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListNotifications(
            pb.ListNotificationsRequest(
                recipient="patient:pat-1", page={"page_token": "not-a-token"}
            ),
            metadata=metadata,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["page.page_token"]


async def test_preferences_round_trip(net, stub) -> None:
    practitioner_id = f"p-{uuid.uuid4().hex[:6]}"
    recipient = f"practitioner:{practitioner_id}"
    metadata = net.metadata(roles=["doctor"], practitioner_id=practitioner_id)
    wanted = pb.Preferences(
        recipient=recipient,
        channels=[events.CHANNEL_EMAIL, events.CHANNEL_WEBHOOK],
        language="ar",
        time_zone="Africa/Cairo",
        quiet_hours=pb.QuietHours(
            start=pb.TimeOfDay(hours=22), end=pb.TimeOfDay(hours=6, minutes=30)
        ),
        email="doctor@example.org",
        phone="+201001234567",
        webhook_url="https://hooks.example.org/hin",
    )

    saved = await stub.SetPreferences(
        pb.SetPreferencesRequest(
            preferences=wanted, webhook_secret="s" * 32, expected_version=0
        ),
        metadata=metadata,
    )
    read = await stub.GetPreferences(
        pb.GetPreferencesRequest(recipient=recipient), metadata=metadata
    )

    expected = pb.Preferences()
    expected.CopyFrom(wanted)
    expected.webhook_secret_set = True
    expected.version = 1
    assert saved.preferences == expected
    assert read.preferences == expected


async def test_preferences_stale_version_aborted(net, stub) -> None:
    patient_id = f"pat-{uuid.uuid4().hex[:6]}"
    recipient = f"patient:{patient_id}"
    metadata = net.metadata(roles=["patient"], patient_id=patient_id)
    request = pb.SetPreferencesRequest(
        preferences=pb.Preferences(recipient=recipient, language="en"),
        expected_version=0,
    )
    await stub.SetPreferences(request, metadata=metadata)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetPreferences(request, metadata=metadata)

    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_preferences_invalid_fields_named(net, stub) -> None:
    metadata = net.metadata(roles=["doctor"], practitioner_id="p-1")
    request = pb.SetPreferencesRequest(
        preferences=pb.Preferences(
            recipient="practitioner:p-1",
            channels=[events.CHANNEL_WEBHOOK, 9],
            language="fr",
            time_zone="Mars/Olympus",
            quiet_hours=pb.QuietHours(
                start=pb.TimeOfDay(hours=24), end=pb.TimeOfDay(minutes=60)
            ),
            email="not-an-address",
            phone="01001234567",
            webhook_url="http://hooks.example.org/hin",
        ),
        webhook_secret="short",
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetPreferences(request, metadata=metadata)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == [
        "preferences.channels[1]",
        "preferences.language",
        "preferences.time_zone",
        "preferences.quiet_hours.start.hours",
        "preferences.quiet_hours.end.minutes",
        "preferences.email",
        "preferences.phone",
        "preferences.webhook_url",
        "webhook_secret",
    ]


async def test_webhook_url_needs_secret(net, stub) -> None:
    practitioner_id = f"p-{uuid.uuid4().hex[:6]}"
    metadata = net.metadata(roles=["doctor"], practitioner_id=practitioner_id)
    request = pb.SetPreferencesRequest(
        preferences=pb.Preferences(
            recipient=f"practitioner:{practitioner_id}",
            webhook_url="http://127.0.0.1:9/hook",
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetPreferences(request, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["webhook_secret"]


async def test_roster_round_trip_versions(net, stub) -> None:
    metadata = net.metadata(roles=["administrator"])
    roster = pb.OnCallRoster(
        organization_id=ORG,
        department="cardiology",
        on_call_practitioner_ids=["p-a", "p-b"],
        department_head_practitioner_id="p-head",
    )
    first = await stub.SetOnCallRoster(
        pb.SetOnCallRosterRequest(roster=roster), metadata=metadata
    )
    roster.on_call_practitioner_ids[:] = ["p-b", "p-a"]
    second = await stub.SetOnCallRoster(
        pb.SetOnCallRosterRequest(roster=roster, expected_version=1),
        metadata=metadata,
    )

    assert first.roster.version == 1
    assert list(second.roster.on_call_practitioner_ids) == ["p-b", "p-a"]
    assert second.roster.version == 2


async def test_roster_of_other_org_denied(net, stub) -> None:
    metadata = net.metadata(roles=["administrator"], organization_id="org-other")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetOnCallRoster(
            pb.SetOnCallRosterRequest(roster=pb.OnCallRoster(organization_id=ORG)),
            metadata=metadata,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_roster_needs_admin_role(net, stub) -> None:
    metadata = net.metadata(roles=["doctor"], practitioner_id="p-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetOnCallRoster(
            pb.SetOnCallRosterRequest(roster=pb.OnCallRoster(organization_id=ORG)),
            metadata=metadata,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_roster_repeated_practitioner_rejected(net, stub) -> None:
    metadata = net.metadata(roles=["administrator"])
    roster = pb.OnCallRoster(organization_id=ORG, on_call_practitioner_ids=["a", "a"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetOnCallRoster(
            pb.SetOnCallRosterRequest(roster=roster), metadata=metadata
        )
    assert violated_fields(caught.value) == ["roster.on_call_practitioner_ids[1]"]


async def test_role_members_on_call_rejected(net, stub) -> None:
    metadata = net.metadata(roles=["administrator"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetRoleMembers(
            pb.SetRoleMembersRequest(organization_id=ORG, role="on_call"),
            metadata=metadata,
        )
    assert violated_fields(caught.value) == ["role"]


async def test_role_members_round_trip(net, stub) -> None:
    metadata = net.metadata(roles=["administrator"])
    response = await stub.SetRoleMembers(
        pb.SetRoleMembersRequest(
            organization_id=ORG, role="privacy_officer", practitioner_ids=["po-1"]
        ),
        metadata=metadata,
    )
    assert list(response.practitioner_ids) == ["po-1"]
    assert response.version == 1


async def test_unfiltered_deliveries_need_admin(net, stub) -> None:
    doctor = net.metadata(roles=["doctor"], practitioner_id="p-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListDeliveries(pb.ListDeliveriesRequest(), metadata=doctor)
    source = await add_intent(net, "practitioner:p-1")

    async def listed_by_admin() -> bool:
        response = await stub.ListDeliveries(
            pb.ListDeliveriesRequest(page={"page_size": 500}),
            metadata=net.metadata(roles=["administrator"]),
        )
        return source in {d.source_event_id for d in response.deliveries}

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await eventually(listed_by_admin)


async def test_list_deliveries_logs_each_channel(net, stub) -> None:
    patient_id = f"pat-{uuid.uuid4().hex[:6]}"
    recipient = f"patient:{patient_id}"
    metadata = net.metadata(roles=["patient"], patient_id=patient_id)
    source = await add_intent(net, recipient, patient_id=patient_id)

    async def final_log() -> list[pb.Delivery] | None:
        response = await stub.ListDeliveries(
            pb.ListDeliveriesRequest(recipient=recipient), metadata=metadata
        )
        rows = list(response.deliveries)
        done = len(rows) == 2 and all(
            d.status != pb.DELIVERY_STATUS_PENDING for d in rows
        )
        return rows if done else None

    rows = await eventually(final_log)

    by_channel = {d.channel: d for d in rows}
    # No SMTP relay is configured in this module and the patient has no
    # address: the e-mail is logged as skipped, the in-app copy as sent.
    assert sorted(by_channel) == [events.CHANNEL_IN_APP, events.CHANNEL_EMAIL]
    assert by_channel[events.CHANNEL_IN_APP].status == pb.DELIVERY_STATUS_SENT
    assert by_channel[events.CHANNEL_EMAIL].status == pb.DELIVERY_STATUS_SKIPPED
    assert by_channel[events.CHANNEL_EMAIL].source_event_id == source


async def test_cli_watch_prints_each_notification(net, stub) -> None:
    practitioner_id = f"p-{uuid.uuid4().hex[:6]}"
    recipient = f"practitioner:{practitioner_id}"
    first = await add_intent(net, recipient, test="Sodium")
    second = await add_intent(net, recipient, test="Potassium")
    out = io.StringIO()

    await watch(
        stub,
        recipient_metadata(net.state, recipient, ORG),
        recipient=recipient,
        after_id=0,
        count=2,
        as_json=True,
        out=out,
    )

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["sequenceId"] for line in lines] == ["1", "2"]
    assert [line["sourceEventId"] for line in lines] == [first, second]
    assert lines[1]["title"] == "New test result"


async def test_channel_preferences_choose_deliveries(net, stub) -> None:
    quiet_id, default_id = f"pat-{uuid.uuid4().hex[:6]}", f"pat-{uuid.uuid4().hex[:6]}"
    for patient_id, channels in ((quiet_id, [events.CHANNEL_IN_APP]), (default_id, [])):
        await stub.SetPreferences(
            pb.SetPreferencesRequest(
                preferences=pb.Preferences(
                    recipient=f"patient:{patient_id}", channels=channels, language="en"
                )
            ),
            metadata=net.metadata(roles=["patient"], patient_id=patient_id),
        )
    sources = {
        patient_id: await add_intent(
            net, f"patient:{patient_id}", patient_id=patient_id
        )
        for patient_id in (quiet_id, default_id)
    }

    async def channels_of(patient_id: str) -> list[int]:
        response = await stub.ListDeliveries(
            pb.ListDeliveriesRequest(source_event_id=sources[patient_id]),
            metadata=net.metadata(roles=["administrator"]),
        )
        return sorted(d.channel for d in response.deliveries)

    async def both_dispatched() -> bool:
        return all([await channels_of(quiet_id), await channels_of(default_id)])

    await eventually(both_dispatched)
    assert await channels_of(quiet_id) == [events.CHANNEL_IN_APP]
    # Preferences without channels keep the default e-mail delivery.
    assert await channels_of(default_id) == [
        events.CHANNEL_IN_APP,
        events.CHANNEL_EMAIL,
    ]


async def test_denied_critical_recipient_escalates_at_once(net, stub) -> None:
    org = f"org-{uuid.uuid4().hex[:6]}"
    ordering, covering = f"p-{uuid.uuid4().hex[:6]}", f"p-{uuid.uuid4().hex[:6]}"
    await stub.SetOnCallRoster(
        pb.SetOnCallRosterRequest(
            roster=pb.OnCallRoster(
                organization_id=org, on_call_practitioner_ids=[ordering, covering]
            )
        ),
        metadata=net.metadata(roles=["administrator"], organization_id=org),
    )
    net.authorizer.denied.add((f"practitioner:{ordering}", "pat-critical"))
    result = labs.TestResult(
        result_id=f"res-{uuid.uuid4().hex[:6]}",
        patient_id="pat-critical",
        ordering_practitioner_id=ordering,
        critical=True,
        version=1,
    )

    def open_alert_and_notify(session: store.Session) -> None:
        escalation.open_alert(
            session,
            outbox=Outbox(service="notify"),
            result=result,
            patient_id=result.patient_id,
            organization_id=org,
            source_event_id=result.result_id,
            now=net.clock(),
            delay=timedelta(seconds=300),
        )
        store.add_intents(
            session,
            source_event_id=result.result_id,
            source_event_type="hin.labs.v1.TestResultPublished",
            intents=[
                store.NewIntent(
                    recipient=f"practitioner:{ordering}",
                    kind=pb.NOTIFICATION_KIND_CRITICAL_RESULT,
                    priority=pb.NOTIFICATION_PRIORITY_URGENT,
                    patient_id=result.patient_id,
                    organization_id=org,
                    attributes={"result_id": result.result_id},
                )
            ],
            now=net.clock(),
        )

    await net.host.db.run(open_alert_and_notify)

    # The escalation delay of this module is 300 s; the covering clinician is
    # told without it because the ordering clinician may not be.
    [escalated] = await read_stream(
        stub,
        pb.SubscribeRequest(recipient=f"practitioner:{covering}"),
        net.metadata(roles=["doctor"], practitioner_id=covering),
        1,
    )
    assert escalated.kind == pb.NOTIFICATION_KIND_CRITICAL_RESULT_ESCALATED
    assert escalated.attributes["result_id"] == result.result_id
    assert escalated.attributes["level"] == "1"
