"""hin demo on a reduced data set: exit code, invariants, counts, clean stop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: Resource types the demo imports, counted here straight from the JSON.
COUNTED = (
    "Patient",
    "Encounter",
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "Claim",
    "ExplanationOfBenefit",
)


def _selected_bundles(folder: Path, patients: int) -> list[Path]:
    # The same choice `hin demo --bundles N` makes: every directory bundle
    # (practitioners, hospitals) plus the first N patient bundles by name.
    files = sorted(folder.glob("*.json"))
    directory = [f for f in files if f.name.startswith(("practitioner", "hospital"))]
    return directory + [f for f in files if f not in directory][:patients]


def _count(bundles: list[Path]) -> dict[str, int]:
    counts = dict.fromkeys((*COUNTED, "laboratory Observation"), 0)
    for path in bundles:
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            resource = entry["resource"]
            kind = resource["resourceType"]
            if kind in counts:
                counts[kind] += 1
            categories = [
                coding.get("code")
                for category in resource.get("category", [])
                for coding in category.get("coding", [])
            ]
            if kind == "Observation" and "laboratory" in categories:
                counts["laboratory Observation"] += 1
    return counts


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    state = tmp_path_factory.mktemp("demo") / "state"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh.network.cli",
            "--state",
            str(state),
            "demo",
            "--bundles",
            "1",
            "--data",
            str(shared_data),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    report_file = state / "demo-report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return completed, report, state


def test_demo_exits_zero(demo_run) -> None:
    completed, _, _ = demo_run
    assert completed.returncode == 0, (
        completed.stdout[-3000:] + completed.stderr[-3000:]
    )


def test_demo_invariants_hold(demo_run) -> None:
    _, report, _ = demo_run
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert failed == []


@pytest.mark.parametrize("resource_type", COUNTED)
def test_import_counts_equal_files(demo_run, shared_data: Path, resource_type) -> None:
    _, report, _ = demo_run
    expected = _count(_selected_bundles(shared_data / "fhir" / "synthea", 1))
    outcome = report["figures"]["fhir_import"].get(resource_type, {})
    taken = outcome.get("imported", 0) + outcome.get("duplicate", 0)
    assert taken == expected[resource_type]


def test_lab_observation_count_equals_files(demo_run, shared_data: Path) -> None:
    _, report, _ = demo_run
    expected = _count(_selected_bundles(shared_data / "fhir" / "synthea", 1))
    outcome = report["figures"]["fhir_import"]["Observation"]
    assert (
        outcome["imported"] + outcome["duplicate"] == expected["laboratory Observation"]
    )


def test_demo_leaves_nothing_running(demo_run) -> None:
    _, _, state = demo_run
    found = subprocess.run(
        ["pgrep", "-f", str(state)], capture_output=True, text=True
    ).stdout.split()
    assert found == []
