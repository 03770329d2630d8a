"""Kubernetes manifests rendered from the same topology as the local mesh.

Each service becomes five objects. A Deployment runs the service container
and its Envoy sidecar. A headless Service lets the callers' Envoys resolve
every pod, so they can eject one. A ConfigMap holds the Envoy bootstrap and
SDS files, a Secret the mesh certificate, and a NetworkPolicy admits only the
callers the call policy names. The ingress gets the same, and a default-deny
policy closes everything else in the namespace.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.network import envoy
from mesh.network.envoy.common import SecretFiles, secret_documents, to_json_dict
from mesh.network.envoy.sidecar import INGRESS_IDENTITY
from mesh.network.pki import CertificateAuthority, service_identity
from mesh.network.topology import ServiceDef, Topology
from mesh.runtime.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER

SERVICE_PORT = 50051
INBOUND_PORT = 15443
ADMIN_PORT = 15000
FIRST_OUTBOUND_PORT = 15001
INGRESS_PORT = 8080
MLLP_PORT = 2575
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
CERT_DIR = "/etc/hin/certs"
ENVOY_DIR = "/etc/envoy"
JWKS_DIR = "/etc/hin/jwks"
PART_OF = "hin"


@dataclass(frozen=True)
class RenderSettings:
    """Cluster-specific values the manifests need."""

    namespace: str = "hin"
    image: str = "hin:latest"
    kafka_bootstrap: str = "kafka.kafka.svc.cluster.local:9092"
    #: OTLP/gRPC collector host:port for services and Envoys.
    otlp_endpoint: str = "otel-collector.observability.svc.cluster.local:4317"
    #: SQLAlchemy URL pattern; {name} is replaced by the service name.
    database_url: str = ""


def render(
    topology: Topology,
    authority: CertificateAuthority,
    jwks: dict[str, Any],
    settings: RenderSettings,
) -> dict[str, list[dict[str, Any]]]:
    """Return {file stem: manifests} for every service and the ingress."""
    files: dict[str, list[dict[str, Any]]] = {
        "namespace": [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": settings.namespace,
                    "labels": _labels("namespace"),
                },
            },
            _default_deny(settings.namespace),
            _jwks_config_map(jwks, settings.namespace),
        ]
    }
    for service in topology.services:
        files[service.name] = list(
            _service_manifests(topology, service, authority, settings)
        )
    files["ingress"] = list(_ingress_manifests(topology, authority, jwks, settings))
    return files


def write_manifests(files: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    """Write each entry of ``files`` as a multi-document YAML file in ``out``."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, documents in files.items():
        path = out / f"{stem}.yaml"
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        written.append(path)
    return written


def _service_manifests(
    topology: Topology,
    service: ServiceDef,
    authority: CertificateAuthority,
    settings: RenderSettings,
) -> Iterator[dict[str, Any]]:
    namespace = settings.namespace
    upstreams = topology.upstreams(service.name)
    outbound = {
        target: f"127.0.0.1:{FIRST_OUTBOUND_PORT + index}"
        for index, target in enumerate(upstreams)
    }
    bootstrap = envoy.build_sidecar(
        topology=topology,
        service=service.name,
        address=f"127.0.0.1:{SERVICE_PORT}",
        inbound=f"0.0.0.0:{INBOUND_PORT}",
        admin=f"127.0.0.1:{ADMIN_PORT}",
        outbound=outbound,
        upstream_endpoints={
            target: [f"{_host(target, namespace)}:{INBOUND_PORT}"]
            for target in upstreams
        },
        secrets=_pod_secret_files(),
        trace_receiver=settings.otlp_endpoint,
    )
    yield _envoy_config_map(service.name, namespace, to_json_dict(bootstrap))
    yield _certificate_secret(
        service.name, service_identity(service.name), authority, namespace
    )

    env = [
        {"name": "HIN_GRPC_ADDRESS", "value": f"127.0.0.1:{SERVICE_PORT}"},
        {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": settings.kafka_bootstrap},
        {"name": "HIN_JWKS_PATH", "value": f"{JWKS_DIR}/jwks.json"},
        {
            "name": "OTEL_EXPORTER_OTLP_ENDPOINT",
            "value": f"http://{settings.otlp_endpoint}",
        },
        {"name": "HIN_AUTHZ_ADDRESS", "value": outbound.get("authz", "")},
        {"name": "HIN_STATE_DIR", "value": "/var/lib/hin"},
        {
            "name": "HIN_INSTANCE_ID",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
        },
    ]
    if settings.database_url:
        env.append(
            {
                "name": "HIN_DATABASE_URL",
                "value": settings.database_url.format(name=service.name),
            }
        )
    env.extend({"name": k, "value": v} for k, v in service.environment.items())
    ports = [{"name": "grpc-mesh", "containerPort": INBOUND_PORT}]
    service_ports = [
        {"name": "grpc-mesh", "port": INBOUND_PORT, "targetPort": INBOUND_PORT}
    ]
    app_ports: list[dict[str, Any]] = []
    if service.mllp:
        # NOTE: MLLP is plain TCP from hospital systems and bypasses Envoy, as
        # on one machine; the labs service must then listen on the pod address.
        env.append(
            {
                "name": f"HIN_{service.name.upper()}_MLLP_ADDRESS",
                "value": f"0.0.0.0:{MLLP_PORT}",
            }
        )
        app_ports.append({"name": "mllp", "containerPort": MLLP_PORT})
        service_ports.append(
            {"name": "mllp", "port": MLLP_PORT, "targetPort": MLLP_PORT}
        )

    service_container: dict[str, Any] = {
        "name": "service",
        "image": settings.image,
        "command": ["python", "-m", service.module],
        "env": env,
        "volumeMounts": [
            {"name": "jwks", "mountPath": JWKS_DIR, "readOnly": True},
            {"name": "state", "mountPath": "/var/lib/hin"},
        ],
    }
    if app_ports:
        service_container["ports"] = app_ports
    yield _deployment(
        service.name,
        namespace,
        replicas=service.replicas,
        containers=[service_container, _envoy_container(ports)],
        volumes=[
            {"name": "jwks", "configMap": {"name": "hin-jwks"}},
            {"name": "state", "emptyDir": {}},
        ],
    )
    yield {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service.name, namespace),
        # Headless, so each caller's Envoy resolves every pod and can eject one.
        "spec": {
            "clusterIP": "None",
            "selector": {"app": service.name},
            "ports": service_ports,
        },
    }
    callers = sorted({*topology.callers(service.name), "ingress"})
    rules: list[dict[str, Any]] = [
        {
            "from": [
                {
                    "podSelector": {
                        "matchExpressions": [
                            {"key": "app", "operator": "In", "values": callers}
                        ]
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": INBOUND_PORT}],
        }
    ]
    if service.mllp:
        rules.append({"ports": [{"protocol": "TCP", "port": MLLP_PORT}]})
    yield {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(f"{service.name}-callers", namespace, app=service.name),
        "spec": {
            "podSelector": {"matchLabels": {"app": service.name}},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def _ingress_manifests(
    topology: Topology,
    authority: CertificateAuthority,
    jwks: dict[str, Any],
    settings: RenderSettings,
) -> Iterator[dict[str, Any]]:
    namespace = settings.namespace
    bootstrap = envoy.build_ingress(
        topology=topology,
        listen=f"0.0.0.0:{INGRESS_PORT}",
        admin=f"127.0.0.1:{ADMIN_PORT}",
        service_endpoints={
            s.name: [f"{_host(s.name, namespace)}:{INBOUND_PORT}"]
            for s in topology.services
        },
        secrets=_pod_secret_files(),
        jwks_path=Path(JWKS_DIR) / "jwks.json",
        issuer=DEFAULT_ISSUER,
        audience=DEFAULT_AUDIENCE,
        trace_receiver=settings.otlp_endpoint,
    )
    yield _envoy_config_map("ingress", namespace, to_json_dict(bootstrap))
    yield _certificate_secret("ingress", INGRESS_IDENTITY, authority, namespace)
    container = _envoy_container([{"name": "http", "containerPort": INGRESS_PORT}])
    container["volumeMounts"].append(
        {"name": "jwks", "mountPath": JWKS_DIR, "readOnly": True}
    )
    yield _deployment(
        "ingress",
        namespace,
        replicas=1,
        containers=[container],
        volumes=[{"name": "jwks", "configMap": {"name": "hin-jwks"}}],
    )
    yield {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata("ingress", namespace),
        "spec": {
            "selector": {"app": "ingress"},
            "ports": [
                {"name": "http", "port": INGRESS_PORT, "targetPort": INGRESS_PORT}
            ],
        },
    }
    yield {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata("ingress-public", namespace, app="ingress"),
        "spec": {
            "podSelector": {"matchLabels": {"app": "ingress"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": INGRESS_PORT}]}],
        },
    }


def _pod_secret_files() -> SecretFiles:
    return SecretFiles(
        certificate=Path(ENVOY_DIR) / "sds-certificate.json",
        authority=Path(ENVOY_DIR) / "sds-ca.json",
    )


def _envoy_config_map(
    name: str, namespace: str, bootstrap: dict[str, Any]
) -> dict[str, Any]:
    # A Secret volume swaps its "..data" link on update, which is the move
    # Envoy's watched_directory reacts to, so rotated certificates load live.
    certificate, authority = secret_documents(
        cert=f"{CERT_DIR}/cert.pem",
        key=f"{CERT_DIR}/key.pem",
        watched_folder=CERT_DIR,
        ca=f"{CERT_DIR}/ca.pem",
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(f"{name}-envoy", namespace, app=name),
        "data": {
            "envoy.json": json.dumps(bootstrap, indent=2),
            "sds-certificate.json": json.dumps(certificate, indent=2),
            "sds-ca.json": json.dumps(authority, indent=2),
        },
    }


def _certificate_secret(
    name: str, identity: str, authority: CertificateAuthority, namespace: str
) -> dict[str, Any]:
    # NOTE: these leaves are issued here and expire in a day. A cluster should
    # issue and rotate them into the same Secret with cert-manager or SPIRE.
    cert, key = authority.issue(identity)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(f"{name}-mesh-certificate", namespace, app=name),
        "data": {
            "cert.pem": base64.b64encode(cert).decode(),
            "key.pem": base64.b64encode(key).decode(),
            "ca.pem": base64.b64encode(authority.certificate_pem()).decode(),
        },
    }


def _jwks_config_map(jwks: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata("hin-jwks", namespace),
        "data": {"jwks.json": json.dumps(jwks, indent=2)},
    }


def _envoy_container(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "envoy",
        "image": ENVOY_IMAGE,
        "args": ["-c", f"{ENVOY_DIR}/envoy.json", "--log-level", "warn"],
        "ports": ports,
        "volumeMounts": [
            {"name": "envoy-config", "mountPath": ENVOY_DIR, "readOnly": True},
            {"name": "mesh-certificate", "mountPath": CERT_DIR, "readOnly": True},
        ],
    }


def _deployment(
    name: str,
    namespace: str,
    *,
    replicas: int,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **_labels(name)}},
                "spec": {
                    "containers": containers,
                    "volumes": [
                        *volumes,
                        {
                            "name": "envoy-config",
                            "configMap": {"name": f"{name}-envoy"},
                        },
                        {
                            "name": "mesh-certificate",
                            "secret": {"secretName": f"{name}-mesh-certificate"},
                        },
                    ],
                },
            },
        },
    }


def _default_deny(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata("default-deny-ingress", namespace),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def _metadata(name: str, namespace: str, *, app: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {"app": app or name, **_labels(app or name)},
    }


def _labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/component": component,
    }


def _host(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"
