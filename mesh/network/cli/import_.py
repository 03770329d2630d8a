"""``hin import``: send FHIR bundles to the services of a running network."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from tqdm import tqdm

from mesh.network.clients import admin_metadata, ingress_channel
from mesh.network.importers import SERVICE_ORDER, FhirImporter, bundle_files
from mesh.network.state import NetworkNotRunning, NetworkState


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import FHIR R4 bundles (files or folders) into the running network",
        description=(
            "Send each bundle to records first, then to appointments, labs and "
            "billing when they run, and print what each resource type became."
        ),
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="bundle file, or folder whose *.json files are bundles",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        dest="as_json",
        help="print the summary as JSON instead of a table",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="do not draw the progress bar on stderr",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(
            f"hin import: no such file or folder: {', '.join(missing)}", file=sys.stderr
        )
        return 2
    try:
        network = NetworkState.load(args.state)
    except NetworkNotRunning as exc:
        print(f"hin import: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_import(args, network))


async def _import(args: argparse.Namespace, network: NetworkState) -> int:
    files = bundle_files(args.paths)
    channel = ingress_channel(args.state)
    progress = tqdm(
        total=len(files),
        unit="bundle",
        file=sys.stderr,
        disable=args.no_progress,
        desc="importing",
    )
    try:
        importer = FhirImporter(
            # The ingress routes each service's calls, so one channel serves all.
            channels={s: channel for s in SERVICE_ORDER if s in network.services},
            metadata=admin_metadata(args.state),
            on_file_done=lambda path: progress.update(1),
        )
        summary = await importer.import_paths(files)
    finally:
        progress.close()
        await channel.close()
    if args.as_json:
        print(json.dumps(summary.to_json(), indent=2, ensure_ascii=False))
    else:
        print(summary.table())
    return 1 if summary.errors else 0
