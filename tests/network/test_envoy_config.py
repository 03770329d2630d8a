"""Generated Envoy configurations: valid for Envoy 1.40 and shaped by the policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mesh.network import envoy
from mesh.network.devkeys import ensure_dev_keys
from mesh.network.pki import CertificateAuthority
from mesh.network.topology import default_topology

pytestmark = pytest.mark.mesh

REPLICAS = {"labs": 3}


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Write the sidecar of every service and the ingress for the default topology."""
    state = tmp_path_factory.mktemp("envoy")
    authority = CertificateAuthority.load_or_create(state)
    topology = default_topology().with_replicas(REPLICAS)
    port = iter(range(20000, 30000))
    inbound = {
        s.name: [f"127.0.0.1:{next(port)}" for _ in range(s.replicas)]
        for s in topology.services
    }
    paths: dict[str, Path] = {}
    for service in topology.services:
        secrets = envoy.write_secret_files(
            authority, f"svc/{service.name}", state / "envoy" / service.name
        )
        config = envoy.build_sidecar(
            topology=topology,
            service=service.name,
            address=f"127.0.0.1:{next(port)}",
            inbound=inbound[service.name][0],
            admin=f"127.0.0.1:{next(port)}",
            outbound={
                t: f"127.0.0.1:{next(port)}" for t in topology.upstreams(service.name)
            },
            upstream_endpoints=inbound,
            secrets=secrets,
            trace_receiver="127.0.0.1:4317",
        )
        paths[service.name] = envoy.write_bootstrap(
            config, state / "envoy" / f"{service.name}.json"
        )
    _, jwks = ensure_dev_keys(state)
    config = envoy.build_ingress(
        topology=topology,
        listen="127.0.0.1:8080",
        admin="127.0.0.1:8081",
        service_endpoints=inbound,
        secrets=envoy.write_secret_files(
            authority, "ingress", state / "envoy" / "ingress"
        ),
        jwks_path=jwks,
        issuer="https://hin.local/dev-issuer",
        audience="hin",
        trace_receiver="127.0.0.1:4317",
    )
    paths["ingress"] = envoy.write_bootstrap(config, state / "envoy" / "ingress.json")
    return paths


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def http_manager(config: dict[str, Any], listener: str) -> dict[str, Any]:
    for entry in config["staticResources"]["listeners"]:
        if entry["name"] == listener:
            return entry["filterChains"][0]["filters"][0]["typedConfig"]
    raise KeyError(listener)


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in config["staticResources"]["clusters"] if c["name"] == name)


@pytest.mark.parametrize(
    "name", [*(s.name for s in default_topology().services), "ingress"]
)
def test_config_passes_envoy_validate(configs: dict[str, Path], name: str) -> None:
    result = envoy.validate(configs[name])
    assert result.returncode == 0, result.stderr[-2000:]


def test_inbound_rbac_names_allowed_callers(configs: dict[str, Path]) -> None:
    manager = http_manager(load(configs["authz"]), "inbound")
    rbac = manager["httpFilters"][0]["typedConfig"]["rules"]
    expected = {"health", "ingress"} | {
        f"svc-{c}"
        for c in ("records", "appointments", "labs", "billing", "notify", "echo")
    }
    assert set(rbac["policies"]) == expected
    principal = rbac["policies"]["svc-labs"]["principals"][0]
    assert principal["authenticated"]["principalName"]["exact"] == (
        "spiffe://hin.local/svc/labs"
    )


def test_records_rbac_has_no_service_callers(configs: dict[str, Path]) -> None:
    manager = http_manager(load(configs["records"]), "inbound")
    rbac = manager["httpFilters"][0]["typedConfig"]["rules"]
    assert set(rbac["policies"]) == {"health", "ingress"}


def test_inbound_sets_client_cert_header(configs: dict[str, Path]) -> None:
    manager = http_manager(load(configs["labs"]), "inbound")
    assert manager["forwardClientCertDetails"] == "SANITIZE_SET"
    assert manager["setCurrentClientCertDetails"] == {"uri": True}


def test_inbound_requires_tls13_client_cert(configs: dict[str, Path]) -> None:
    listener = load(configs["labs"])["staticResources"]["listeners"][0]
    tls = listener["filterChains"][0]["transportSocket"]["typedConfig"]
    assert tls["requireClientCertificate"] is True
    params = tls["commonTlsContext"]["tlsParams"]
    assert params["tlsMinimumProtocolVersion"] == "TLSv1_3"


def test_outbound_cluster_pins_upstream_identity(configs: dict[str, Path]) -> None:
    labs = load(configs["labs"])
    authz = cluster(labs, "out_authz")
    context = authz["transportSocket"]["typedConfig"]["commonTlsContext"]
    matchers = context["combinedValidationContext"]["defaultValidationContext"][
        "matchTypedSubjectAltNames"
    ]
    assert matchers == [
        {"sanType": "URI", "matcher": {"exact": "spiffe://hin.local/svc/authz"}}
    ]
    assert authz["outlierDetection"]["consecutive5xx"] == 5


def test_labs_replicas_behind_one_cluster(configs: dict[str, Path]) -> None:
    ingress = load(configs["ingress"])
    endpoints = cluster(ingress, "svc_labs")["loadAssignment"]["endpoints"][0]
    assert len(endpoints["lbEndpoints"]) == REPLICAS["labs"]


def test_retries_only_on_idempotent_route(configs: dict[str, Path]) -> None:
    manager = http_manager(load(configs["labs"]), "outbound_authz")
    routes = manager["routeConfig"]["virtualHosts"][0]["routes"]
    retried = [r["name"] for r in routes if "retryPolicy" in r["route"]]
    assert retried == ["authz-idempotent"]


def test_subscribe_route_has_no_timeouts(configs: dict[str, Path]) -> None:
    manager = http_manager(load(configs["ingress"]), "ingress")
    routes = manager["routeConfig"]["virtualHosts"][0]["routes"]
    subscribe = next(
        r
        for r in routes
        if r["match"].get("path") == "/hin.notify.v1.NotifyService/Subscribe"
    )
    assert subscribe["route"]["timeout"] == "0s"
    assert subscribe["route"]["idleTimeout"] == "0s"


def test_ingress_cors_exposes_grpc_status(configs: dict[str, Path]) -> None:
    manager = http_manager(load(configs["ingress"]), "ingress")
    host = manager["routeConfig"]["virtualHosts"][0]
    cors = host["typedPerFilterConfig"]["envoy.filters.http.cors"]
    assert set(cors["exposeHeaders"].split(",")) == {
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
    }


def test_ingress_jwt_uses_dev_jwks(configs: dict[str, Path]) -> None:
    manager = http_manager(load(configs["ingress"]), "ingress")
    jwt = next(
        f["typedConfig"]
        for f in manager["httpFilters"]
        if f["name"].endswith("jwt_authn")
    )
    provider = jwt["providers"]["hin-dev"]
    assert provider["issuer"] == "https://hin.local/dev-issuer"
    assert provider["audiences"] == ["hin"]
    assert provider["forward"] is True
    assert provider["localJwks"]["filename"].endswith("keys/jwks.json")


def test_health_checks_not_traced(configs: dict[str, Path]) -> None:
    manager = http_manager(load(configs["labs"]), "inbound")
    routes = manager["routeConfig"]["virtualHosts"][0]["routes"]
    health = next(r for r in routes if r["name"] == "health")
    assert health["tracing"]["randomSampling"] == {}
    assert health["tracing"]["overallSampling"] == {}
