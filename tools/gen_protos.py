"""Generate the Python protobuf and gRPC modules under hin/ from protos/.

Run with the project's venv: ``python tools/gen_protos.py [--out DIR]``. The
output is deterministic for a given grpcio-tools and mypy-protobuf version,
which tests/contracts/test_codegen.py relies on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[str]:
    """Return every .proto file under protos/, relative and sorted."""
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write *_pb2.py, *_pb2_grpc.py and *_pb2.pyi for every proto into out_dir."""
    generated = out_dir / "hin"
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--mypy_out={out_dir}",
        *proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    _add_package_markers(generated)


def _add_package_markers(generated: Path) -> None:
    for folder in [generated, *(p for p in generated.rglob("*") if p.is_dir())]:
        marker = folder / "__init__.py"
        if not marker.exists():
            marker.write_text('"""Generated protobuf modules; do not edit."""\n')
    (generated / "py.typed").touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root folder")
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
