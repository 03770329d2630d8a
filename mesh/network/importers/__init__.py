"""Importers that feed outside data into a running network (``hin import``)."""

from mesh.network.importers.fhir import (
    SERVICE_ORDER,
    FhirImporter,
    ImportSummary,
    TypeCounts,
    bundle_files,
)

__all__ = [
    "SERVICE_ORDER",
    "FhirImporter",
    "ImportSummary",
    "TypeCounts",
    "bundle_files",
]
