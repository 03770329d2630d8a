"""svc_notify end to end: events on the real broker, SMTP, webhooks, SMS, streams.

One svc_notify runs for the module on PostgreSQL. Upstream events travel
through another context's outbox and relay, or through a plain producer with
the same CloudEvents headers where a test needs a malformed or repeated
record. The service's clock is a wall clock that tests move forward to pass
the escalation delay and quiet hours without waiting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message as EmailMessage
from typing import Any

import grpc
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from sqlmodel import select

from hin.appointments.v1 import events_pb2 as appointments
from hin.authz.v1 import events_pb2 as authz
from hin.billing.v1 import events_pb2 as billing
from hin.common.v1 import types_pb2 as common
from hin.labs.v1 import events_pb2 as labs
from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb
from hin.notify.v1 import notify_service_pb2_grpc as pb_grpc
from hin.records.v1 import events_pb2 as records
from mesh.runtime.events import producer_config, topic_for_event
from mesh.runtime.events.envelope import cloudevents_headers, decode_headers
from svc_notify.signing import WebhookSignatureError, verify_webhook
from svc_notify.tables import CriticalAlertRow, PatientContactRow
from tests.notify.conftest import (
    ConsentAuthorizer,
    HttpReceiver,
    NotifyNetwork,
    SmtpInbox,
    SteppedClock,
    UpstreamPublisher,
    eventually,
    json_body,
    start_notify,
)

pytestmark = pytest.mark.postgres

RUN = uuid.uuid4().hex[:6]
ORG = f"hosp-{RUN}"
ESCALATION_SECONDS = 30
SECRET = "webhook-secret-" + "x" * 24


def ids(prefix: str) -> str:
    return f"{prefix}-{RUN}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
async def net(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    postgres_database: Callable[[], str],
    smtp_inbox: SmtpInbox,
    http_receiver: HttpReceiver,
) -> AsyncIterator[NotifyNetwork]:
    state = tmp_path_factory.mktemp("notify-acceptance")
    clock, authorizer = SteppedClock(), ConsentAuthorizer()
    host, port = await start_notify(
        state,
        kafka_bootstrap,
        database_url=postgres_database(),
        extra={
            "HIN_NOTIFY_ESCALATION_SECONDS": str(ESCALATION_SECONDS),
            "HIN_NOTIFY_SMTP_HOST": "127.0.0.1",
            "HIN_NOTIFY_SMTP_PORT": str(smtp_inbox.port),
            "HIN_NOTIFY_SMS_URL": http_receiver.url("/sms"),
            # Retries start at 0.2 s and double; eight attempts span about 50 s.
            "HIN_NOTIFY_RETRY_BASE_SECONDS": "0.2",
            "HIN_NOTIFY_MAX_ATTEMPTS": "8",
        },
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


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> Iterator[UpstreamPublisher]:
    folder = tmp_path_factory.mktemp("upstream")
    publisher = UpstreamPublisher(
        service="labs",
        bootstrap=kafka_bootstrap,
        database_url=f"sqlite:///{folder / 'upstream.db'}",
    )
    yield publisher
    publisher.close()


@pytest.fixture(scope="module")
async def roster(net: NotifyNetwork, stub: pb_grpc.NotifyServiceStub) -> dict[str, str]:
    """Default on-call roster of the organization: two clinicians and a head."""
    people = {"first": ids("dr-first"), "next": ids("dr-next"), "head": ids("dr-head")}
    await stub.SetOnCallRoster(
        pb.SetOnCallRosterRequest(
            roster=pb.OnCallRoster(
                organization_id=ORG,
                on_call_practitioner_ids=[people["first"], people["next"]],
                department_head_practitioner_id=people["head"],
            )
        ),
        metadata=net.metadata(roles=["administrator"]),
    )
    return people


# Event builders ------------------------------------------------------------


def potassium(
    *, patient_id: str, ordering: str, critical: bool, value: str = "6.9"
) -> labs.TestResultPublished:
    return labs.TestResultPublished(
        context=common.EventContext(organization_id=ORG),
        result=labs.TestResult(
            result_id=ids("res"),
            order_id=ids("ord"),
            patient_id=patient_id,
            test=common.Coding(
                system="http://loinc.org", code="2823-3", display="Potassium"
            ),
            value=labs.ResultValue(quantity=value, unit="mmol/L"),
            reference_range=labs.ReferenceRange(low="3.5", high="5.1"),
            interpretation=(
                labs.INTERPRETATION_CRITICAL_HIGH
                if critical
                else labs.INTERPRETATION_NORMAL
            ),
            status=labs.RESULT_STATUS_FINAL,
            critical=critical,
            ordering_practitioner_id=ordering,
            performing_organization_id=ORG,
            version=1,
        ),
    )


def registered(patient_id: str, email: str = "") -> records.PatientRegistered:
    telecom = [common.ContactPoint(system="email", value=email)] if email else []
    return records.PatientRegistered(
        context=common.EventContext(organization_id=ORG),
        patient=records.PatientSnapshot(
            patient_id=patient_id,
            managing_organization_id=ORG,
            telecom=telecom,
            version=1,
        ),
    )


# Stream helpers ------------------------------------------------------------


async def next_notifications(
    net: NotifyNetwork,
    stub: pb_grpc.NotifyServiceStub,
    recipient: str,
    count: int,
    *,
    after_id: int = 0,
    **claims: str,
) -> list[pb.Notification]:
    """Subscribe as the recipient, read ``count`` notifications, disconnect."""
    roles = ["patient"] if recipient.startswith("patient:") else ["doctor"]
    call = stub.Subscribe(
        pb.SubscribeRequest(recipient=recipient, after_id=after_id),
        metadata=net.metadata(roles=roles, **claims),
    )
    received = []
    try:
        async with asyncio.timeout(30):
            async for response in call:
                received.append(response.notification)
                if len(received) == count:
                    break
    finally:
        call.cancel()
    return received


async def practitioner_stream(
    net: NotifyNetwork,
    stub: pb_grpc.NotifyServiceStub,
    practitioner_id: str,
    count: int,
    after_id: int = 0,
) -> list[pb.Notification]:
    return await next_notifications(
        net,
        stub,
        f"practitioner:{practitioner_id}",
        count,
        after_id=after_id,
        practitioner_id=practitioner_id,
    )


async def stored(
    net: NotifyNetwork, stub: pb_grpc.NotifyServiceStub, recipient: str
) -> list[pb.Notification]:
    """Return every stored notification of a recipient, oldest first."""
    kind, _, person_id = recipient.partition(":")
    response = await stub.ListNotifications(
        pb.ListNotificationsRequest(recipient=recipient, page={"page_size": 500}),
        metadata=net.metadata(roles=["doctor", "patient"], **{f"{kind}_id": person_id}),
    )
    return list(reversed(response.notifications))


async def deliveries(
    net: NotifyNetwork, stub: pb_grpc.NotifyServiceStub, source_event_id: str
) -> list[pb.Delivery]:
    response = await stub.ListDeliveries(
        pb.ListDeliveriesRequest(source_event_id=source_event_id),
        metadata=net.metadata(roles=["administrator"]),
    )
    return list(response.deliveries)


def emails_to(inbox: SmtpInbox, address: str) -> list[EmailMessage]:
    return [
        message_from_bytes(envelope.content)
        for envelope in inbox.messages
        if address in envelope.rcpt_tos
    ]


# Broker helpers -------------------------------------------------------------


def produce_raw(
    bootstrap: str,
    *,
    topic: str,
    key: str,
    value: bytes,
    event_type: str,
    event_id: str,
) -> None:
    """Send one record with the bus's CloudEvents headers and partitioner."""
    producer = Producer(
        producer_config(
            bootstrap=bootstrap,
            client_id="notify-test-raw",
            extra={},
            delivery_timeout=10.0,
        )
    )
    producer.produce(
        topic,
        key=key.encode(),
        value=value,
        headers=cloudevents_headers(
            event_id=event_id,
            source="hin://labs",
            event_type=event_type,
            time=datetime.now(UTC),
            subject="",
            traceparent="",
            tracestate="",
        ),
    )
    assert producer.flush(10) == 0


def read_topic(
    bootstrap: str,
    topic: str,
    done: Callable[[list[tuple[dict[str, str], bytes]]], bool],
) -> list[tuple[dict[str, str], bytes]]:
    """Read a topic from its start until ``done`` holds for what was read."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"notify-test-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        )
        records_read: list[tuple[dict[str, str], bytes]] = []
        deadline = time.monotonic() + 30
        while not done(records_read):
            assert time.monotonic() < deadline, f"{topic}: expected records missing"
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            records_read.append(
                (decode_headers(message.headers()), message.value() or b"")
            )
        return records_read
    finally:
        consumer.close()


def escalations_of(
    records_read: list[tuple[dict[str, str], bytes]], result_id: str
) -> list[events.CriticalAlertEscalated]:
    found = []
    for headers, value in records_read:
        if headers.get("ce_type") != "hin.notify.v1.CriticalAlertEscalated":
            continue
        event = events.CriticalAlertEscalated.FromString(value)
        if event.result_id == result_id:
            found.append(event)
    return sorted(found, key=lambda e: e.level)


# Critical results -------------------------------------------------------------


async def test_critical_result_reaches_ordering_clinician(
    net, stub, upstream, roster, http_receiver
) -> None:
    patient_id = ids("pat")
    ordering = roster["first"]
    await stub.SetPreferences(
        pb.SetPreferencesRequest(
            preferences=pb.Preferences(
                recipient=f"practitioner:{ordering}",
                channels=[events.CHANNEL_SMS],
                phone="+201001234567",
            )
        ),
        metadata=net.metadata(roles=["doctor"], practitioner_id=ordering),
    )
    event = potassium(patient_id=patient_id, ordering=ordering, critical=True)
    await upstream.publish((registered(patient_id), patient_id), (event, patient_id))

    [notification] = await practitioner_stream(net, stub, ordering, 1)

    assert notification.kind == pb.NOTIFICATION_KIND_CRITICAL_RESULT
    assert notification.priority == pb.NOTIFICATION_PRIORITY_URGENT
    assert notification.patient_id == patient_id
    assert notification.attributes["result_id"] == event.result.result_id
    assert "Potassium: 6.9 mmol/L (critical high)" in notification.body

    async def sms_sent() -> list[Any]:
        return [
            json_body(r)
            for r in http_receiver.received("/sms")
            if event.result.result_id in str(r.body)
            or notification.notification_id in json_body(r)["text"]
        ]

    [sms] = await eventually(sms_sent)
    assert sms["to"] == "+201001234567"
    assert sms["text"].startswith("URGENT: critical test result")
    # Text messages leave the network, so they carry no clinical values.
    assert "6.9" not in sms["text"]


async def test_unacknowledged_result_escalates_after_delay(
    net, stub, upstream, roster, kafka_bootstrap
) -> None:
    patient_id = ids("pat")
    event = potassium(patient_id=patient_id, ordering=roster["first"], critical=True)
    await upstream.publish((event, patient_id))
    result_id = event.result.result_id
    ordering_seen = await stored_after(net, stub, roster["first"], result_id)
    assert ordering_seen.kind == pb.NOTIFICATION_KIND_CRITICAL_RESULT
    next_before = await notifications_about(net, stub, roster["next"], result_id)

    net.clock.advance(ESCALATION_SECONDS)
    escalated = await stored_after(net, stub, roster["next"], result_id)
    net.clock.advance(ESCALATION_SECONDS)
    headed = await stored_after(net, stub, roster["head"], result_id)

    assert next_before == []
    assert escalated.kind == pb.NOTIFICATION_KIND_CRITICAL_RESULT_ESCALATED
    assert escalated.priority == pb.NOTIFICATION_PRIORITY_URGENT
    assert escalated.attributes["level"] == "1"
    assert headed.attributes["level"] == "2"

    emitted = await asyncio.to_thread(
        read_topic,
        kafka_bootstrap,
        "hin.notify.events.v1",
        lambda read: len(escalations_of(read, result_id)) == 3,
    )
    assert [(e.level, e.recipient) for e in escalations_of(emitted, result_id)] == [
        (0, f"practitioner:{roster['first']}"),
        (1, f"practitioner:{roster['next']}"),
        (2, f"practitioner:{roster['head']}"),
    ]


async def test_acknowledgment_stops_escalation(net, stub, upstream, roster) -> None:
    patient_id = ids("pat")
    acknowledged = potassium(
        patient_id=patient_id, ordering=roster["first"], critical=True
    )
    acknowledged_id = acknowledged.result.result_id
    acknowledgment = labs.CriticalResultAcknowledged(
        context=common.EventContext(organization_id=ORG),
        result_id=acknowledged_id,
        patient_id=patient_id,
        acknowledged_by=f"practitioner:{roster['first']}",
    )
    await upstream.publish((acknowledged, patient_id), (acknowledgment, patient_id))

    async def alert_status() -> str:
        def load(session: Any) -> str:
            row = session.exec(
                select(CriticalAlertRow).where(
                    CriticalAlertRow.result_id == acknowledged_id
                )
            ).first()
            return row.status if row else ""

        status = await net.host.db.run(load)
        return status if status == "acknowledged" else ""

    await eventually(alert_status)

    # A second, unacknowledged result escalates in the same scan as the first
    # would, so its escalation shows that the scanner ran past the due time.
    unacknowledged = potassium(
        patient_id=patient_id, ordering=roster["first"], critical=True
    )
    await upstream.publish((unacknowledged, patient_id))
    await stored_after(net, stub, roster["first"], unacknowledged.result.result_id)
    net.clock.advance(ESCALATION_SECONDS)
    await stored_after(net, stub, roster["next"], unacknowledged.result.result_id)

    assert await notifications_about(net, stub, roster["next"], acknowledged_id) == []


async def stored_after(
    net: NotifyNetwork,
    stub: pb_grpc.NotifyServiceStub,
    practitioner_id: str,
    result_id: str,
) -> pb.Notification:
    """Wait for the practitioner's notification about a result and return it."""

    async def found() -> list[pb.Notification]:
        return await notifications_about(net, stub, practitioner_id, result_id)

    [notification] = await eventually(found)
    return notification


async def notifications_about(
    net: NotifyNetwork,
    stub: pb_grpc.NotifyServiceStub,
    practitioner_id: str,
    result_id: str,
) -> list[pb.Notification]:
    everything = await stored(net, stub, f"practitioner:{practitioner_id}")
    return [n for n in everything if n.attributes.get("result_id") == result_id]


# Streams --------------------------------------------------------------------


async def test_resumed_subscriber_gets_each_once(net, stub, upstream) -> None:
    patient_id, practitioner_id = ids("pat"), ids("dr")
    first = [
        potassium(
            patient_id=patient_id,
            ordering=practitioner_id,
            critical=False,
            value=f"4.{i}",
        )
        for i in range(3)
    ]
    await upstream.publish(*((e, patient_id) for e in first))
    before = await practitioner_stream(net, stub, practitioner_id, 2)

    later = [
        potassium(
            patient_id=patient_id,
            ordering=practitioner_id,
            critical=False,
            value=f"5.{i}",
        )
        for i in range(2)
    ]
    await upstream.publish(*((e, patient_id) for e in later))
    after = await practitioner_stream(
        net, stub, practitioner_id, 3, after_id=before[-1].sequence_id
    )

    received = before + after
    published = [e.result.result_id for e in first + later]
    assert [n.attributes["result_id"] for n in received] == published
    assert [n.sequence_id for n in received] == [1, 2, 3, 4, 5]
    assert len(await stored(net, stub, f"practitioner:{practitioner_id}")) == 5


async def test_historical_result_notifies_no_one(net, stub, upstream) -> None:
    patient_id, practitioner_id = ids("pat"), ids("dr")
    historical = potassium(
        patient_id=patient_id, ordering=practitioner_id, critical=True
    )
    historical.historical = True
    current = potassium(patient_id=patient_id, ordering=practitioner_id, critical=False)
    await upstream.publish((historical, patient_id), (current, patient_id))

    [first] = await practitioner_stream(net, stub, practitioner_id, 1)

    # Both events share the patient's partition, so the historical one was
    # handled before the current one.
    assert first.attributes["result_id"] == current.result.result_id
    assert first.sequence_id == 1


# E-mail, webhooks -------------------------------------------------------------


async def test_result_email_reaches_smtp_server(
    net, stub, upstream, smtp_inbox
) -> None:
    patient_id = ids("pat")
    address = f"{patient_id}@example.org"
    event = potassium(
        patient_id=patient_id, ordering=ids("dr"), critical=False, value="4.2"
    )
    await upstream.publish(
        (registered(patient_id, address), patient_id), (event, patient_id)
    )

    async def received() -> list[EmailMessage]:
        return emails_to(smtp_inbox, address)

    [email] = await eventually(received)
    [notification] = await stored(net, stub, f"patient:{patient_id}")
    text = email.get_payload(decode=True).decode()

    assert email["Subject"] == "New test result"
    assert email["X-HIN-Notification-Id"] == notification.notification_id
    assert notification.notification_id in text
    # E-mail leaves the network, so it carries no clinical values.
    assert "4.2" not in text


async def test_email_waits_for_late_registration(
    net, stub, upstream, smtp_inbox
) -> None:
    patient_id = ids("pat")
    address = f"{patient_id}@example.org"
    event = potassium(
        patient_id=patient_id, ordering=ids("dr"), critical=False, value="4.4"
    )
    [event_id] = await upstream.publish((event, patient_id))

    async def waiting_email() -> list[pb.Delivery]:
        return [
            d
            for d in await deliveries(net, stub, event_id)
            if d.channel == events.CHANNEL_EMAIL and d.attempts >= 1
        ]

    [waiting] = await eventually(waiting_email)
    await upstream.publish((registered(patient_id, address), patient_id))

    async def received() -> list[EmailMessage]:
        return emails_to(smtp_inbox, address)

    [email] = await eventually(received)
    assert waiting.status == pb.DELIVERY_STATUS_PENDING
    assert waiting.last_error == "patient contact details are not known yet"
    assert email["Subject"] == "New test result"


async def test_webhook_signed_and_retried(net, stub, upstream, http_receiver) -> None:
    practitioner_id = ids("dr")
    path = f"/hook/{practitioner_id}"
    http_receiver.statuses[path] = [503]
    await stub.SetPreferences(
        pb.SetPreferencesRequest(
            preferences=pb.Preferences(
                recipient=f"practitioner:{practitioner_id}",
                channels=[events.CHANNEL_WEBHOOK],
                webhook_url=http_receiver.url(path),
            ),
            webhook_secret=SECRET,
        ),
        metadata=net.metadata(roles=["doctor"], practitioner_id=practitioner_id),
    )
    patient_id = ids("pat")
    event = potassium(patient_id=patient_id, ordering=practitioner_id, critical=False)
    [event_id] = await upstream.publish((event, patient_id))

    async def delivered() -> list[pb.Delivery]:
        rows = await deliveries(net, stub, event_id)
        return [
            d
            for d in rows
            if d.channel == events.CHANNEL_WEBHOOK
            and d.status == pb.DELIVERY_STATUS_SENT
        ]

    [delivery] = await eventually(delivered)
    requests = http_receiver.received(path)
    accepted = requests[-1]
    tampered = accepted.body.replace(b"6.9", b"4.0")

    assert len(requests) == 2
    assert delivery.attempts == 2
    assert verify_webhook(SECRET, accepted.headers, accepted.body) > 0
    assert json_body(accepted)["attributes"]["result_id"] == event.result.result_id
    assert tampered != accepted.body
    with pytest.raises(WebhookSignatureError):
        verify_webhook(SECRET, accepted.headers, tampered)


# Robustness ------------------------------------------------------------------


async def test_poison_event_does_not_block_patient(
    net, stub, upstream, kafka_bootstrap
) -> None:
    patient_id, practitioner_id = ids("pat"), ids("dr")
    topic = topic_for_event(labs.TestResultPublished)
    undecodable_id = str(uuid.uuid4())
    await asyncio.to_thread(
        produce_raw,
        kafka_bootstrap,
        topic=topic,
        key=patient_id,
        # Field 2 claims 127 bytes but only one follows: a truncated message.
        value=b"\x12\x7fx",
        event_type="hin.labs.v1.TestResultPublished",
        event_id=undecodable_id,
    )
    unroutable = labs.TestResultPublished(
        result=labs.TestResult(patient_id=patient_id, critical=True)
    )
    valid = potassium(patient_id=patient_id, ordering=practitioner_id, critical=True)
    [unroutable_id, _] = await upstream.publish(
        (unroutable, patient_id), (valid, patient_id)
    )

    [notification] = await practitioner_stream(net, stub, practitioner_id, 1)

    assert notification.attributes["result_id"] == valid.result.result_id
    dead = await asyncio.to_thread(
        read_topic,
        kafka_bootstrap,
        f"{topic}.dlq",
        lambda read: (
            {undecodable_id, unroutable_id}
            <= {headers.get("ce_id") for headers, _ in read}
        ),
    )
    assert {undecodable_id, unroutable_id} <= {h.get("ce_id") for h, _ in dead}


async def test_redelivered_event_sends_nothing_twice(
    net, stub, upstream, smtp_inbox, kafka_bootstrap
) -> None:
    patient_id = ids("pat")
    address = f"{patient_id}@example.org"
    event = potassium(patient_id=patient_id, ordering=ids("dr"), critical=False)
    [_, event_id] = await upstream.publish(
        (registered(patient_id, address), patient_id), (event, patient_id)
    )

    async def emails() -> list[EmailMessage]:
        return emails_to(smtp_inbox, address)

    await eventually(emails)

    # Send the same record again, as a relay does when it crashed before
    # marking the row sent. A later result on the same partition then shows
    # that the consumer has passed the repeated record.
    await asyncio.to_thread(
        produce_raw,
        kafka_bootstrap,
        topic=topic_for_event(event),
        key=patient_id,
        value=event.SerializeToString(),
        event_type="hin.labs.v1.TestResultPublished",
        event_id=event_id,
    )
    marker = potassium(patient_id=patient_id, ordering=ids("dr"), critical=False)
    await upstream.publish((marker, patient_id))
    await eventually(lambda: _count_at_least(emails, 2))

    about_event = [
        n
        for n in await stored(net, stub, f"patient:{patient_id}")
        if n.source_event_id == event_id
    ]
    channels = sorted(
        d.channel
        for d in await deliveries(net, stub, event_id)
        if d.recipient == f"patient:{patient_id}"
    )
    assert len(about_event) == 1
    assert channels == [events.CHANNEL_IN_APP, events.CHANNEL_EMAIL]
    assert len(emails_to(smtp_inbox, address)) == 2


async def _count_at_least(probe: Callable[[], Any], count: int) -> bool:
    return len(await probe()) >= count


# Preferences ----------------------------------------------------------------


async def test_quiet_hours_defer_routine_not_urgent(
    net, stub, upstream, smtp_inbox
) -> None:
    practitioner_id = ids("dr")
    address = f"{practitioner_id}@example.org"
    now = net.clock()
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    await stub.SetPreferences(
        pb.SetPreferencesRequest(
            preferences=pb.Preferences(
                recipient=f"practitioner:{practitioner_id}",
                channels=[events.CHANNEL_EMAIL],
                email=address,
                time_zone="UTC",
                quiet_hours=pb.QuietHours(
                    start=pb.TimeOfDay(hours=start.hour, minutes=start.minute),
                    end=pb.TimeOfDay(hours=end.hour, minutes=end.minute),
                ),
            )
        ),
        metadata=net.metadata(roles=["doctor"], practitioner_id=practitioner_id),
    )
    patient_id = ids("pat")
    routine = potassium(patient_id=patient_id, ordering=practitioner_id, critical=False)
    urgent = potassium(patient_id=patient_id, ordering=practitioner_id, critical=True)
    [routine_id, _] = await upstream.publish(
        (routine, patient_id), (urgent, patient_id)
    )

    async def received() -> list[EmailMessage]:
        return emails_to(smtp_inbox, address)

    [first] = await eventually(received)
    [routine_email] = [
        d
        for d in await deliveries(net, stub, routine_id)
        if d.channel == events.CHANNEL_EMAIL
        and d.recipient == f"practitioner:{practitioner_id}"
    ]
    net.clock.advance(2 * 3600)
    await eventually(lambda: _count_at_least(received, 2))
    second = emails_to(smtp_inbox, address)[1]

    assert first["Subject"] == "URGENT: critical test result"
    assert routine_email.status == pb.DELIVERY_STATUS_PENDING
    assert routine_email.next_attempt_at.ToDatetime(tzinfo=UTC) == end.replace(
        second=0, microsecond=0
    )
    assert second["Subject"] == "New test result"


async def test_arabic_preference_renders_arabic(net, stub, upstream) -> None:
    patient_id = ids("pat")
    await stub.SetPreferences(
        pb.SetPreferencesRequest(
            preferences=pb.Preferences(
                recipient=f"patient:{patient_id}",
                language="ar",
                time_zone="Africa/Cairo",
            )
        ),
        metadata=net.metadata(roles=["patient"], patient_id=patient_id),
    )
    booked = appointments.AppointmentBooked(
        context=common.EventContext(organization_id=ORG),
        appointment=appointments.AppointmentSnapshot(
            appointment_id=ids("appt"),
            patient_id=patient_id,
            practitioner_id=ids("dr"),
            organization_id=ORG,
            period=common.Period(start={"seconds": 1_780_000_000}),
        ),
    )
    await upstream.publish((booked, patient_id))

    [notification] = await next_notifications(
        net, stub, f"patient:{patient_id}", 1, patient_id=patient_id
    )

    # 1_780_000_000 is 2026-05-28 20:26:40 UTC, 23:26 in Cairo (UTC+3 in May).
    assert notification.language == "ar"
    assert notification.title == "تم حجز موعد"
    assert "2026-05-28 23:26 Africa/Cairo" in notification.body


async def test_break_glass_reaches_privacy_officers(net, stub, upstream) -> None:
    officer = ids("po")
    await stub.SetRoleMembers(
        pb.SetRoleMembersRequest(
            organization_id=ORG, role="privacy_officer", practitioner_ids=[officer]
        ),
        metadata=net.metadata(roles=["administrator"]),
    )
    patient_id = ids("pat")
    grant = authz.BreakGlassAccessGranted(
        context=common.EventContext(organization_id=ORG),
        grant_id=ids("grant"),
        patient_id=patient_id,
        subject="dr-emergency",
        organization_id=ORG,
        reason="unconscious patient in the emergency room",
    )
    await upstream.publish((grant, patient_id))

    [to_officer] = await practitioner_stream(net, stub, officer, 1)
    [to_role] = await role_stream(net, stub, "privacy_officer", grant.grant_id)

    assert to_officer.kind == pb.NOTIFICATION_KIND_BREAK_GLASS
    assert to_officer.attributes["grant_id"] == grant.grant_id
    assert to_role.attributes["grant_id"] == grant.grant_id


async def role_stream(
    net: NotifyNetwork, stub: pb_grpc.NotifyServiceStub, role: str, grant_id: str
) -> list[pb.Notification]:
    """Read the role's stream up to the notification about ``grant_id``."""
    call = stub.Subscribe(
        pb.SubscribeRequest(recipient=f"role:{role}@{ORG}"),
        metadata=net.metadata(roles=[role]),
    )
    try:
        async with asyncio.timeout(30):
            async for response in call:
                if response.notification.attributes.get("grant_id") == grant_id:
                    return [response.notification]
    finally:
        call.cancel()
    return []


async def test_admission_pages_ward_on_call(net, stub, upstream) -> None:
    ward_doctor = ids("dr-icu")
    await stub.SetOnCallRoster(
        pb.SetOnCallRosterRequest(
            roster=pb.OnCallRoster(
                organization_id=ORG,
                department="icu",
                on_call_practitioner_ids=[ward_doctor],
            )
        ),
        metadata=net.metadata(roles=["administrator"]),
    )
    patient_id = ids("pat")
    admitted = appointments.PatientAdmitted(
        context=common.EventContext(organization_id=ORG),
        admission_id=ids("adm"),
        patient_id=patient_id,
        organization_id=ORG,
        ward="icu",
        emergency=True,
    )
    await upstream.publish((admitted, patient_id))

    [page] = await practitioner_stream(net, stub, ward_doctor, 1)

    assert page.kind == pb.NOTIFICATION_KIND_PATIENT_ADMITTED
    assert page.priority == pb.NOTIFICATION_PRIORITY_URGENT
    assert page.attributes["admission_id"] == admitted.admission_id


async def test_merged_patient_told_as_survivor(net, stub, upstream) -> None:
    merged_id, survivor_id = ids("pat-old"), ids("pat-new")
    merge = records.PatientsMerged(
        context=common.EventContext(organization_id=ORG),
        surviving_patient_id=survivor_id,
        merged_patient_id=merged_id,
        survivor=records.PatientSnapshot(patient_id=survivor_id, version=2),
    )
    charge = billing.ChargePosted(
        context=common.EventContext(organization_id=ORG),
        charge_id=ids("chg"),
        patient_id=merged_id,
        service=common.Coding(code="visit-general", display="General visit"),
        amount=common.Money(currency="EGP", minor_units=35050),
        quantity=1,
    )
    await upstream.publish((registered(merged_id), merged_id), (merge, merged_id))

    # Records and billing events travel on different topics, so the merge is
    # awaited before the charge is published.
    async def merge_applied() -> bool:
        def survivor_of(session: Any) -> str:
            row = session.get(PatientContactRow, merged_id)
            return row.surviving_patient_id if row else ""

        return await net.host.db.run(survivor_of) == survivor_id

    await eventually(merge_applied)
    await upstream.publish((charge, merged_id))

    [notification] = await next_notifications(
        net, stub, f"patient:{survivor_id}", 1, patient_id=survivor_id
    )

    assert notification.kind == pb.NOTIFICATION_KIND_CHARGE_POSTED
    assert notification.patient_id == survivor_id
    assert notification.body == (
        f"Charge {charge.charge_id} for General visit: EGP 350.50."
    )
    assert await stored(net, stub, f"patient:{merged_id}") == []


async def test_availability_change_tells_booked_patient(net, stub, upstream) -> None:
    patient_id, practitioner_id = ids("pat"), ids("dr")
    appointment_id = ids("appt")
    booked = appointments.AppointmentBooked(
        context=common.EventContext(organization_id=ORG),
        appointment=appointments.AppointmentSnapshot(
            appointment_id=appointment_id,
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            organization_id=ORG,
        ),
    )
    changed = appointments.PractitionerAvailabilityChanged(
        context=common.EventContext(organization_id=ORG),
        practitioner_id=practitioner_id,
        organization_id=ORG,
        affected_appointment_ids=[appointment_id, ids("appt-unknown")],
    )
    recipient = f"patient:{patient_id}"
    # The change is keyed by practitioner, so it may sit on another partition
    # than the booking: publish it only after the booking was handled.
    await upstream.publish((booked, patient_id))
    [first] = await next_notifications(net, stub, recipient, 1, patient_id=patient_id)
    await upstream.publish((changed, practitioner_id))
    [second] = await next_notifications(
        net, stub, recipient, 1, after_id=first.sequence_id, patient_id=patient_id
    )

    assert first.kind == pb.NOTIFICATION_KIND_APPOINTMENT_BOOKED
    assert second.kind == pb.NOTIFICATION_KIND_PRACTITIONER_UNAVAILABLE
    assert second.attributes["appointment_id"] == appointment_id
