"""Sample a service process with py-spy and summarize where its time goes."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Frames from these packages are HIN's own code; the rest are libraries.
OWN_CODE = re.compile(r"(?:^|/)((?:svc_\w+|mesh|hin)/.*)$")


@dataclass(frozen=True)
class Profile:
    """Share of samples per function, inclusive and exclusive."""

    target: str
    samples: int
    inclusive: list[tuple[str, float]]
    exclusive: list[tuple[str, float]]

    def render(self, top: int = 10) -> list[str]:
        if not self.samples:
            return [f"no samples of {self.target} (py-spy found nothing to record)"]
        lines = [
            f"{self.target}: {self.samples} samples; functions of HIN by share of "
            "samples that include them:",
            "",
        ]
        lines += [
            f"    {share:5.1f}%  {frame}" for frame, share in self.inclusive[:top]
        ]
        lines += ["", "  where the samples stop (any code):", ""]
        lines += [
            f"    {share:5.1f}%  {frame}" for frame, share in self.exclusive[:top]
        ]
        return lines


class Sampler:
    """A ``py-spy record`` run on one process, stopped by ``finish``."""

    def __init__(self, pid: int, target: str) -> None:
        self._target = target
        self._folder = Path(tempfile.mkdtemp(prefix="hin-profile-"))
        self._output = self._folder / "stacks.txt"
        executable = shutil.which("py-spy") or str(
            Path(sys.executable).parent / "py-spy"
        )
        self._process: subprocess.Popen[bytes] | None = None
        if Path(executable).exists() or shutil.which("py-spy"):
            self._process = subprocess.Popen(
                [
                    executable,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--output",
                    str(self._output),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def finish(self) -> Profile:
        """Stop sampling and summarize what was recorded."""
        if self._process is not None:
            # py-spy writes its output when interrupted, as on Ctrl-C.
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
        profile = summarize(self._output, self._target)
        shutil.rmtree(self._folder, ignore_errors=True)
        return profile


def summarize(stacks: Path, target: str) -> Profile:
    """Read py-spy's raw output: one ``frame;frame;... count`` line per stack."""
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    total = 0
    if stacks.exists():
        for line in stacks.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            exclusive[_short(frames[-1])] += count
            for frame in {_short(f) for f in frames if OWN_CODE.search(_path(f))}:
                inclusive[frame] += count
    return Profile(
        target=target,
        samples=total,
        inclusive=_shares(inclusive, total),
        exclusive=_shares(exclusive, total),
    )


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name = frame.partition(" (")[0]
    path = _path(frame)
    own = OWN_CODE.search(path)
    if own:
        path = own.group(1)
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    else:
        path = Path(path).name
    return f"{name} ({path})"


def _path(frame: str) -> str:
    return frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]


def _shares(counts: Counter[str], total: int) -> list[tuple[str, float]]:
    if not total:
        return []
    return [(frame, 100 * n / total) for frame, n in counts.most_common()]
