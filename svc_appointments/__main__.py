"""Run the scheduling service: ``python -m svc_appointments``."""

from mesh.runtime.server import run_service
from svc_appointments.app import build

if __name__ == "__main__":
    run_service("appointments", build)
