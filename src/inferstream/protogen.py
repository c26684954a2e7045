"""Regenerate the Python code for the schemas in `proto/`: the envelope, and the part of
the Open Inference Protocol (v2, gRPC) the remote inference step speaks.

The generated modules are committed so that serving needs no compiler; the test
suite calls :func:`generate` into a temporary folder and fails when the committed
files no longer match the schema. Run ``make proto`` after editing the schema.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

SCHEMAS = (Path("inferstream/v1/envelope.proto"), Path("inference/open_inference.proto"))


def generate(proto_root: Path, out_dir: Path) -> list[Path]:
    """Compile the schemas under ``proto_root`` into ``out_dir``; return the files written."""
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
            *(str(proto_root / schema) for schema in SCHEMAS),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {', '.join(map(str, SCHEMAS))}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for schema in SCHEMAS:
            for suffix in ("_pb2.py", "_pb2.pyi"):
                name = schema.stem + suffix
                target = out_dir / name
                shutil.copyfile(Path(tmp) / schema.parent / name, target)
                written.append(target)
        return written


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for path in generate(root / "proto", root / "src" / "inferstream" / "_proto"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
