"""FhirImporter and ``hin import`` against in-process records and appointments.

Expected counts are computed here from the bundle JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from mesh.network.cli import main
from mesh.network.devkeys import mint_token
from mesh.network.importers import FhirImporter, ImportSummary
from mesh.network.state import NetworkState, ReplicaState, ServiceState
from mesh.runtime.authz import RolePolicyAuthorizer
from mesh.runtime.server import BuildFunction, ServiceHost
from mesh.runtime.settings import ServiceSettings
from svc_appointments.app import build as build_appointments
from svc_records.app import build as build_records

Metadata = tuple[tuple[str, str], ...]


async def start(
    name: str, build: BuildFunction, state: Path, bootstrap: str
) -> tuple[ServiceHost, grpc.aio.Channel]:
    # A consumer group of its own (hin.<name>) per host, so no host shares
    # partitions with a host of another test that is still stopping.
    unique = f"{name}_{uuid.uuid4().hex[:8]}"
    host = ServiceHost(
        settings=ServiceSettings.from_env(
            unique,
            environ={
                "HIN_STATE_DIR": str(state),
                "HIN_DATABASE_URL": f"sqlite:///{state / (name + '.db')}",
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "HIN_GRPC_ADDRESS": "127.0.0.1:0",
            },
        ),
        build=build,
        authorizer=RolePolicyAuthorizer({"administrator": {"*"}}),
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    return host, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def admin(state: Path) -> Metadata:
    token = mint_token(
        state, subject="importer", roles=["administrator"], organization_id="org-1"
    )
    return (("authorization", f"Bearer {token}"),)


def synthea(shared_data: Path) -> Path:
    return shared_data / "fhir" / "synthea"


def count_json(folder: Path) -> tuple[Counter[str], dict[str, int]]:
    """Return resources read per type, and distinct ones per records type."""
    read: Counter[str] = Counter()
    distinct: dict[str, set[Any]] = {}
    for path in sorted(folder.glob("*.json")):
        for entry in json.loads(path.read_bytes())["entry"]:
            resource = entry["resource"]
            kind = resource["resourceType"]
            read[kind] += 1
            if kind in ("Practitioner", "Organization"):
                first = resource["identifier"][0]
                key: Any = (first["system"], first["value"])
            else:
                key = resource["id"]
            distinct.setdefault(kind, set()).add(key)
    return read, {kind: len(keys) for kind, keys in distinct.items()}


@pytest.fixture(scope="module")
async def imported(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, shared_data: Path
) -> AsyncIterator[tuple[list[ImportSummary], Path]]:
    """Summaries of importing every Synthea bundle twice into both services."""
    state = tmp_path_factory.mktemp("importer-state")
    mint_token(state, subject="setup", roles=["doctor"], organization_id="org-1")
    records, records_channel = await start(
        "records", build_records, state, kafka_bootstrap
    )
    appointments, appointments_channel = await start(
        "appointments", build_appointments, state, kafka_bootstrap
    )
    summaries = []
    for _ in range(2):
        importer = FhirImporter(
            channels={"records": records_channel, "appointments": appointments_channel},
            metadata=admin(state),
        )
        summaries.append(await importer.import_paths([synthea(shared_data)]))
    yield summaries, shared_data
    for channel in (records_channel, appointments_channel):
        await channel.close()
    await appointments.stop(grace=5)
    await records.stop(grace=5)


RECORDS_TYPES = (
    "Patient",
    "Encounter",
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "Practitioner",
    "Organization",
)


@pytest.mark.parametrize("resource_type", RECORDS_TYPES)
async def test_first_run_imports_distinct(imported: Any, resource_type: str) -> None:
    summaries, shared_data = imported
    read, distinct = count_json(synthea(shared_data))
    counts = summaries[0].resources()[resource_type]
    assert counts["service"] == "records"
    assert counts["read"] == read[resource_type]
    assert counts["imported"] == distinct[resource_type]
    assert counts["duplicate"] == read[resource_type] - distinct[resource_type]
    assert counts["rejected"] == 0


@pytest.mark.parametrize("resource_type", RECORDS_TYPES)
async def test_second_run_imports_nothing(imported: Any, resource_type: str) -> None:
    summaries, shared_data = imported
    read, _ = count_json(synthea(shared_data))
    counts = summaries[1].resources()[resource_type]
    assert counts["imported"] == 0
    assert counts["duplicate"] == read[resource_type]


async def test_appointments_get_every_encounter(imported: Any) -> None:
    summaries, shared_data = imported
    read, _ = count_json(synthea(shared_data))
    encounters = summaries[0].services["appointments"]["Encounter"]
    assert encounters.imported == read["Encounter"]
    assert encounters.rejected == 0


async def test_second_run_adds_no_appointments(imported: Any) -> None:
    summaries, _ = imported
    assert all(
        counts.imported == 0
        for counts in summaries[1].services["appointments"].values()
    )


async def test_missing_services_are_listed(imported: Any) -> None:
    summaries, _ = imported
    assert summaries[0].skipped_services == ["labs", "billing"]
    assert summaries[0].errors == []


async def test_unowned_types_count_as_not_imported(imported: Any) -> None:
    summaries, shared_data = imported
    read, _ = count_json(synthea(shared_data))
    claims = summaries[0].resources()["Claim"]
    assert claims["service"] == ""
    assert claims["not_imported"] == read["Claim"]


async def test_json_summary_has_every_field(imported: Any) -> None:
    summaries, _ = imported
    patient = summaries[0].to_json()["resources"]["Patient"]
    assert set(patient) == {
        "read",
        "service",
        "imported",
        "duplicate",
        "rejected",
        "not_imported",
        "rejected_reasons",
    }


async def test_small_requests_split_bundle(
    tmp_path: Path, kafka_bootstrap: str, shared_data: Path
) -> None:
    mint_token(tmp_path, subject="setup", roles=["doctor"], organization_id="org-1")
    host, channel = await start("records", build_records, tmp_path, kafka_bootstrap)
    bundle = next(synthea(shared_data).glob("Jorge_Brekke_*.json"))
    expected = Counter(
        e["resource"]["resourceType"] for e in json.loads(bundle.read_bytes())["entry"]
    )
    try:
        # About 1.3 MB split into requests of at most 64 KiB: conditions
        # reference encounters sent in earlier requests.
        importer = FhirImporter(
            channels={"records": channel},
            metadata=admin(tmp_path),
            max_request_bytes=64 * 1024,
        )
        summary = await importer.import_paths([bundle])
    finally:
        await channel.close()
        await host.stop(grace=5)
    records = summary.services["records"]
    for resource_type in ("Encounter", "Condition", "MedicationRequest"):
        assert records[resource_type].imported == expected[resource_type]
        assert records[resource_type].rejected == 0


async def test_cli_prints_json_summary(
    tmp_path: Path, kafka_bootstrap: str, shared_data: Path
) -> None:
    mint_token(tmp_path, subject="setup", roles=["doctor"], organization_id="org-1")
    host, channel = await start("records", build_records, tmp_path, kafka_bootstrap)
    address = f"127.0.0.1:{host.port}"

    # A network file whose ingress is the records server itself.
    NetworkState(
        state_dir=str(tmp_path),
        ingress=address,
        services={
            "records": ServiceState(
                module="svc_records",
                replicas=[ReplicaState(index=0, address=address, sidecar_inbound="")],
            )
        },
    ).save()
    bundle = next(synthea(shared_data).glob("Enda_Schaefer_*.json"))
    expected = Counter(
        e["resource"]["resourceType"] for e in json.loads(bundle.read_bytes())["entry"]
    )

    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            code = await asyncio.to_thread(
                main, ["--state", str(tmp_path), "import", "--json", str(bundle)]
            )
    finally:
        await channel.close()
        await host.stop(grace=5)
    summary = json.loads(output.getvalue())
    assert code == 0
    assert summary["files"] == 1
    assert summary["resources"]["Patient"]["imported"] == 1
    assert summary["resources"]["Encounter"]["imported"] == expected["Encounter"]
    assert summary["skipped_services"] == ["appointments", "labs", "billing"]


def test_cli_without_network_fails(tmp_path: Path, shared_data: Path) -> None:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main(["--state", str(tmp_path), "import", str(synthea(shared_data))])
    assert code == 1
    assert "hin up" in errors.getvalue()
