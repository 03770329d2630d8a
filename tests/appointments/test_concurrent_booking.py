"""Concurrent bookings of one slot through the real server, on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from hin.appointments.v1 import appointments_service_pb2 as pb

from .conftest import cairo, new_practitioner, next_weekday, period, running_service

pytestmark = pytest.mark.asyncio(loop_scope="session")

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_one_of_eleven_overlapping_bookings_wins(
    backend: str,
    tmp_path: Path,
    kafka_bootstrap: str,
    postgres_database: Callable[[], str],
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'appointments.db'}"
        if backend == "sqlite"
        else postgres_database()
    )
    async with running_service(tmp_path, kafka_bootstrap, url) as service:
        practitioner_id = await new_practitioner(service, "2000000001")
        patients = [f"patient-race-{n}" for n in range(11)]
        service.register_patients(*patients)
        monday = next_weekday(1)
        same_slot = period(cairo(monday, 9, 0), cairo(monday, 9, 15))
        overlapping = period(cairo(monday, 9, 10), cairo(monday, 9, 25))
        requests = [
            pb.BookRequest(
                patient_id=patient_id,
                practitioner_id=practitioner_id,
                period=same_slot if n < 10 else overlapping,
            )
            for n, patient_id in enumerate(patients)
        ]

        results = await asyncio.gather(
            *(
                service.stub.Book(request, metadata=service.scheduler_auth)
                for request in requests
            ),
            return_exceptions=True,
        )

        successes = [r for r in results if isinstance(r, pb.BookResponse)]
        failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(successes) == 1
        assert len(failures) == 10
        assert {f.code() for f in failures} <= {
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS,
        }
        listed = await service.stub.ListAppointments(
            pb.ListAppointmentsRequest(practitioner_id=practitioner_id),
            metadata=service.scheduler_auth,
        )
        assert len(listed.appointments) == 1
        winner = listed.appointments[0]
        assert winner.period.end.ToSeconds() - winner.period.start.ToSeconds() == (
            timedelta(minutes=15).seconds
        )
