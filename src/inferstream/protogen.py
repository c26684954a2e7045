"""Regenerate the Python code for the envelope schema in `proto/`.

The generated modules are committed so that serving needs no compiler; the test
suite calls :func:`generate` into a temporary folder and fails when the committed
files no longer match the schema. Run ``make proto`` after editing the schema.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

SCHEMA = Path("inferstream/v1/envelope.proto")
OUTPUTS = ("envelope_pb2.py", "envelope_pb2.pyi")


def generate(proto_root: Path, out_dir: Path) -> list[Path]:
    """Compile the schema under ``proto_root`` into ``out_dir``; return the files written."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - dev extra missing
        raise SystemExit("grpcio-tools is missing: pip install -e '.[dev]'") from exc
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{proto_root}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            str(proto_root / SCHEMA),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto_root / SCHEMA}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            target = out_dir / name
            shutil.copyfile(Path(tmp) / SCHEMA.parent / name, target)
            written.append(target)
        return written


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for path in generate(root / "proto", root / "src" / "inferstream" / "_proto"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
