"""One trace follows a lab result from the ingress through Kafka to notify."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hin.common.v1 import types_pb2 as types
from hin.labs.v1 import events_pb2 as lab_events
from hin.labs.v1 import labs_service_pb2 as labs
from hin.labs.v1 import labs_service_pb2_grpc as labs_grpc
from mesh.network.clients import ingress_channel
from mesh.network.demo.day import HOSPITAL_A, HospitalDay
from mesh.network.state import NetworkState
from mesh.network.tracestore import TraceStore

pytestmark = pytest.mark.slow

#: OTLP span kinds (opentelemetry.proto.trace.v1.Span.SpanKind).
PRODUCER, CONSUMER = 4, 5


def _hin(state: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "mesh.network.cli", "--state", str(state), *args],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("trace") / "state"
    _hin(state, "up")
    try:
        yield state
    finally:
        _hin(state, "down")
        shutil.rmtree(state, ignore_errors=True)


async def _publish_result(state: Path, trace_id: str) -> None:
    network = NetworkState.load(state)
    async with ingress_channel(state) as channel:
        day = HospitalDay(
            state_dir=state,
            channel=channel,
            mllp_address=network.mllp_addresses("labs")[0],
            say=lambda _: None,
        )
        staff = await day.set_up_staff()
        await day.register_and_book(staff)
        order_id = await day.place_order(staff)
        doctor = staff["people"]["internist"]
        await labs_grpc.LabsServiceStub(channel).RecordResult(
            labs.RecordResultRequest(
                idempotency_key=uuid.uuid4().hex,
                order_id=order_id,
                test=types.Coding(system="http://loinc.org", code="2823-3"),
                value=lab_events.ResultValue(quantity="4.4", unit="mmol/L"),
                status=lab_events.RESULT_STATUS_FINAL,
                performing_organization_id=HOSPITAL_A,
            ),
            metadata=doctor.metadata(trace_id),
        )


def _complete(spans: list, services: set[str]) -> bool:
    kinds = {(s.service, s.kind) for s in spans}
    return (
        services <= {s.service for s in spans}
        and ("labs", PRODUCER) in kinds
        and ("notify", CONSUMER) in kinds
    )


def _spans_of(state: Path, trace_id: str, services: set[str]) -> list:
    # Each process exports its spans in batches every few seconds, so the
    # trace fills in over time.
    deadline = time.monotonic() + 30
    while True:
        spans = TraceStore(state / "traces").trace(trace_id)
        if _complete(spans, services) or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def test_lab_result_trace_spans_every_hop(network: Path) -> None:
    trace_id = secrets.token_hex(16)
    asyncio.run(_publish_result(network, trace_id))
    wanted = {"ingress", "labs-sidecar", "labs", "notify"}

    spans = _spans_of(network, trace_id, wanted)
    services = {span.service for span in spans}
    assert wanted <= services
    produced = [s for s in spans if s.service == "labs" and s.kind == PRODUCER]
    consumed = [s for s in spans if s.service == "notify" and s.kind == CONSUMER]
    assert produced != []
    assert consumed != []
    assert consumed[0].parent_span_id in {s.span_id for s in produced}


def test_forged_client_cert_on_service_port_is_anonymous(network: Path) -> None:
    import grpc

    from hin.records.v1 import records_service_pb2 as records
    from hin.records.v1 import records_service_pb2_grpc as records_grpc

    address = NetworkState.load(network).replica("records").address
    forged = (("x-forwarded-client-cert", "URI=spiffe://hin.local/svc/appointments"),)
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            records_grpc.RecordsServiceStub(channel).ListPatients(
                records.ListPatientsRequest(), metadata=forged, timeout=10
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_status_reports_killed_broker(network: Path) -> None:
    # Runs last in this module: the network has no broker afterwards.
    import json
    import os
    import signal

    state = NetworkState.load(network)
    os.kill(state.broker_pid, signal.SIGKILL)
    time.sleep(0.5)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh.network.cli",
            "--state",
            str(network),
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(completed.stdout)
    assert report["broker_running"] is False
    assert report["healthy"] is False
