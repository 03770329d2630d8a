"""Feed FHIR R4 bundles to every service that imports FHIR, in dependency order.

Records goes first because it assigns the patient ids that the other
services' resources point at. The HIN patient id of every Patient that
records imported or already had is passed on to appointments, labs and
billing as ``resolved_references``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hin.appointments.v1 import appointments_service_pb2 as appointments_pb
from hin.appointments.v1 import appointments_service_pb2_grpc as appointments_grpc
from hin.billing.v1 import billing_service_pb2 as billing_pb
from hin.billing.v1 import billing_service_pb2_grpc as billing_grpc
from hin.common.v1 import fhir_pb2
from hin.labs.v1 import labs_service_pb2 as labs_pb
from hin.labs.v1 import labs_service_pb2_grpc as labs_grpc
from hin.records.v1 import records_service_pb2 as records_pb
from hin.records.v1 import records_service_pb2_grpc as records_grpc

logger = logging.getLogger(__name__)

#: Services that import FHIR, in the order each bundle is sent to them.
SERVICE_ORDER = ("records", "appointments", "labs", "billing")

#: Bundles larger than this are sent in several requests of whole entries,
#: below gRPC's default 4 MiB maximum message size with room to spare.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024

#: Seconds one ImportFhir call may take before it is abandoned.
CALL_TIMEOUT_SECONDS = 300.0

#: A Patient resource anywhere in a bundle file's bytes.
_PATIENT_RESOURCE = re.compile(rb'"resourceType"\s*:\s*"Patient"')

_STATUS_NAMES = {
    fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED: "imported",
    fhir_pb2.FHIR_IMPORT_STATUS_DUPLICATE: "duplicate",
    fhir_pb2.FHIR_IMPORT_STATUS_REJECTED: "rejected",
    fhir_pb2.FHIR_IMPORT_STATUS_IGNORED: "ignored",
}


@dataclass(frozen=True)
class _ServiceApi:
    stub: Callable[[grpc.aio.Channel], Any]
    request: Callable[..., Any]


_APIS = {
    "records": _ServiceApi(
        records_grpc.RecordsServiceStub, records_pb.ImportFhirRequest
    ),
    "appointments": _ServiceApi(
        appointments_grpc.AppointmentsServiceStub, appointments_pb.ImportFhirRequest
    ),
    "labs": _ServiceApi(labs_grpc.LabsServiceStub, labs_pb.ImportFhirRequest),
    "billing": _ServiceApi(
        billing_grpc.BillingServiceStub, billing_pb.ImportFhirRequest
    ),
}


@dataclass
class TypeCounts:
    """Outcomes of one resource type at one service."""

    imported: int = 0
    duplicate: int = 0
    rejected: int = 0
    ignored: int = 0
    rejected_reasons: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: fhir_pb2.FhirImportOutcome) -> None:
        """Count one outcome."""
        name = _STATUS_NAMES.get(outcome.status, "ignored")
        setattr(self, name, getattr(self, name) + 1)
        if name == "rejected":
            self.rejected_reasons[outcome.reason] += 1

    @property
    def taken(self) -> int:
        """Return the outcomes other than IGNORED."""
        return self.imported + self.duplicate + self.rejected


@dataclass
class ImportSummary:
    """Counts of one ``hin import`` run."""

    files: list[str] = field(default_factory=list)
    #: Resources read from the bundles, per resource type.
    read: Counter[str] = field(default_factory=Counter)
    #: service -> resource type -> outcomes.
    services: dict[str, dict[str, TypeCounts]] = field(default_factory=dict)
    #: Services not in the network; their resources were not offered.
    skipped_services: list[str] = field(default_factory=list)
    #: Files or calls that failed as a whole, with the reason.
    errors: list[str] = field(default_factory=list)

    def owner(self, resource_type: str) -> str:
        """Return the first service that took ``resource_type``, or ""."""
        for service in SERVICE_ORDER:
            counts = self.services.get(service, {}).get(resource_type)
            if counts is not None and counts.taken:
                return service
        return ""

    def resources(self) -> dict[str, dict[str, Any]]:
        """Return per resource type: read, and the owning service's outcomes.

        Resource types that several services take (Practitioner, Encounter)
        are counted once, at the first service in ``SERVICE_ORDER``. The
        ``services`` field of ``to_json`` has every service's counts.
        """
        result = {}
        for resource_type in sorted(self.read):
            owner = self.owner(resource_type)
            counts = self.services.get(owner, {}).get(resource_type, TypeCounts())
            result[resource_type] = {
                "read": self.read[resource_type],
                "service": owner,
                "imported": counts.imported,
                "duplicate": counts.duplicate,
                "rejected": counts.rejected,
                "not_imported": self.read[resource_type] - counts.taken,
                "rejected_reasons": dict(counts.rejected_reasons.most_common()),
            }
        return result

    def to_json(self) -> dict[str, Any]:
        """Return the summary as plain JSON data."""
        return {
            "files": len(self.files),
            "resources": self.resources(),
            "services": {
                service: {
                    resource_type: {
                        "imported": c.imported,
                        "duplicate": c.duplicate,
                        "rejected": c.rejected,
                        "ignored": c.ignored,
                    }
                    for resource_type, c in sorted(types.items())
                }
                for service, types in self.services.items()
            },
            "skipped_services": self.skipped_services,
            "errors": self.errors,
        }

    def table(self) -> str:
        """Return the summary as a text table."""
        headers = (
            "resource type",
            "service",
            "read",
            "imported",
            "duplicate",
            "rejected",
            "not imported",
        )
        rows = [
            (
                resource_type,
                counts["service"] or "-",
                str(counts["read"]),
                str(counts["imported"]),
                str(counts["duplicate"]),
                str(counts["rejected"]),
                str(counts["not_imported"]),
            )
            for resource_type, counts in self.resources().items()
        ]
        widths = [
            max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))
        ]
        lines = [
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            )
            for row in (headers, *rows)
        ]
        for note in self._notes():
            lines.append(note)
        return "\n".join(lines)

    def _notes(self) -> list[str]:
        notes = [
            f"note: {service} is not running; its resource types were not imported"
            for service in self.skipped_services
        ]
        for resource_type, counts in self.resources().items():
            for reason, count in counts["rejected_reasons"].items():
                notes.append(f"rejected {resource_type} ({count}): {reason}")
        notes.extend(f"error: {error}" for error in self.errors)
        return notes


def bundle_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders to their *.json files, bundles without a Patient first.

    Bundles without a Patient, such as Synthea's practitionerInformation and
    hospitalInformation files of Practitioners and Organizations, go first
    because patient bundles may reference their entries conditionally.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        else:
            files.append(path)
    return sorted(files, key=lambda f: (_has_patient(f), str(f)))


def _has_patient(path: Path) -> bool:
    try:
        return _PATIENT_RESOURCE.search(path.read_bytes()) is not None
    except OSError:
        return True  # import_file reports the unreadable file in its turn


class FhirImporter:
    """Send bundles to the ImportFhir RPC of each service in ``SERVICE_ORDER``.

    ``channels`` maps a service name to the channel it is reached on, and
    several names may share one ingress channel. Services without a channel
    are skipped and listed in the summary.
    """

    def __init__(
        self,
        *,
        channels: Mapping[str, grpc.aio.Channel],
        metadata: Sequence[tuple[str, str]] = (),
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        on_file_done: Callable[[Path], None] | None = None,
    ) -> None:
        self._stubs = {
            name: _APIS[name].stub(channel)
            for name, channel in channels.items()
            if name in _APIS
        }
        self._metadata = tuple(metadata)
        self._max_request_bytes = max_request_bytes
        self._on_file_done = on_file_done
        self.summary = ImportSummary(
            skipped_services=[s for s in SERVICE_ORDER if s not in self._stubs]
        )

    async def import_paths(self, paths: Iterable[Path]) -> ImportSummary:
        """Import every bundle under ``paths`` and return the summary."""
        for path in bundle_files(paths):
            await self.import_file(path)
            if self._on_file_done is not None:
                self._on_file_done(path)
        return self.summary

    async def import_file(self, path: Path) -> None:
        """Import one bundle file; a failure is recorded, not raised."""
        self.summary.files.append(str(path))
        try:
            bundle = await asyncio.to_thread(_read_json, path)
            entries = bundle["entry"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.summary.errors.append(
                f"{path.name}: not a readable FHIR Bundle ({exc.__class__.__name__})"
            )
            return
        for entry in entries:
            self.summary.read[_resource_type(entry)] += 1
        aliases = _aliases(entries)
        chunks = _chunks(bundle, entries, self._max_request_bytes)

        patients: dict[str, str] = {}
        for service in SERVICE_ORDER:
            if service not in self._stubs:
                continue
            assigned = await self._send(service, path, chunks, patients, aliases)
            if service == "records":
                patients = {
                    key: value
                    for key, (resource_type, value) in assigned.items()
                    if resource_type == "Patient"
                }

    async def _send(
        self,
        service: str,
        path: Path,
        chunks: list[bytes],
        patients: Mapping[str, str],
        aliases: Mapping[str, list[str]],
    ) -> dict[str, tuple[str, str]]:
        """Send the chunks to one service; return reference -> (type, HIN id)."""
        counts = self.summary.services.setdefault(service, {})
        assigned: dict[str, tuple[str, str]] = {}
        for chunk in chunks:
            # Later chunks may point at entries of earlier ones, so the ids
            # this service assigned so far travel with them.
            references = dict(patients)
            references.update({key: value for key, (_, value) in assigned.items()})
            request = _APIS[service].request(
                bundle=chunk, resolved_references=references, source=path.name
            )
            try:
                response = await self._stubs[service].ImportFhir(
                    request, metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as exc:
                self.summary.errors.append(
                    f"{path.name}: {service} ImportFhir failed with "
                    f"{exc.code().name}: {exc.details()}"
                )
                # The summary carries the error to the caller, so the log line
                # stays below the default WARNING level of a command line.
                logger.info(
                    "ImportFhir call failed",
                    extra={"service_name": service, "grpc_code": exc.code().name},
                )
                return assigned
            for outcome in response.outcomes:
                counts.setdefault(outcome.resource_type, TypeCounts()).add(outcome)
                if outcome.assigned_id and outcome.status in (
                    fhir_pb2.FHIR_IMPORT_STATUS_IMPORTED,
                    fhir_pb2.FHIR_IMPORT_STATUS_DUPLICATE,
                ):
                    for key in aliases.get(outcome.source_id, [outcome.source_id]):
                        assigned[key] = (outcome.resource_type, outcome.assigned_id)
        return assigned


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _resource_type(entry: Any) -> str:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if isinstance(resource, dict):
        return str(resource.get("resourceType") or "(none)")
    return "(none)"


def _aliases(entries: list[Any]) -> dict[str, list[str]]:
    """Map each way an entry can be referenced to all of its ways.

    Services report an outcome by fullUrl or by Type/id; other entries may
    use either form.
    """
    aliases: dict[str, list[str]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        keys = []
        if entry.get("fullUrl"):
            keys.append(str(entry["fullUrl"]))
        resource = entry.get("resource") or {}
        if isinstance(resource, dict) and resource.get("id"):
            keys.append(f"{resource.get('resourceType')}/{resource['id']}")
        for key in keys:
            aliases[key] = keys
    return aliases


def _chunks(bundle: dict[str, Any], entries: list[Any], limit: int) -> list[bytes]:
    """Split a bundle into bundles of whole entries, each below ``limit`` bytes.

    An entry larger than ``limit`` on its own is sent alone.
    """
    whole = json.dumps(bundle, ensure_ascii=False).encode()
    if len(whole) <= limit:
        return [whole]
    header = {key: value for key, value in bundle.items() if key != "entry"}
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for entry in entries:
        encoded = json.dumps(entry, ensure_ascii=False).encode()
        if current and size + len(encoded) > limit:
            chunks.append(_bundle_bytes(header, current))
            current, size = [], 0
        current.append(encoded)
        size += len(encoded) + 1
    if current:
        chunks.append(_bundle_bytes(header, current))
    return chunks


def _bundle_bytes(header: dict[str, Any], entries: list[bytes]) -> bytes:
    # The header's closing brace is replaced by the entry list.
    prefix = json.dumps(header, ensure_ascii=False).encode()[:-1]
    separator = b", " if header else b""
    return prefix + separator + b'"entry": [' + b",".join(entries) + b"]}"
