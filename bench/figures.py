"""Each benchmark figure, measured beside its floor in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hl7
from confluent_kafka import Consumer, Producer

from bench.load import LoadResult, closed_loop
from bench.network import RunningNetwork, hin
from bench.profile import Profile, Sampler
from bench.stats import Spread, percentile
from hin.common.v1 import types_pb2 as types
from hin.echo.v1 import echo_service_pb2 as echo
from hin.echo.v1 import echo_service_pb2_grpc as echo_grpc
from hin.labs.v1 import events_pb2 as lab_events
from hin.labs.v1 import labs_service_pb2 as labs
from hin.notify.v1 import notify_service_pb2 as notify
from hin.records.v1 import records_service_pb2 as records
from mesh.network.clients import CHANNEL_OPTIONS, ingress_channel
from mesh.network.demo.day import HOSPITAL_A, HospitalDay, Person
from mesh.network.mllp import MllpClient

#: Steady rate of the event figure, results per second.
EVENT_RATE = 50


@dataclass
class Row:
    """One line of the results table: a figure, its floor and the ratio."""

    figure: str
    value: Spread
    unit: str
    floor_name: str = ""
    floor: Spread | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Section:
    """Rows of one benchmark id."""

    bench_id: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)


def shortfall(value: float, limit: float, unit: str) -> str:
    """Describe how far ``value`` is from ``limit``: "by 0.64 ms (2.6x)"."""
    ratio = value / limit if limit else float("inf")
    if ratio < 1:
        ratio = limit / value if value else float("inf")
    return f"by {abs(value - limit):,.2f} {unit} ({ratio:,.1f}x)"


# Shared set-up -----------------------------------------------------------------


@dataclass
class Scene:
    """Patient, staff and an order created once for the query and event figures."""

    day: HospitalDay
    staff: dict[str, Any]
    patient_id: str
    order_id: str


async def build_scene(network: RunningNetwork, channel: grpc.aio.Channel) -> Scene:
    """Register a patient with a booked visit and a lab order, as in the demo."""
    mllp = network.state.mllp_addresses("labs")[0]
    day = HospitalDay(
        state_dir=network.state_dir, channel=channel, mllp_address=mllp, say=_quiet
    )
    staff = await day.set_up_staff()
    await day.register_and_book(staff)
    order_id = await day.place_order(staff)
    return Scene(day, staff, day.result.patient_id, order_id)


def _quiet(_: str) -> None:
    return None


# query ------------------------------------------------------------------------


async def query_section(
    network: RunningNetwork, scene: Scene, *, runs: int, duration: float
) -> Section:
    """GetPatient through ingress and sidecars, beside direct and echo floors."""
    section = Section("query", "GetPatient with authorization on")
    doctor: Person = scene.staff["people"]["internist"]
    meta = doctor.metadata()
    request = records.GetPatientRequest(patient_id=scene.patient_id)
    ingress = ingress_channel(network.state_dir)
    direct = grpc.aio.insecure_channel(
        network.state.replica("records").address, CHANNEL_OPTIONS
    )
    from hin.records.v1 import records_service_pb2_grpc as records_grpc

    via_mesh = records_grpc.RecordsServiceStub(ingress).GetPatient
    straight = records_grpc.RecordsServiceStub(direct).GetPatient
    echo_call = echo_grpc.EchoServiceStub(ingress).Echo
    echo_request = echo.EchoRequest(message="x" * 64)

    async def mesh_call() -> object:
        return await via_mesh(request, metadata=meta)

    async def direct_call() -> object:
        return await straight(request, metadata=meta)

    async def echo_mesh() -> object:
        return await echo_call(echo_request, metadata=meta)

    try:
        for concurrency in (1, 32):
            results = await _interleave(
                {"mesh": mesh_call, "direct": direct_call, "echo": echo_mesh},
                runs=runs,
                concurrency=concurrency,
                duration=duration,
            )
            _query_rows(section, concurrency, results)
    finally:
        await ingress.close()
        await direct.close()
    return section


async def _interleave(
    calls: dict[str, Callable[[], Awaitable[object]]],
    *,
    runs: int,
    concurrency: int,
    duration: float,
) -> dict[str, list[LoadResult]]:
    # Alternate the variants run by run so that drift in machine speed falls
    # on all of them alike.
    results: dict[str, list[LoadResult]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            results[name].append(
                await closed_loop(call, concurrency=concurrency, duration=duration)
            )
    return results


def _query_rows(
    section: Section, concurrency: int, results: dict[str, list[LoadResult]]
) -> None:
    mesh, direct, echo_runs = results["mesh"], results["direct"], results["echo"]
    section.rows.append(
        Row(
            f"requests/s, concurrency {concurrency}",
            Spread.of([r.rate for r in mesh]),
            "req/s",
            "direct to the service",
            Spread.of([r.rate for r in direct]),
        )
    )
    for name, attribute in (("p50", "p50_ms"), ("p99", "p99_ms")):
        mesh_values = [getattr(r, attribute) for r in mesh]
        direct_values = [getattr(r, attribute) for r in direct]
        section.rows.append(
            Row(
                f"{name} latency, concurrency {concurrency}",
                Spread.of(mesh_values),
                "ms",
                "direct to the service",
                Spread.of(direct_values),
            )
        )
    echo_p50 = Spread.of([r.p50_ms for r in echo_runs])
    section.rows.append(
        Row(
            f"echo p50 through ingress and sidecar, concurrency {concurrency}",
            echo_p50,
            "ms",
        )
    )
    if concurrency == 1:
        added = Spread.of(
            [m.p50_ms - d.p50_ms for m, d in zip(mesh, direct, strict=True)]
        )
        # Ingress, then the records sidecar: two Envoy hops on the way in.
        per_hop = added.median / 2
        section.rows.append(
            Row(
                "added p50 per Envoy hop (2 hops), concurrency 1",
                Spread(per_hop, added.low / 2, added.high / 2, added.runs),
                "ms",
                target="<= 0.4 ms",
                met=per_hop <= 0.4,
                note=shortfall(per_hop, 0.4, "ms"),
            )
        )
    errors = sum(r.errors for runs in results.values() for r in runs)
    if errors:
        section.notes.append(
            f"{errors} calls failed during the concurrency {concurrency} runs"
        )


# event ------------------------------------------------------------------------


async def event_section(
    network: RunningNetwork, scene: Scene, *, runs: int, seconds: float
) -> Section:
    """RecordResult over gRPC to a notification on the doctor's stream.

    The target rate comes first; a tenth of it follows, to show the latency
    of the path itself when the two cores are not saturated.
    """
    section = Section("event", f"lab result to notification at {EVENT_RATE}/s")
    for rate in (EVENT_RATE, EVENT_RATE // 10):
        await _event_rows(
            network, scene, section, runs=runs, seconds=seconds, rate=rate
        )
    return section


async def _event_rows(
    network: RunningNetwork,
    scene: Scene,
    section: Section,
    *,
    runs: int,
    seconds: float,
    rate: int,
) -> None:
    p50s, p99s = [], []
    floor_p50s, floor_p99s = [], []
    count = max(1, int(seconds * rate))
    for run in range(runs):
        samplers = []
        if run == 0 and rate == EVENT_RATE:
            samplers = [
                Sampler(network.state.replica(name).pid, name)
                for name in ("labs", "notify")
            ]
        latencies = await _result_to_notification(network, scene, count, rate, run)
        section.profiles += [sampler.finish() for sampler in samplers]
        p50s.append(percentile(latencies, 0.5) * 1000)
        p99s.append(percentile(latencies, 0.99) * 1000)
        floor = await asyncio.to_thread(
            _raw_kafka_latencies, network.state.kafka_bootstrap, count, rate
        )
        floor_p50s.append(percentile(floor, 0.5) * 1000)
        floor_p99s.append(percentile(floor, 0.99) * 1000)
    p50, p99 = Spread.of(p50s), Spread.of(p99s)
    floor_p50 = Spread.of(floor_p50s)
    targeted = rate == EVENT_RATE
    section.rows += [
        Row(
            f"p50 result accepted -> notification, {rate}/s",
            p50,
            "ms",
            "raw produce -> consume",
            floor_p50,
            target="within 15 ms of the floor" if targeted else "",
            met=p50.median - floor_p50.median <= 15 if targeted else None,
            note=shortfall(p50.median, floor_p50.median + 15, "ms"),
        ),
        Row(
            f"p99 result accepted -> notification, {rate}/s",
            p99,
            "ms",
            "raw produce -> consume",
            Spread.of(floor_p99s),
            target="< 100 ms" if targeted else "",
            met=p99.median < 100 if targeted else None,
            note=shortfall(p99.median, 100, "ms"),
        ),
    ]


async def _result_to_notification(
    network: RunningNetwork, scene: Scene, count: int, rate: int, run: int
) -> list[float]:
    doctor: Person = scene.staff["people"]["internist"]
    recipient = f"practitioner:{scene.staff['internist']}"
    channel = ingress_channel(network.state_dir)
    from hin.labs.v1 import labs_service_pb2_grpc as labs_grpc
    from hin.notify.v1 import notify_service_pb2_grpc as notify_grpc

    lab = labs_grpc.LabsServiceStub(channel)
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    stream = notify_grpc.NotifyServiceStub(channel).Subscribe(
        notify.SubscribeRequest(recipient=recipient),
        metadata=doctor.metadata(),
    )

    async def read() -> None:
        async for item in stream:
            result_id = item.notification.attributes.get("result_id", "")
            if result_id:
                arrived.setdefault(result_id, time.perf_counter())

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)
    interval = 1 / rate
    start = time.perf_counter()
    pending = []
    for index in range(count):
        due = start + index * interval
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        pending.append(
            asyncio.create_task(
                _record(lab, scene, doctor, sent, f"{rate}-{run}", index)
            )
        )
    await asyncio.gather(*pending)
    deadline = time.perf_counter() + 10
    while len(arrived.keys() & sent.keys()) < len(sent):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.05)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await channel.close()
    return [arrived[key] - sent[key] for key in sent if key in arrived]


async def _record(
    lab: Any,
    scene: Scene,
    doctor: Person,
    sent: dict[str, float],
    run: str,
    index: int,
) -> None:
    began = time.perf_counter()
    response = await lab.RecordResult(
        labs.RecordResultRequest(
            idempotency_key=f"bench-{run}-{index}-{uuid.uuid4().hex[:8]}",
            order_id=scene.order_id,
            test=types.Coding(system="http://loinc.org", code="2823-3"),
            value=lab_events.ResultValue(quantity="4.1", unit="mmol/L"),
            status=lab_events.RESULT_STATUS_FINAL,
            performing_organization_id=HOSPITAL_A,
        ),
        metadata=doctor.metadata(),
    )
    sent[response.result.result_id] = began


def _raw_kafka_latencies(bootstrap: str, count: int, rate: int) -> list[float]:
    """Produce ``count`` records at the same rate and time each to its consumer."""
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
            "session.timeout.ms": 6000,
        }
    )
    payload = b"x" * 400
    producer.produce(topic, payload)
    producer.flush(10)
    consumer.subscribe([topic])
    while consumer.poll(0.2) is None:
        pass
    latencies: list[float] = []
    sent: dict[int, float] = {}
    interval = 1 / rate
    start = time.perf_counter()
    index = 0
    while (
        len(latencies) < count and time.perf_counter() - start < count * interval + 15
    ):
        now = time.perf_counter()
        if index < count and now >= start + index * interval:
            sent[index] = now
            producer.produce(topic, payload, key=str(index).encode())
            producer.poll(0)
            index += 1
        message = consumer.poll(0.001)
        key_bytes = message.key() if message is not None else None
        if message is not None and not message.error() and key_bytes:
            key = int(key_bytes)
            latencies.append(time.perf_counter() - sent[key])
    consumer.close()
    producer.flush(5)
    return latencies


# hl7 --------------------------------------------------------------------------


def hl7_section(
    network: RunningNetwork, messages: list[bytes], *, runs: int
) -> Section:
    """ORU messages per second over MLLP, beside parsing them alone."""
    section = Section("hl7", "ORU^R01 over MLLP, stored and acknowledged")
    address = network.state.mllp_addresses("labs")[0]
    rates, p99s, parse_rates = [], [], []
    for run in range(runs):
        sampler = (
            Sampler(network.state.replica("labs").pid, "labs") if run == 0 else None
        )
        batch = [_unique(message, run, index) for index, message in enumerate(messages)]
        latencies: list[float] = []
        started = time.perf_counter()
        with MllpClient.connect(address) as client:
            for message in batch:
                began = time.perf_counter()
                client.send(message)
                latencies.append(time.perf_counter() - began)
        rates.append(len(batch) / (time.perf_counter() - started))
        p99s.append(percentile(latencies, 0.99) * 1000)
        if sampler is not None:
            section.profiles.append(sampler.finish())

        started = time.perf_counter()
        for message in batch:
            hl7.parse(message.decode("utf-8", errors="replace").replace("\n", "\r"))
        parse_rates.append(len(batch) / (time.perf_counter() - started))
    rate = Spread.of(rates)
    section.rows += [
        Row(
            "messages/s",
            rate,
            "msg/s",
            "parsing alone (hl7 package)",
            Spread.of(parse_rates),
            target=">= 300 msg/s",
            met=rate.median >= 300,
            note=shortfall(rate.median, 300, "msg/s"),
        ),
        Row("ACK p99", Spread.of(p99s), "ms"),
    ]
    return section


def _unique(message: bytes, run: int, index: int) -> bytes:
    """Give a message a control id (MSH-10) of its own, so it is stored anew."""
    text = message.decode("utf-8", errors="replace")
    fields = text.split("|", 10)
    if len(fields) > 9:
        fields[9] = f"BENCH{run}-{index}-{uuid.uuid4().hex[:6]}"
    return "|".join(fields).encode()


def synthetic_oru(count: int) -> list[bytes]:
    """Build ORU^R01 messages with five results each, for unknown patients."""
    messages = []
    for index in range(count):
        segments = [
            "MSH|^~\\&|LIS|BENCH-LAB|HIN|HOSP-A|20261204101500+0200||ORU^R01|"
            f"B{index}|P|2.5.1",
            f"PID|1||BENCH-{index % 50}^^^BENCH^MR||Doe^John||19800101|M",
            f"OBR|1|ORD{index}|FIL{index}|24323-8^Metabolic panel^LN|||"
            "20261204093000+0200",
        ]
        for n, (code, value, unit) in enumerate(
            [
                ("2823-3", "4.2", "mmol/L"),
                ("2951-2", "140", "mmol/L"),
                ("2075-0", "101", "mmol/L"),
                ("2028-9", "25", "mmol/L"),
                ("2345-7", "5.4", "mmol/L"),
            ],
            start=1,
        ):
            segments.append(f"OBX|{n}|NM|{code}^^LN||{value}|{unit}|||||F")
        messages.append("\r".join(segments).encode() + b"\r")
    return messages


# fhir -------------------------------------------------------------------------


def fhir_floor(bundles: list[Path]) -> float:
    """Resources per second of reading and parsing the bundles alone."""
    started = time.perf_counter()
    resources = 0
    for path in bundles:
        resources += len(json.loads(path.read_bytes()).get("entry", []))
    return resources / (time.perf_counter() - started)


def fhir_import_rate(network: RunningNetwork, bundles: list[Path]) -> tuple[float, int]:
    """Import the bundles through ``hin import`` and return resources/s, count."""
    started = time.perf_counter()
    result = hin(
        network.state_dir,
        "import",
        "--json",
        "--no-progress",
        *map(str, bundles),
        check=False,
    )
    elapsed = time.perf_counter() - started
    summary = json.loads(result.stdout)
    taken = sum(
        counts.get("imported", 0) + counts.get("duplicate", 0)
        for counts in summary["resources"].values()
    )
    return taken / elapsed, taken


# isolation ----------------------------------------------------------------------


async def isolation_section(
    network: RunningNetwork, scene: Scene, *, runs: int, duration: float
) -> Section:
    """Query p99 while billing is killed and restarted, beside billing up."""
    section = Section("isolation", "query p99 while billing is down and restarting")
    doctor: Person = scene.staff["people"]["internist"]
    meta = doctor.metadata()
    request = records.GetPatientRequest(patient_id=scene.patient_id)
    channel = ingress_channel(network.state_dir)
    from hin.records.v1 import records_service_pb2_grpc as records_grpc

    stub = records_grpc.RecordsServiceStub(channel)

    async def call() -> object:
        return await stub.GetPatient(request, metadata=meta)

    with_billing, without_billing, errors = [], [], 0
    try:
        for _ in range(runs):
            with_billing.append(
                (await closed_loop(call, concurrency=8, duration=duration)).p99_ms
            )
            disturbance = asyncio.create_task(_kill_and_restart_billing(network))
            measured = await closed_loop(call, concurrency=8, duration=duration)
            await disturbance
            without_billing.append(measured.p99_ms)
            errors += measured.errors
    finally:
        await channel.close()
    value, floor = Spread.of(without_billing), Spread.of(with_billing)
    section.rows.append(
        Row(
            "query p99 while billing is killed and restarted",
            value,
            "ms",
            "query p99 with billing up",
            floor,
            target="within 20% of the floor",
            met=value.median <= floor.median * 1.2,
            note=shortfall(value.median, floor.median * 1.2, "ms"),
        )
    )
    section.notes.append(f"failed queries during the outages: {errors}")
    return section


async def _kill_and_restart_billing(network: RunningNetwork) -> None:
    pid = network.reload().replica("billing").pid
    if pid:
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(hin, network.state_dir, "restart", "billing")
