"""``hin demo``: the network on the sample data, a hospital day, a report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mesh.network.demo.run import DemoOptions, run_demo

#: Sample data beside the repository, as laid out for development and CI.
DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start a fresh network, import the sample data, walk a hospital day",
        description=(
            "Start the network with fresh state, import every Synthea bundle and "
            "HL7 v2 message, walk a day in a hospital through the ingress, print "
            "a report and exit non-zero when an invariant fails."
        ),
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("HIN_SAMPLE_DATA", DEFAULT_DATA)),
        help="folder with fhir/synthea/*.json and hl7v2/*.hl7 "
        "(default: HIN_SAMPLE_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the network running afterwards"
    )
    parser.add_argument(
        "--bundles",
        type=int,
        default=None,
        metavar="N",
        help="import only the first N patient bundles (default: all)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(
        DemoOptions(
            state_dir=args.state,
            data_dir=args.data,
            keep=args.keep,
            bundle_limit=args.bundles,
        )
    )
