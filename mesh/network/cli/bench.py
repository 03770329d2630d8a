"""``hin bench``: run the benchmark suite and write bench/RESULTS.md."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from bench.__main__ import add_arguments

    parser = subparsers.add_parser(
        "bench", help="measure the network beside its floors; writes bench/RESULTS.md"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.__main__ import run as run_bench

    return run_bench(args)
