"""Composition root of the scheduling service."""

from __future__ import annotations

from datetime import timedelta

from hin.appointments.v1 import appointments_service_pb2_grpc as pb_grpc
from mesh.runtime.server import BuildContext, BuildFunction, ServiceSpec
from mesh.runtime.settings import ServiceSettings, SettingsError
from svc_appointments.fhir_import import FhirImporter
from svc_appointments.handlers import patient_handlers
from svc_appointments.scheduling import Clock, Scheduler, utc_now
from svc_appointments.servicer import AppointmentsServicer
from svc_appointments.store import metadata

SERVICE_NAME = "hin.appointments.v1.AppointmentsService"
#: HIN_APPOINTMENTS_RESCHEDULE_WINDOW_DAYS: how many days after its original
#: start an appointment displaced by a leave may move; beyond it, the
#: appointment is cancelled.
DEFAULT_RESCHEDULE_WINDOW_DAYS = "14"


def reschedule_window(settings: ServiceSettings) -> timedelta:
    """Read HIN_APPOINTMENTS_RESCHEDULE_WINDOW_DAYS; raise SettingsError if bad."""
    text = settings.service_setting(
        "reschedule_window_days", DEFAULT_RESCHEDULE_WINDOW_DAYS
    )
    if not text.isdigit() or not 0 <= int(text) <= 365:
        raise SettingsError(
            f"HIN_APPOINTMENTS_RESCHEDULE_WINDOW_DAYS={text!r} is not a whole "
            "number of days between 0 and 365"
        )
    return timedelta(days=int(text))


def make_build(clock: Clock = utc_now) -> BuildFunction:
    """Return the composition root, with ``clock`` as the service's time."""

    def build(ctx: BuildContext) -> ServiceSpec:
        scheduler = Scheduler(
            outbox=ctx.outbox,
            reschedule_window=reschedule_window(ctx.settings),
            clock=clock,
        )
        servicer = AppointmentsServicer(
            db=ctx.db,
            scheduler=scheduler,
            importer=FhirImporter(clock=clock),
            authorizer=ctx.authorizer,
        )
        return ServiceSpec(
            name="appointments",
            register=[(pb_grpc.add_AppointmentsServiceServicer_to_server, servicer)],
            service_names=[SERVICE_NAME],
            metadata=metadata,
            migrations="svc_appointments:migrations",
            handlers=patient_handlers(scheduler),
        )

    return build


#: Composition root used by ``python -m svc_appointments``.
build = make_build()
