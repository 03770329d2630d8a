"""``hin labs send-hl7``: feed HL7 v2 files to the labs MLLP listener.

The address comes from ``--address`` or, by default, from the running
network recorded in the state folder. One line per file states the ACK code
and, for AE or AR, the error the listener reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from mesh.network.mllp import MllpClient, MllpError
from mesh.network.state import NetworkNotRunning, NetworkState


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hin labs send-hl7``."""
    parser = subparsers.add_parser("labs", help="feed the laboratory service")
    actions = parser.add_subparsers(
        dest="labs_command", metavar="ACTION", required=True
    )
    send = actions.add_parser(
        "send-hl7",
        help="send HL7 v2 files (one message each) over MLLP and print each ACK",
    )
    send.add_argument("files", nargs="+", type=Path, help="HL7 v2 message files")
    send.add_argument(
        "--address",
        default="",
        help="host:port of the MLLP listener (default: the running network's labs "
        "replica 0)",
    )
    send.set_defaults(func=send_hl7)


def send_hl7(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Send each file and print its ACK; return 1 when any ACK is not AA."""
    address = args.address or _network_address(args.state)
    if not address:
        print(
            "no MLLP address: start the network with `hin up` or pass --address",
            file=sys.stderr,
        )
        return 2
    failures = 0
    with MllpClient.connect(address) as client:
        for path in args.files:
            try:
                ack = client.send(path.read_bytes())
            except (OSError, MllpError) as exc:
                print(f"{path.name}\tfailed: {exc}", file=out)
                return 1
            line = f"{path.name}\t{ack.code}"
            if ack.error:
                line += f"\t{ack.error}"
            print(line, file=out)
            failures += ack.code != "AA"
    return 1 if failures else 0


def _network_address(state_dir: Path) -> str:
    try:
        addresses = NetworkState.load(state_dir).mllp_addresses("labs")
    except NetworkNotRunning:
        return ""
    return addresses[0] if addresses else ""
