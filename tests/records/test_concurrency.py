"""Concurrent registrations of one identifier, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from hin.common.v1 import types_pb2
from hin.records.v1 import records_service_pb2 as pb
from hin.records.v1 import records_service_pb2_grpc as pb_grpc

from .conftest import STOP_GRACE_SECONDS, bearer, start_records


@pytest.mark.postgres
async def test_one_identifier_registers_once(
    tmp_path: Path, kafka_bootstrap: str, database_url: str
) -> None:
    host, channel = await start_records(tmp_path, kafka_bootstrap, database_url)
    stub = pb_grpc.RecordsServiceStub(channel)
    metadata = bearer(tmp_path, "dr-1", "doctor")

    async def register(index: int) -> grpc.StatusCode:
        patient = pb.PatientDemographics(
            names=[types_pb2.HumanName(family=f"Racer{index}", given=["Same"])],
            birth_date=types_pb2.Date(year=1980 + index, month=1, day=1),
            identifiers=[
                types_pb2.Identifier(system="urn:hin:id:mrn:org-1", value="RACE-1")
            ],
        )
        try:
            await stub.RegisterPatient(
                pb.RegisterPatientRequest(patient=patient), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    try:
        codes = await asyncio.gather(*(register(i) for i in range(8)))
    finally:
        await channel.close()
        await host.stop(grace=STOP_GRACE_SECONDS)
    assert codes.count(grpc.StatusCode.OK) == 1
    assert set(codes) - {grpc.StatusCode.OK} <= {
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
    }
