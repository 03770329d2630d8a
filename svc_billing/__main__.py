"""Run the billing service: ``python -m svc_billing``."""

from mesh.runtime.server import run_service
from svc_billing.app import build

if __name__ == "__main__":
    run_service("billing", build)
