"""Facts about the sample data, read from the files alone.

The demo compares what the services report with these figures, so nothing
here calls a service or imports one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: HL7 v2 message types (MSH-9.1) that the labs listener stores.
LAB_MESSAGE_TYPES = frozenset({"ORU", "ORM", "OML"})


@dataclass
class FhirSource:
    """Resource counts of a folder of FHIR bundles."""

    files: list[Path] = field(default_factory=list)
    resources: Counter[str] = field(default_factory=Counter)
    #: Laboratory Observations (category "laboratory").
    lab_observations: int = 0


@dataclass(frozen=True)
class Hl7Message:
    """One HL7 v2 file: its bytes and its MSH-9.1 message type."""

    path: Path
    raw: bytes
    message_type: str

    @property
    def is_lab_type(self) -> bool:
        return self.message_type in LAB_MESSAGE_TYPES


def read_fhir(folder: Path) -> FhirSource:
    """Count resources per type in every bundle of ``folder``."""
    return read_fhir_paths(sorted(folder.glob("*.json")))


def read_fhir_paths(paths: list[Path]) -> FhirSource:
    """Count resources per type in the given bundle files."""
    source = FhirSource()
    for path in paths:
        bundle = json.loads(path.read_bytes())
        source.files.append(path)
        for entry in bundle.get("entry", []):
            resource = entry.get("resource", {})
            resource_type = resource.get("resourceType", "")
            source.resources[resource_type] += 1
            if resource_type == "Observation" and _is_laboratory(resource):
                source.lab_observations += 1
    return source


def _is_laboratory(observation: dict) -> bool:
    for category in observation.get("category", []):
        for coding in category.get("coding", []):
            if coding.get("code") == "laboratory":
                return True
    return False


def read_hl7(folder: Path) -> list[Hl7Message]:
    """Read every ``*.hl7`` file of ``folder`` with its message type."""
    return [
        Hl7Message(path=path, raw=raw, message_type=message_type(raw))
        for path in sorted(folder.glob("*.hl7"))
        for raw in [path.read_bytes()]
    ]


def message_type(raw: bytes) -> str:
    """Return MSH-9.1 of a raw message, or '' when MSH cannot be read.

    MSH-1 gives the field separator and MSH-2's first character the component
    separator, whatever they are in this message.
    """
    text = raw.lstrip(b"\xef\xbb\xbf").decode("latin-1")
    start = text.find("MSH")
    if start < 0 or len(text) < start + 5:
        return ""
    field_separator = text[start + 3]
    fields = text[start:].split(field_separator)
    if len(fields) < 9 or not fields[1]:
        return ""
    component_separator = fields[1][0]
    return fields[8].split(component_separator)[0].strip()
