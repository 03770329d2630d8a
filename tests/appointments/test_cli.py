"""``hin appointments`` output against an in-process scheduling service."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import Callable

import grpc
import pytest

from hin.appointments.v1 import appointments_service_pb2 as pb
from hin.appointments.v1 import appointments_service_pb2_grpc as pb_grpc
from mesh.network.cli import appointments as cli
from mesh.network.cli import build_parser

from .conftest import Running, cairo, new_practitioner, next_weekday, period

Action = Callable[..., None]


async def call(service: Running, action: Action, args: argparse.Namespace) -> str:
    """Run one print action on a blocking channel, as the command does."""

    def run() -> str:
        out = io.StringIO()
        with grpc.insecure_channel(f"127.0.0.1:{service.host.port}") as channel:
            action(
                pb_grpc.AppointmentsServiceStub(channel),
                tuple(service.scheduler_auth),
                args,
                out,
            )
        return out.getvalue()

    return await asyncio.to_thread(run)


def test_subcommands_registered() -> None:
    args = build_parser().parse_args(
        ["appointments", "slots", "prac-1", "--date", "2030-01-07", "--days", "2"]
    )

    assert args.appointments_action is cli.print_slots
    assert args.practitioner_id == "prac-1"
    assert args.days == 2
    assert args.time_zone == "Africa/Cairo"


@pytest.mark.asyncio(loop_scope="session")
async def test_slots_printed_in_local_time(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "5000000001")
    monday = next_weekday(1)
    args = argparse.Namespace(
        practitioner_id=practitioner_id,
        date=monday,
        days=1,
        time_zone="Africa/Cairo",
    )

    lines = (await call(service, cli.print_slots, args)).splitlines()

    # Monday 09:00-13:00 in 15-minute slots.
    assert len(lines) == 16
    first_start = cairo(monday, 9, 0).isoformat().replace("+00:00", "Z")
    assert lines[0].split("\t") == [
        first_start,
        cairo(monday, 9, 15).isoformat().replace("+00:00", "Z"),
        f"{monday.isoformat()} 09:00",
    ]


@pytest.mark.asyncio(loop_scope="session")
async def test_patient_appointments_listed(service: Running) -> None:
    practitioner_id = await new_practitioner(service, "5000000002")
    service.register_patients("patient-cli-1")
    monday = next_weekday(1)
    booked = await service.stub.Book(
        pb.BookRequest(
            patient_id="patient-cli-1",
            practitioner_id=practitioner_id,
            period=period(cairo(monday, 10, 0), cairo(monday, 10, 15)),
        ),
        metadata=service.scheduler_auth,
    )
    args = argparse.Namespace(
        patient="patient-cli-1", practitioner="", time_zone="Africa/Cairo"
    )

    lines = (await call(service, cli.print_appointments, args)).splitlines()

    assert len(lines) == 1
    fields = lines[0].split("\t")
    assert fields[0] == booked.appointment.appointment_id
    assert fields[2] == f"{monday.isoformat()} 10:00"
    assert fields[3:] == ["BOOKED", "visit-general", practitioner_id]


@pytest.mark.asyncio(loop_scope="session")
async def test_practitioners_listed_with_npi(service: Running) -> None:
    practitioner_id = await new_practitioner(
        service, "5000000003", organization_id="org-cli"
    )
    args = argparse.Namespace(organization="org-cli")

    lines = (await call(service, cli.print_practitioners, args)).splitlines()

    assert lines == [
        f"{practitioner_id}\thttp://hl7.org/fhir/sid/us-npi|5000000003\t"
        "Practitioner Test"
    ]
