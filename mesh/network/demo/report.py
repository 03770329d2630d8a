"""The demo's report: what each service holds, against the source files.

Every check is an invariant: a figure read from a service is compared with a
figure read from the sample files (or with zero, for dead letters), and any
mismatch makes ``hin demo`` exit non-zero.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

#: Resource types the network imports, and the service that owns each.
OWNED_TYPES = {
    "Patient": "records",
    "Encounter": "records",
    "Condition": "records",
    "AllergyIntolerance": "records",
    "MedicationRequest": "records",
    "Claim": "billing",
    "ExplanationOfBenefit": "billing",
}


@dataclass
class Check:
    """One invariant: a name, the expected and the actual value."""

    name: str
    expected: Any
    actual: Any

    @property
    def ok(self) -> bool:
        return bool(self.expected == self.actual)


@dataclass
class Report:
    """Sections of text plus the invariants they state."""

    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    #: Machine-readable figures, written to <state>/demo-report.json.
    figures: dict[str, Any] = field(default_factory=dict)

    def section(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, lines))

    def check(self, name: str, expected: Any, actual: Any) -> Check:
        item = Check(name, expected, actual)
        self.checks.append(item)
        return item

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        """Return the figures and every invariant with its outcome."""
        return {
            "figures": self.figures,
            "checks": [
                {
                    "name": c.name,
                    "expected": c.expected,
                    "actual": c.actual,
                    "ok": c.ok,
                }
                for c in self.checks
            ],
            "ok": not self.failed,
        }

    def render(self) -> str:
        out: list[str] = []
        for title, lines in self.sections:
            out.append(f"\n== {title}")
            out.extend(f"  {line}" for line in lines)
        out.append("\n== invariants")
        for item in self.checks:
            mark = "ok  " if item.ok else "FAIL"
            detail = (
                "" if item.ok else f" (expected {item.expected}, got {item.actual})"
            )
            out.append(f"  {mark} {item.name}{detail}")
        verdict = (
            "all invariants hold"
            if not self.failed
            else (f"{len(self.failed)} of {len(self.checks)} invariants FAILED")
        )
        out.append(f"\n{verdict}")
        return "\n".join(out)


def import_table(source: Counter[str], summary: dict[str, Any], report: Report) -> None:
    """Compare the importer's outcome per resource type with the source counts."""
    lines = [
        f"{'resource':<22}{'source':>8}{'imported':>10}{'dup':>6}"
        f"{'rejected':>10}  service"
    ]
    resources = summary.get("resources", {})
    for resource_type in sorted(source):
        counts = resources.get(resource_type, {})
        service = counts.get("service") or "-"
        lines.append(
            f"{resource_type:<22}{source[resource_type]:>8}"
            f"{counts.get('imported', 0):>10}{counts.get('duplicate', 0):>6}"
            f"{counts.get('rejected', 0):>10}  {service}"
        )
    report.section("FHIR import (Synthea bundles)", lines)
    report.figures["fhir_source"] = dict(source)
    report.figures["fhir_import"] = {
        resource_type: {
            key: counts.get(key, 0) for key in ("imported", "duplicate", "rejected")
        }
        for resource_type, counts in resources.items()
    }
    for resource_type, owner in OWNED_TYPES.items():
        counts = resources.get(resource_type, {})
        taken = counts.get("imported", 0) + counts.get("duplicate", 0)
        report.check(
            f"{owner} took every {resource_type} of the bundles",
            source.get(resource_type, 0),
            taken,
        )


def claim_totals(folder: Path) -> tuple[int, int]:
    """Sum Claim.total and EOB payment amounts of the bundles, in minor units."""
    claims, payments = Decimal(0), Decimal(0)
    for path in sorted(folder.glob("*.json")):
        for entry in json.loads(path.read_bytes()).get("entry", []):
            resource = entry.get("resource", {})
            if resource.get("resourceType") == "Claim":
                claims += Decimal(str(resource.get("total", {}).get("value", 0)))
            if resource.get("resourceType") == "ExplanationOfBenefit":
                amount = resource.get("payment", {}).get("amount", {})
                payments += Decimal(str(amount.get("value", 0)))
    return int(claims * 100), int(payments * 100)
