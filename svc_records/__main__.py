"""Run the records service: ``python -m svc_records``."""

from mesh.runtime.server import run_service
from svc_records.app import build

if __name__ == "__main__":
    run_service("records", build)
