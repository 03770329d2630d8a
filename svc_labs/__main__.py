"""Run svc_labs: ``python -m svc_labs``."""

from mesh.runtime.server import run_service
from svc_labs.app import build

if __name__ == "__main__":
    run_service("labs", build)
