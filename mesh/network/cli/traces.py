"""``hin traces list`` and ``hin traces show TRACE_ID``: read stored spans."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from mesh.network.tracestore import TraceStore, render_tree


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "traces", help="list stored traces or show one as a tree"
    )
    commands = parser.add_subparsers(dest="traces_command", metavar="ACTION")
    listing = commands.add_parser("list", help="list traces, newest first")
    listing.add_argument(
        "-n", "--limit", type=int, default=20, help="traces to list (default 20)"
    )
    listing.set_defaults(func=run_list)
    show = commands.add_parser("show", help="print one trace as an indented tree")
    show.add_argument("trace_id", help="trace id, or a unique prefix of it")
    show.set_defaults(func=run_show)
    for action in (listing, show):
        action.add_argument(
            "--state", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_list(args: argparse.Namespace) -> int:
    store = TraceStore(args.state.resolve() / "traces")
    summaries = store.summaries()[: args.limit]
    if not summaries:
        print(f"no traces stored in {store.path}")
        return 0
    for summary in summaries:
        started = datetime.datetime.fromtimestamp(
            summary.start_ns / 1e9, datetime.UTC
        ).strftime("%H:%M:%S")
        errors = f"  {summary.errors} errors" if summary.errors else ""
        print(
            f"{summary.trace_id}  {started}  {summary.duration_ms:8.1f} ms  "
            f"{summary.spans:3d} spans  {summary.root}{errors}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = TraceStore(args.state.resolve() / "traces")
    spans = store.trace(args.trace_id)
    if not spans:
        print(
            f"hin traces: no single trace matches {args.trace_id!r}; "
            "see `hin traces list`",
            file=sys.stderr,
        )
        return 1
    print(f"trace {spans[0].trace_id}")
    for line in render_tree(spans):
        print(line)
    return 0
