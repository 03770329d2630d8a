"""Sidecar inbound listeners: mTLS with the mesh CA and RBAC per caller."""

from __future__ import annotations

import grpc
import pytest

from mesh.network.pki import CertificateAuthority, dns_name, service_identity
from tests.network.conftest import RunningNetwork

pytestmark = pytest.mark.mesh

UPDATE_PATIENT = "/hin.records.v1.RecordsService/UpdatePatient"
AUTHZ_CHECK = "/hin.authz.v1.AuthzService/Check"


def call(
    network: RunningNetwork,
    target: str,
    path: str,
    credentials: grpc.ChannelCredentials | None,
) -> grpc.StatusCode:
    """Call ``path`` on ``target``'s sidecar and return the status code."""
    address = network.state.replica(target).sidecar_inbound
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        override = dns_name(service_identity(target))
        channel = grpc.secure_channel(
            address, credentials, (("grpc.ssl_target_name_override", override),)
        )
    with channel:
        method = channel.unary_unary(path)
        try:
            method(b"", timeout=5)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def credentials_for(
    network: RunningNetwork, identity: str, issuer: CertificateAuthority | None = None
) -> grpc.ChannelCredentials:
    """Return client credentials for ``identity`` signed by ``issuer``."""
    mesh = CertificateAuthority.load_or_create(network.state_dir)
    cert, key = (issuer or mesh).issue(identity)
    return grpc.ssl_channel_credentials(
        root_certificates=mesh.certificate_pem(),
        private_key=key,
        certificate_chain=cert,
    )


def test_plaintext_to_inbound_fails(mesh_network: RunningNetwork) -> None:
    code = call(mesh_network, "records", UPDATE_PATIENT, None)
    assert code == grpc.StatusCode.UNAVAILABLE


def test_foreign_ca_certificate_fails(mesh_network: RunningNetwork) -> None:
    foreign = CertificateAuthority.create(common_name="not the mesh")
    credentials = credentials_for(mesh_network, "svc/billing", issuer=foreign)
    code = call(mesh_network, "records", UPDATE_PATIENT, credentials)
    assert code == grpc.StatusCode.UNAVAILABLE


def test_caller_outside_policy_denied(mesh_network: RunningNetwork) -> None:
    credentials = credentials_for(mesh_network, "svc/billing")
    code = call(mesh_network, "records", UPDATE_PATIENT, credentials)
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_ingress_identity_passes_rbac(mesh_network: RunningNetwork) -> None:
    # The records stand-in serves only EchoService, so a call that passes the
    # sidecar's RBAC reaches the service and is UNIMPLEMENTED there.
    credentials = credentials_for(mesh_network, "ingress")
    code = call(mesh_network, "records", UPDATE_PATIENT, credentials)
    assert code == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("caller", "path", "expected"),
    [
        ("svc/records", AUTHZ_CHECK, grpc.StatusCode.UNIMPLEMENTED),
        ("svc/billing", AUTHZ_CHECK, grpc.StatusCode.UNIMPLEMENTED),
        (
            "svc/records",
            "/hin.authz.v1.AuthzService/GrantConsent",
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        ("svc/flaky", AUTHZ_CHECK, grpc.StatusCode.PERMISSION_DENIED),
        ("svc/authz", UPDATE_PATIENT, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_call_policy_per_method(
    mesh_network: RunningNetwork, caller: str, path: str, expected: grpc.StatusCode
) -> None:
    target = "authz" if path.startswith("/hin.authz") else "records"
    credentials = credentials_for(mesh_network, caller)
    assert call(mesh_network, target, path, credentials) == expected


def test_health_open_to_mesh_identities(mesh_network: RunningNetwork) -> None:
    credentials = credentials_for(mesh_network, "operator/cli")
    code = call(mesh_network, "records", "/grpc.health.v1.Health/Check", credentials)
    assert code == grpc.StatusCode.OK


def test_sidecar_sets_caller_spiffe_id(mesh_network: RunningNetwork) -> None:
    from hin.echo.v1 import echo_service_pb2 as pb
    from hin.echo.v1 import echo_service_pb2_grpc as pb_grpc

    # The sidecar replaces a client-supplied x-forwarded-client-cert with the
    # URI of the verified certificate, so a caller cannot pose as authz.
    address = mesh_network.state.replica("echo").sidecar_inbound
    credentials = credentials_for(mesh_network, "svc/records")
    override = dns_name(service_identity("echo"))
    with grpc.secure_channel(
        address, credentials, (("grpc.ssl_target_name_override", override),)
    ) as channel:
        reply = pb_grpc.EchoServiceStub(channel).Echo(
            pb.EchoRequest(message="x"),
            metadata=(("x-forwarded-client-cert", "URI=spiffe://hin.local/svc/authz"),),
            timeout=5,
        )
    assert reply.caller == "spiffe://hin.local/svc/records"
