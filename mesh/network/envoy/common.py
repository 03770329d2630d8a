"""Building blocks shared by the sidecar and ingress Envoy configurations."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import betterproto2
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import (
    Admin,
    Bootstrap,
    BootstrapStaticResources,
)
from envoy_data_plane.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    ClusterLbPolicy,
    OutlierDetection,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiVersion,
    ConfigSource,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    Http2ProtocolOptions,
    KeepaliveSettings,
    Node,
    PathConfigSource,
    SocketAddress,
    TransportSocket,
    WatchedDirectory,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import (
    StderrAccessLog,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: E501
    HttpConnectionManagerTracing,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    CommonTlsContextCombinedCertificateValidationContext,
    SdsSecretConfig,
    Secret,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    TlsCertificate,
    TlsParameters,
    TlsParametersTlsProtocol,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryResponse
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.google.protobuf import Any as AnyMessage

from mesh.network.pki import CertificateAuthority, spiffe_id

TRACE_CLUSTER = "otel_collector"
CERT_SECRET = "mesh_certificate"
CA_SECRET = "mesh_ca"
CONNECT_TIMEOUT = datetime.timedelta(seconds=2)
#: Sent on every HTTP/2 connection so an idle stream's connection stays open
#: through NAT and load balancers (a no-op on loopback, kept for clusters).
HTTP2_KEEPALIVE = KeepaliveSettings(
    interval=datetime.timedelta(seconds=30), timeout=datetime.timedelta(seconds=10)
)


@dataclass(frozen=True)
class SecretFiles:
    """SDS files that deliver one identity's certificate and the mesh CA."""

    certificate: Path
    authority: Path


def pack(message: betterproto2.Message) -> AnyMessage:
    """Pack a typed filter or extension configuration into ``Any``."""
    return AnyMessage.pack(message)


def socket_address(host_port: str) -> Address:
    """Return an Envoy address for ``host:port`` (IPv6 hosts in brackets)."""
    host, _, port = host_port.rpartition(":")
    return Address(
        socket_address=SocketAddress(address=host.strip("[]"), port_value=int(port))
    )


def is_ip(host: str) -> bool:
    """Return whether ``host`` is an IP literal (else a DNS name)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def tls_parameters() -> TlsParameters:
    """Return TLS 1.3 only, because Envoy originates TLS 1.2 by default."""
    return TlsParameters(
        tls_minimum_protocol_version=TlsParametersTlsProtocol.TLSv1_3,
        tls_maximum_protocol_version=TlsParametersTlsProtocol.TLSv1_3,
    )


def write_secret_files(
    authority: CertificateAuthority, identity: str, folder: Path
) -> SecretFiles:
    """Write the SDS files Envoy reads ``identity``'s certificate and CA from.

    The certificate secret names the stable ``cert.pem``/``key.pem`` links and
    watches their folder, so ``CertificateAuthority.rotate`` reaches a running
    Envoy without a restart.
    """
    files = authority.ensure_leaf(identity)
    folder.mkdir(parents=True, exist_ok=True)
    certificate, ca = secret_documents(
        cert=str(files.cert),
        key=str(files.key),
        watched_folder=str(files.folder),
        ca=str(authority.ca_path),
    )
    paths = SecretFiles(
        certificate=folder / "sds-certificate.json",
        authority=folder / "sds-ca.json",
    )
    write_json(certificate, paths.certificate)
    write_json(ca, paths.authority)
    return paths


def secret_documents(
    *, cert: str, key: str, watched_folder: str, ca: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the SDS file contents for a certificate and for the mesh CA.

    Envoy rereads the certificate and key together when an entry is moved
    into ``watched_folder``.
    """
    certificate = Secret(
        name=CERT_SECRET,
        tls_certificate=TlsCertificate(
            certificate_chain=DataSource(filename=cert),
            private_key=DataSource(filename=key),
            watched_directory=WatchedDirectory(path=watched_folder),
        ),
    )
    authority = Secret(
        name=CA_SECRET,
        validation_context=CertificateValidationContext(
            trusted_ca=DataSource(filename=ca),
        ),
    )
    return (
        to_json_dict(DiscoveryResponse(resources=[pack(certificate)])),
        to_json_dict(DiscoveryResponse(resources=[pack(authority)])),
    )


def sds_config(name: str, path: Path) -> SdsSecretConfig:
    """Return an SDS reference to a secret read from file ``path``."""
    return SdsSecretConfig(
        name=name,
        sds_config=ConfigSource(
            path_config_source=PathConfigSource(path=str(path)),
            resource_api_version=ApiVersion.V3,
        ),
    )


def common_tls_context(
    secrets: SecretFiles, *, peer_ids: Sequence[str] = (), alpn: Sequence[str] = ("h2",)
) -> CommonTlsContext:
    """Return TLS 1.3 with the mesh certificate, checking peers by the mesh CA.

    When ``peer_ids`` is given, the peer's URI SAN must be one of these
    SPIFFE ids, which is how an outbound cluster pins its upstream service.
    """
    validation = CertificateValidationContext(
        match_typed_subject_alt_names=[
            SubjectAltNameMatcher(
                san_type=SubjectAltNameMatcherSanType.URI,
                matcher=StringMatcher(exact=peer),
            )
            for peer in peer_ids
        ]
    )
    return CommonTlsContext(
        tls_params=tls_parameters(),
        tls_certificate_sds_secret_configs=[
            sds_config(CERT_SECRET, secrets.certificate)
        ],
        combined_validation_context=CommonTlsContextCombinedCertificateValidationContext(
            default_validation_context=validation,
            validation_context_sds_secret_config=sds_config(
                CA_SECRET, secrets.authority
            ),
        ),
        alpn_protocols=list(alpn),
    )


def http2_options() -> AnyMessage:
    """Return cluster protocol options that speak HTTP/2 (gRPC) upstream."""
    return pack(
        HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http2_protocol_options=Http2ProtocolOptions(
                    connection_keepalive=HTTP2_KEEPALIVE
                )
            )
        )
    )


def static_cluster(
    name: str,
    endpoints: Sequence[str],
    *,
    tls: UpstreamTlsContext | None = None,
    outlier_detection: OutlierDetection | None = None,
) -> Cluster:
    """Return an HTTP/2 cluster balancing round-robin over ``endpoints``."""
    hosts = [endpoint.rpartition(":")[0] for endpoint in endpoints]
    dns = not all(is_ip(host) for host in hosts)
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STRICT_DNS if dns else ClusterDiscoveryType.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(endpoint=Endpoint(address=socket_address(e)))
                        for e in endpoints
                    ]
                )
            ],
        ),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2_options()
        },
        outlier_detection=outlier_detection,
    )
    if tls is not None:
        cluster.transport_socket = TransportSocket(
            name="envoy.transport_sockets.tls", typed_config=pack(tls)
        )
    return cluster


def upstream_tls(
    secrets: SecretFiles, peer_identity: str, sni: str
) -> UpstreamTlsContext:
    """Return mTLS to a sidecar that must present ``peer_identity``'s SPIFFE id."""
    return UpstreamTlsContext(
        common_tls_context=common_tls_context(
            secrets, peer_ids=[spiffe_id(peer_identity)]
        ),
        sni=sni,
    )


def outlier_detection() -> OutlierDetection:
    """Return ejection of a replica after consecutive failed calls.

    The router counts the grpc-status of trailers as an HTTP code (UNAVAILABLE
    is 503), so a replica that fails every call in trailers is ejected too.
    """
    return OutlierDetection(
        consecutive_5xx=5,
        consecutive_gateway_failure=5,
        interval=datetime.timedelta(seconds=1),
        base_ejection_time=datetime.timedelta(seconds=30),
        # One of three replicas must be ejectable; never eject them all.
        max_ejection_percent=50,
    )


def trace_cluster(receiver: str) -> Cluster:
    """Return the cluster of the OTLP/gRPC receiver spans are exported to."""
    return static_cluster(TRACE_CLUSTER, [receiver])


def tracing(service_name: str) -> HttpConnectionManagerTracing:
    """Return OpenTelemetry tracing of every request, exported over OTLP/gRPC."""
    return HttpConnectionManagerTracing(
        provider=TracingHttp(
            name="envoy.tracers.opentelemetry",
            typed_config=pack(
                OpenTelemetryConfig(
                    grpc_service=GrpcService(
                        envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=TRACE_CLUSTER),
                        timeout=datetime.timedelta(seconds=1),
                    ),
                    service_name=service_name,
                )
            ),
        ),
        spawn_upstream_span=True,
    )


def access_log() -> list[AccessLog]:
    """Return one access-log line per request on standard error."""
    return [
        AccessLog(
            name="envoy.access_loggers.stderr", typed_config=pack(StderrAccessLog())
        )
    ]


def bootstrap(
    *, node_id: str, admin: str, listeners: list[Listener], clusters: list[Cluster]
) -> Bootstrap:
    """Return a static bootstrap with an admin listener on ``admin``."""
    return Bootstrap(
        node=Node(id=node_id, cluster=node_id),
        admin=Admin(address=socket_address(admin)),
        static_resources=BootstrapStaticResources(
            listeners=listeners, clusters=clusters
        ),
    )


def to_json_dict(message: betterproto2.Message) -> dict[str, Any]:
    """Return the proto3 JSON form of ``message`` that Envoy reads.

    betterproto2 0.9 capitalizes a letter after a digit in JSON names
    (``consecutive_5xx`` becomes ``consecutive5Xx``, protobuf's name is
    ``consecutive5xx``), so the affected keys are renamed here.
    """
    return _rename_keys(message.to_dict())


#: JSON names betterproto2 gets wrong, mapped to protobuf's names.
_JSON_NAME_FIXES = {
    "consecutive5Xx": "consecutive5xx",
    "enforcingConsecutive5Xx": "enforcingConsecutive5xx",
}


def _rename_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_JSON_NAME_FIXES.get(k, k): _rename_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_keys(item) for item in value]
    return value


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as JSON atomically (Envoy may be watching the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2))
    staging.replace(path)


def write_bootstrap(config: Bootstrap, path: Path) -> Path:
    """Write a bootstrap as the JSON Envoy reads with ``-c``."""
    write_json(to_json_dict(config), path)
    return path


def envoy_binary() -> str:
    """Return the path of the Envoy binary installed next to this Python."""
    candidate = Path(sys.executable).parent / "envoy"
    return str(candidate) if candidate.exists() else "envoy"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``envoy --mode validate`` on a bootstrap file and return the result."""
    return subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(path),
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
