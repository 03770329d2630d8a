"""Envoy configuration generated from the topology with envoy-data-plane classes."""

from mesh.network.envoy.common import (
    SecretFiles,
    envoy_binary,
    validate,
    write_bootstrap,
    write_secret_files,
)
from mesh.network.envoy.ingress import build_ingress
from mesh.network.envoy.sidecar import INGRESS_IDENTITY, build_sidecar

__all__ = [
    "INGRESS_IDENTITY",
    "SecretFiles",
    "build_ingress",
    "build_sidecar",
    "envoy_binary",
    "validate",
    "write_bootstrap",
    "write_secret_files",
]
