"""Generated code in hin/ equals a fresh generation from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generated_files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_regenerated_code_matches_committed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh, committed = tmp_path / "hin", ROOT / "hin"

    assert _generated_files(fresh) == _generated_files(committed)
    differing = [
        name
        for name in sorted(_generated_files(fresh))
        if not filecmp.cmp(fresh / name, committed / name, shallow=False)
    ]
    assert differing == []


def test_every_context_has_a_service_and_events() -> None:
    contexts = ["records", "appointments", "labs", "billing", "authz", "notify"]
    missing = [
        f"{context}/v1/{name}"
        for context in contexts
        for name in (f"{context}_service.proto", "events.proto")
        if not (ROOT / "protos" / "hin" / context / "v1" / name).exists()
    ]
    assert missing == []
