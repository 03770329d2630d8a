"""Start and stop a network for measurement, and read its memory use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mesh.network.state import NetworkState


@dataclass
class RunningNetwork:
    """A network started by ``hin up`` in a state folder of its own."""

    state_dir: Path
    up_seconds: float
    state: NetworkState

    def reload(self) -> NetworkState:
        self.state = NetworkState.load(self.state_dir)
        return self.state


def hin(
    state_dir: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a ``hin`` subcommand against ``state_dir`` and return its result."""
    command = [
        sys.executable,
        "-m",
        "mesh.network.cli",
        "--state",
        str(state_dir),
        *args,
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    if check and completed.returncode != 0:
        raise RuntimeError(
            f"hin {args[0]} failed with exit code {completed.returncode}: "
            f"{completed.stderr.strip()[-2000:]}"
        )
    return completed


def start(state_dir: Path, *extra: str) -> RunningNetwork:
    """Start a fresh network and time ``hin up`` until every service is SERVING."""
    if state_dir.exists():
        shutil.rmtree(state_dir)
    started = time.perf_counter()
    hin(state_dir, "up", *extra)
    elapsed = time.perf_counter() - started
    return RunningNetwork(state_dir, elapsed, NetworkState.load(state_dir))


def stop(network: RunningNetwork) -> None:
    hin(network.state_dir, "down", check=False)


def resident_bytes(root_pid: int) -> int:
    """Sum the resident memory of ``root_pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, pending = 0, [root_pid]
    while pending:
        pid = pending.pop()
        total += _rss(pid)
        pending.extend(children.get(pid, []))
    return total


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
