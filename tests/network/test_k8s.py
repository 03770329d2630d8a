"""``hin render k8s``: manifests valid for Kubernetes 1.37 and shaped by policy."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mesh.network.cli import main
from mesh.network.pki import read_spiffe_id

KUBERNETES_VERSION = "1.37.0"
AUTHZ_CALLERS = {"records", "appointments", "labs", "billing", "notify", "echo"}


@pytest.fixture(scope="module")
def manifests(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, list[dict[str, Any]]]:
    base = tmp_path_factory.mktemp("k8s")
    out = base / "out"
    code = main(
        [
            "--state",
            str(base / "state"),
            "render",
            "k8s",
            "--out",
            str(out),
            "--replicas",
            "labs=3",
        ]
    )
    assert code == 0
    return {
        path.stem: list(yaml.safe_load_all(path.read_text()))
        for path in sorted(Path(out).glob("*.yaml"))
    }


def find(documents: list[dict[str, Any]], kind: str, name: str = "") -> dict[str, Any]:
    return next(
        d
        for d in documents
        if d["kind"] == kind and (not name or d["metadata"]["name"] == name)
    )


def test_every_manifest_validates(manifests: dict[str, list[dict[str, Any]]]) -> None:
    documents = [d for docs in manifests.values() for d in docs]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    # Namespace, deny-all policy and JWKS, then five per service and ingress.
    assert len(documents) == 3 + 5 * 8


def test_one_file_per_service(manifests: dict[str, list[dict[str, Any]]]) -> None:
    assert set(manifests) == {
        "namespace",
        "authz",
        "records",
        "appointments",
        "labs",
        "billing",
        "notify",
        "echo",
        "ingress",
    }


def test_labs_deployment_has_sidecar(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = find(manifests["labs"], "Deployment")
    assert deployment["spec"]["replicas"] == 3
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["service", "envoy"]
    assert containers[0]["command"] == ["python", "-m", "svc_labs"]


def test_authz_policy_admits_callers(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    policy = find(manifests["authz"], "NetworkPolicy")
    selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert set(selector["matchExpressions"][0]["values"]) == AUTHZ_CALLERS | {"ingress"}


def test_records_admits_only_ingress(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    policy = find(manifests["records"], "NetworkPolicy")
    selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert selector["matchExpressions"][0]["values"] == ["ingress"]


def test_namespace_denies_by_default(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    policy = find(manifests["namespace"], "NetworkPolicy", "default-deny-ingress")
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_secret_carries_spiffe_certificate(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    secret = find(manifests["billing"], "Secret")
    cert = base64.b64decode(secret["data"]["cert.pem"])
    assert read_spiffe_id(cert) == "spiffe://hin.local/svc/billing"


def test_sidecar_dials_headless_service(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    config = json.loads(find(manifests["labs"], "ConfigMap")["data"]["envoy.json"])
    clusters = {c["name"]: c for c in config["staticResources"]["clusters"]}
    address = clusters["out_authz"]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]
    socket = address["endpoint"]["address"]["socketAddress"]
    assert socket == {"address": "authz.hin.svc.cluster.local", "portValue": 15443}
    assert clusters["out_authz"]["type"] == "STRICT_DNS"
    service = find(manifests["authz"], "Service")
    assert service["spec"]["clusterIP"] == "None"
