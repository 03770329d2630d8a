"""Charges from appointment and lab events on the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from hin.billing.v1 import billing_service_pb2 as pb
from hin.billing.v1 import events_pb2 as billing_events
from hin.labs.v1 import events_pb2 as labs
from tests.billing.conftest import Billing
from tests.billing.upstream import (
    Upstream,
    appointment_completed,
    read_topic,
    result_published,
    wait_until,
)

#: Prices in svc_billing/data/default_prices.json.
PRICES = {"visit-general": 30000, "visit-specialist": 60000, "2339-0": 5000,
          "4548-4": 15000}


@pytest.fixture(scope="module")
def upstream_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("upstream")


@pytest.fixture(scope="module")
def appointments_side(
    upstream_folder: Path, kafka_bootstrap: str
) -> Iterator[Upstream]:
    upstream = Upstream(
        service="appointments", folder=upstream_folder, bootstrap=kafka_bootstrap
    )
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def labs_side(upstream_folder: Path, kafka_bootstrap: str) -> Iterator[Upstream]:
    upstream = Upstream(
        service="labs", folder=upstream_folder, bootstrap=kafka_bootstrap
    )
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
async def patients(
    billing: Billing, appointments_side: Upstream, labs_side: Upstream
) -> AsyncIterator[dict[str, list[str]]]:
    """Publish one set of clinical events and wait until billing charged them.

    Returns:
        Event ids by kind: "visits", "results", "skipped".
    """
    visit_patients = [f"pat-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    lab_patients = [f"pat-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    visits = await asyncio.to_thread(
        appointments_side.publish,
        [
            (appointment_completed(patient, code), patient)
            for patient, code in zip(
                visit_patients,
                ["visit-general", "visit-specialist", "visit-general"],
                strict=True,
            )
        ],
    )
    corrected = result_published(lab_patients[0], status=labs.RESULT_STATUS_CORRECTED)
    correction = labs.TestResultCorrected(
        result=result_published(lab_patients[1]).result, previous_version=1
    )
    results = await asyncio.to_thread(
        labs_side.publish,
        [(result_published(patient), patient) for patient in lab_patients]
        + [
            (corrected, lab_patients[0]),
            (result_published(lab_patients[1], historical=True), lab_patients[1]),
            (correction, lab_patients[1]),
        ],
    )
    # Every patient's sentinel is published after the events above on the
    # same key, so once each sentinel is charged the earlier ones were handled.
    await publish_sentinels(billing, appointments_side, labs_side,
                            visit_patients, lab_patients)
    yield {
        "visit_patients": visit_patients,
        "lab_patients": lab_patients,
        "visits": visits,
        "results": results[:3],
        "skipped": results[3:],
    }


async def publish_sentinels(
    billing: Billing,
    appointments_side: Upstream,
    labs_side: Upstream,
    visit_patients: list[str],
    lab_patients: list[str],
) -> None:
    """Publish one glycated haemoglobin result per patient and wait for each."""
    sentinels = await asyncio.to_thread(
        labs_side.publish,
        [(result_published(p, "4548-4"), p) for p in visit_patients + lab_patients],
    )
    sentinels += await asyncio.to_thread(
        appointments_side.publish,
        [(appointment_completed(p, "visit-followup"), p) for p in lab_patients],
    )

    async def all_charged() -> bool:
        charged = set()
        for patient in visit_patients + lab_patients:
            for charge in await charges_of(billing, patient):
                charged.add(charge.source_event_id)
        return set(sentinels) <= charged

    await wait_until(all_charged, what="the sentinel charges")


async def charges_of(billing: Billing, patient_id: str) -> list[pb.Charge]:
    response = await billing.stub.ListCharges(
        pb.ListChargesRequest(patient_id=patient_id), metadata=billing.clerk
    )
    return list(response.charges)


async def test_visit_charged_from_appointment(
    billing: Billing, patients: dict[str, list[str]]
) -> None:
    expected = {"visit-general": 30000, "visit-specialist": 60000}
    for patient, event_id, code in zip(
        patients["visit_patients"],
        patients["visits"],
        ["visit-general", "visit-specialist", "visit-general"],
        strict=True,
    ):
        [visit] = [c for c in await charges_of(billing, patient)
                   if c.source_event_id == event_id]
        assert visit.service.code == code
        assert visit.amount.minor_units == expected[code]
        assert visit.encounter_id.startswith("enc-")


async def test_result_charged_once_each(
    billing: Billing, patients: dict[str, list[str]]
) -> None:
    for patient, event_id in zip(
        patients["lab_patients"], patients["results"], strict=True
    ):
        charges = [c for c in await charges_of(billing, patient)
                   if c.service.code == "2339-0"]
        assert [c.source_event_id for c in charges] == [event_id]
        assert charges[0].amount.minor_units == PRICES["2339-0"]


async def test_corrected_and_historical_not_charged(
    billing: Billing, patients: dict[str, list[str]]
) -> None:
    charged = set()
    for patient in patients["lab_patients"]:
        charged |= {c.source_event_id for c in await charges_of(billing, patient)}
    for event_id in patients["skipped"]:
        assert event_id not in charged


async def test_redelivery_posts_no_charge(
    billing: Billing,
    patients: dict[str, list[str]],
    appointments_side: Upstream,
    labs_side: Upstream,
) -> None:
    everyone = patients["visit_patients"] + patients["lab_patients"]
    before = {p: len(await charges_of(billing, p)) for p in everyone}

    resent = await asyncio.to_thread(appointments_side.republish_all)
    resent += await asyncio.to_thread(labs_side.republish_all)
    assert resent >= 6 + 3 + 6 + 3
    await publish_sentinels(billing, appointments_side, labs_side,
                            patients["visit_patients"], patients["lab_patients"])

    after = {p: len(await charges_of(billing, p)) for p in everyone}
    # The only new charges are this round's sentinels: one result for every
    # patient plus one visit for each lab patient.
    new_sentinels = {p: 1 for p in patients["visit_patients"]}
    new_sentinels.update({p: 2 for p in patients["lab_patients"]})
    for patient in everyone:
        assert after[patient] == before[patient] + new_sentinels[patient], patient


async def test_charge_posted_events_published(
    billing: Billing, patients: dict[str, list[str]], kafka_bootstrap: str
) -> None:
    expected = set(patients["visits"] + patients["results"])

    def charge_posted(
        records: list[tuple[dict[str, str], bytes]],
    ) -> list[billing_events.ChargePosted]:
        return [
            billing_events.ChargePosted.FromString(value)
            for headers, value in records
            if headers.get("ce_type") == "hin.billing.v1.ChargePosted"
        ]

    def all_seen(records: list[tuple[dict[str, str], bytes]]) -> bool:
        sources = {event.source_event_id for event in charge_posted(records)}
        return expected <= sources

    records = await asyncio.to_thread(
        read_topic, kafka_bootstrap, "hin.billing.events.v1", complete=all_seen
    )
    posted = charge_posted(records)
    sources = {event.source_event_id for event in posted}
    for event_id in expected:
        assert event_id in sources
    # One ChargePosted per causing event, even after the redelivery above.
    ours = [e for e in posted if e.source_event_id in set(patients["visits"])]
    assert len(ours) == len(patients["visits"])


async def test_poison_record_skipped(
    billing: Billing, kafka_bootstrap: str, appointments_side: Upstream
) -> None:
    patient = f"pat-{uuid.uuid4().hex[:10]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        "hin.appointments.events.v1",
        key=patient,
        value=b"\xff\xfe not a protobuf",
        headers=[
            ("ce_id", str(uuid.uuid4())),
            ("ce_type", "hin.appointments.v1.AppointmentCompleted"),
            ("ce_specversion", "1.0"),
            ("ce_source", "hin://test"),
        ],
    )
    await asyncio.to_thread(producer.flush, 10)
    unknown, good = await asyncio.to_thread(
        appointments_side.publish,
        [
            (appointment_completed(patient, "visit-unpriced"), patient),
            (appointment_completed(patient), patient),
        ],
    )

    async def good_charged() -> bool:
        charges = await charges_of(billing, patient)
        return any(c.source_event_id == good for c in charges)

    await wait_until(good_charged, what="the charge after the poison records")
    charges = await charges_of(billing, patient)
    assert [c.source_event_id for c in charges] == [good]
    assert unknown not in {c.source_event_id for c in charges}

    # The unpriced visit waits in the dead-letter topic, with the reason.
    def dead_lettered(records: list[tuple[dict[str, str], bytes]]) -> bool:
        return any(headers.get("ce_id") == unknown for headers, _ in records)

    records = await asyncio.to_thread(
        read_topic,
        kafka_bootstrap,
        "hin.appointments.events.v1.dlq",
        complete=dead_lettered,
        idle_seconds=0.2,
    )
    [headers] = [h for h, _ in records if h.get("ce_id") == unknown]
    assert headers["hin_dlq_error_type"] == "UnpricedService"
    assert "visit-unpriced" in headers["hin_dlq_error_message"]
