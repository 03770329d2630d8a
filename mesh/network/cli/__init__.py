"""The ``hin`` command: run, feed and inspect the network on one machine.

Each module in this package adds its subcommands through a
``register(subparsers)`` function. A subcommand stores its entry point as
``func``, which returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """Collect the subcommands of every module in this package."""
    parser = argparse.ArgumentParser(
        prog="hin", description="Run and inspect the Health Information Network."
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=Path(".hin"),
        help="state folder for keys, databases, logs and spans (default: .hin)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{module_info.name}")
        except ImportError as exc:
            # One broken subcommand must not take `hin up` and `hin down` with it.
            print(
                f"hin: subcommand module {module_info.name!r} failed to import "
                f"and is unavailable: {exc}",
                file=sys.stderr,
            )
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    # Accept --state after the subcommand too: `hin up --state DIR`, and
    # after a nested one: `hin audit verify --state DIR`.
    _add_state_option(subparsers)
    return parser


def _add_state_option(subparsers: argparse._SubParsersAction) -> None:
    for subparser in subparsers.choices.values():
        if "--state" not in subparser._option_string_actions:
            subparser.add_argument(
                "--state", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
        for action in subparser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_state_option(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
