"""Mesh PKI: SPIFFE leaf certificates and rotation without downtime."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from hin.echo.v1 import echo_service_pb2 as pb
from hin.echo.v1 import echo_service_pb2_grpc as pb_grpc
from mesh.network.clients import admin_metadata, ingress_channel_sync
from mesh.network.pki import LEAF_LIFETIME, CertificateAuthority, read_spiffe_id
from tests.network.conftest import RunningNetwork

pytestmark = pytest.mark.mesh


def test_leaf_carries_spiffe_uri(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    cert_pem, _ = authority.issue("svc/labs")
    assert read_spiffe_id(cert_pem) == "spiffe://hin.local/svc/labs"


def test_leaf_signed_by_root(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    cert_pem, _ = authority.issue("svc/labs")
    leaf = x509.load_pem_x509_certificate(cert_pem)
    leaf.verify_directly_issued_by(authority.certificate)


def test_leaf_lifetime_is_short(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    leaf = x509.load_pem_x509_certificate(authority.issue("svc/labs")[0])
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    # Valid from five minutes back (clock skew) for 24 hours.
    assert lifetime == LEAF_LIFETIME + datetime.timedelta(minutes=5)
    assert lifetime <= datetime.timedelta(days=1, minutes=5)


def test_root_reloaded_not_recreated(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path)
    second = CertificateAuthority.load_or_create(tmp_path)
    assert first.certificate.serial_number == second.certificate.serial_number


def test_rotation_swaps_stable_paths(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    files = authority.ensure_leaf("svc/labs")
    before = files.cert.read_bytes()
    rotated = authority.rotate("svc/labs")
    assert rotated.cert == files.cert
    assert files.cert.read_bytes() != before
    generations = [p for p in files.folder.iterdir() if p.name.startswith("gen-")]
    assert len(generations) == 1


def test_ensure_leaf_keeps_valid_leaf(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    first = authority.ensure_leaf("svc/labs").cert.read_bytes()
    assert authority.ensure_leaf("svc/labs").cert.read_bytes() == first


def test_ensure_leaf_renews_expiring_leaf(tmp_path: Path) -> None:
    authority = CertificateAuthority.load_or_create(tmp_path)
    first = authority.ensure_leaf("svc/labs").cert.read_bytes()
    # Every 24-hour leaf has less than 25 hours left, so it counts as expiring.
    renewed = authority.ensure_leaf(
        "svc/labs", renew_before=datetime.timedelta(hours=25)
    )
    assert renewed.cert.read_bytes() != first


def served_serial(network: RunningNetwork, service: str) -> int:
    """Return the serial number of the certificate ``service``'s sidecar serves."""
    authority = CertificateAuthority.load_or_create(network.state_dir)
    client = authority.ensure_leaf("operator/cli")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(cadata=authority.certificate_pem().decode())
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    host, port = network.state.replica(service).sidecar_inbound.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_rotation_reaches_envoy_without_dropping_stream(
    mesh_network: RunningNetwork,
) -> None:
    before = served_serial(mesh_network, "echo")
    received: list[int] = []
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with ingress_channel_sync(mesh_network.state_dir) as channel:
                replies = pb_grpc.EchoServiceStub(channel).EchoStream(
                    pb.EchoStreamRequest(message="r", count=6, interval_ms=500),
                    metadata=admin_metadata(mesh_network.state_dir),
                    timeout=30,
                )
                received.extend(reply.sequence for reply in replies)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    worker = threading.Thread(target=stream)
    worker.start()
    time.sleep(0.8)
    authority = CertificateAuthority.load_or_create(mesh_network.state_dir)
    rotated = x509.load_pem_x509_certificate(
        authority.rotate("svc/echo").cert.read_bytes()
    )

    deadline = time.monotonic() + 20
    after = served_serial(mesh_network, "echo")
    while after == before and time.monotonic() < deadline:
        time.sleep(0.5)
        after = served_serial(mesh_network, "echo")
    worker.join(30)

    assert after == rotated.serial_number
    assert errors == []
    assert received == [0, 1, 2, 3, 4, 5]
