"""Regenerates the Python stubs for proto/slperf/v1 into slperf/v1 (run as `make proto`, i.e.
`python -m tools.protogen` from the repository root).

A developer tool: it needs grpcio-tools (a dev dependency) and the proto/ sources, which an installed slperf
has neither of, so it lives outside the runtime package. Kept as a module rather than a shell line so the
staleness test can produce the same output into a temporary folder and compare it byte for byte with what is
committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "slperf" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Runs grpcio-tools' protoc; returns the generated files under out_dir/slperf/v1."""
    import grpc_tools
    from grpc_tools import protoc  # a dev dependency: only needed to regenerate

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see the messages above")
    return sorted((out_dir / "slperf" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    generated = generate(ROOT)
    print(f"generated {len(generated)} files into {ROOT / 'slperf' / 'v1'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
