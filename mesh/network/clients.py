"""gRPC channels into a running network, for the ``hin`` command and tests.

People's calls go through the ingress with a bearer token, exactly like a
browser's or a hospital system's would. ``sidecar_channel`` reaches one
replica directly through its sidecar with the operator's mesh certificate.
Those calls bypass the ingress and its JWT check, so the sidecars allow them
for health checks only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import grpc

from mesh.network.devkeys import mint_token
from mesh.network.pki import CertificateAuthority, dns_name, service_identity
from mesh.network.state import NetworkState

#: Mesh identity of the ``hin`` command when it dials a sidecar directly.
OPERATOR_IDENTITY = "operator/cli"
#: Organization id in the administrator token of the ``hin`` command.
ADMIN_ORGANIZATION = "hin-operator"
#: Streams such as NotifyService.Subscribe stay idle for minutes, so the
#: client pings to keep the connection (and every Envoy hop) open.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def ingress_address(state_dir: Path) -> str:
    """Return the ingress host:port recorded in ``<state_dir>/network.json``."""
    return NetworkState.load(state_dir).ingress


def ingress_channel(state_dir: Path) -> grpc.aio.Channel:
    """Open an asyncio channel to the ingress of the network in ``state_dir``."""
    return grpc.aio.insecure_channel(ingress_address(state_dir), CHANNEL_OPTIONS)


def ingress_channel_sync(state_dir: Path) -> grpc.Channel:
    """Open a blocking channel to the ingress of the network in ``state_dir``."""
    return grpc.insecure_channel(ingress_address(state_dir), CHANNEL_OPTIONS)


def admin_metadata(
    state_dir: Path,
    *,
    subject: str = "hin-cli",
    roles: Iterable[str] = ("administrator",),
    organization_id: str = ADMIN_ORGANIZATION,
    lifetime_seconds: int = 3600,
) -> tuple[tuple[str, str], ...]:
    """Return gRPC metadata with a development administrator token.

    The token is signed by the development key in ``<state_dir>/keys``, so
    the ingress and the services accept it; pass the result as ``metadata=``.
    """
    token = mint_token(
        state_dir,
        subject=subject,
        roles=roles,
        organization_id=organization_id,
        lifetime_seconds=lifetime_seconds,
    )
    return (("authorization", f"Bearer {token}"),)


def operator_credentials(state_dir: Path) -> grpc.ChannelCredentials:
    """Return mTLS credentials of the operator identity, issued on first use."""
    authority = CertificateAuthority.load_or_create(state_dir)
    files = authority.ensure_leaf(OPERATOR_IDENTITY)
    return grpc.ssl_channel_credentials(
        root_certificates=authority.certificate_pem(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )


def sidecar_channel(
    state_dir: Path, service: str, replica: int = 0
) -> grpc.aio.Channel:
    """Open an asyncio mTLS channel to one replica's sidecar inbound listener."""
    state = NetworkState.load(state_dir)
    address = state.replica(service, replica).sidecar_inbound
    options = (
        *CHANNEL_OPTIONS,
        ("grpc.ssl_target_name_override", dns_name(service_identity(service))),
    )
    return grpc.aio.secure_channel(address, operator_credentials(state_dir), options)
