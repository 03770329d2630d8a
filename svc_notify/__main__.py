"""Run svc_notify: ``python -m svc_notify``."""

from mesh.runtime.server import run_service
from svc_notify.app import build

if __name__ == "__main__":
    run_service("notify", build)
