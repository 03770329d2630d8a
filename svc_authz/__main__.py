"""Run the authz service: ``python -m svc_authz``."""

from mesh.runtime.server import run_service
from svc_authz.app import build

if __name__ == "__main__":
    run_service("authz", build)
