"""The ``shapes`` learner: a softmax regression on the prepared pixels, fitted with
NumPy and written as an ONNX graph (``Flatten -> Gemm``), so the trainer needs the
``train`` extra's ``onnx`` package but no deep-learning framework.

``python -m inferstream.apps.filedrop.learn`` writes the model the application ships:
a deliberately weak first version learnt from twelve images, which the example's
trainer replaces once labels arrive.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from inferstream.apps.filedrop.prepare import INPUT_SHAPE, as_input
from inferstream.apps.filedrop.shapes import KINDS, png, shapes
from inferstream.blobs import BlobStore
from inferstream.errors import ConfigError
from inferstream.retraining import Example, Trained

MODELS_DIR = Path(__file__).parent / "models"
#: Share of the labelled records held out to measure the new version (by subject hash).
HOLDOUT = 0.2
F32 = NDArray[np.float32]


def fit(
    x: F32, y: NDArray[np.int64], *, steps: int = 300, rate: float = 0.5, l2: float = 1e-3
) -> tuple[F32, F32]:
    """Weights (features, classes) and biases of a softmax regression, by gradient descent
    on the mean cross-entropy (inputs centred on 0.3 inside, folded into the biases)."""
    n, features = x.shape
    centred = x - np.float32(0.3)
    weights = np.zeros((features, len(KINDS)), np.float32)
    bias = np.zeros(len(KINDS), np.float32)
    truth = np.eye(len(KINDS), dtype=np.float32)[y]
    for _ in range(steps):
        z = centred @ weights + bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - truth) / n
        weights -= rate * (centred.T @ grad + l2 * weights)
        bias -= rate * grad.sum(axis=0)
    return weights, bias - np.float32(0.3) * weights.sum(axis=0)


def onnx_graph(weights: F32, bias: F32, name: str) -> bytes:
    """The fitted regression as ONNX: image (N, 1, 32, 32) -> logits (N, classes)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise ConfigError(
            "the shapes learner writes ONNX with the 'onnx' package: pip install "
            "'inferstream[train]'"
        ) from exc
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "weights", "bias"], ["logits"]),
        ],
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(KINDS)])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # read by every ONNX Runtime since 1.10
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def info(name: str, version: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "labels": list(KINDS),
        "input": "image",
        "output": "logits",
        "input_shape": list(INPUT_SHAPE),
        "macs": INPUT_SHAPE[1] * INPUT_SHAPE[2] * len(KINDS),
    }


def accuracy(weights: F32, bias: F32, x: F32, y: NDArray[np.int64]) -> float:
    return float(((x @ weights + bias).argmax(axis=1) == y).mean()) if len(y) else float("nan")


def held_out(subject: str) -> bool:
    digest = hashlib.sha256(subject.encode()).digest()
    return int.from_bytes(digest[:8], "big") < HOLDOUT * 2**64


def fit_shapes(
    examples: Sequence[Example], blobs: BlobStore, *, name: str, version: str
) -> Trained:
    """The learner the file-drop application declares (``learner: shapes``)."""
    known = [e for e in examples if e.label in KINDS]
    x = np.stack([as_input(e.input_bytes(blobs)).reshape(-1) for e in known])
    y = np.array([KINDS.index(e.label) for e in known], np.int64)
    test = np.array([held_out(e.subject) for e in known], bool)
    weights, bias = fit(x[~test], y[~test])
    figures = {
        "holdout_accuracy": round(accuracy(weights, bias, x[test], y[test]), 4),
        "holdout": int(test.sum()),
        "learnt_from": int((~test).sum()),
    }
    return Trained(onnx_graph(weights, bias, f"{name}-{version}"), info(name, version), figures)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inferstream.apps.filedrop.learn",
        description="Write the shipped shapes model: a weak first version learnt from a "
        "dozen images (needs the train extra's onnx). Prints its accuracy on 2,000 others.",
    )
    parser.add_argument("--images", type=int, default=12, help="images it learns from (12)")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="folder to write to")
    args = parser.parse_args(argv)
    seen = list(shapes(args.images, seed=1))
    x = np.stack([as_input(png(s.image)).reshape(-1) for s in seen])
    y = np.array([KINDS.index(s.kind) for s in seen], np.int64)
    weights, bias = fit(x, y)
    others = list(shapes(2000, seed=99))
    tx = np.stack([as_input(png(s.image)).reshape(-1) for s in others])
    ty = np.array([KINDS.index(s.kind) for s in others], np.int64)
    measured = accuracy(weights, bias, tx, ty)
    meta = {**info("shapes", "1"), "trained_on": {"images": args.images, "seed": 1,
            "accuracy_on_2000_unseen": round(measured, 4)}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shapes.onnx").write_bytes(onnx_graph(weights, bias, "shapes-1"))
    (args.out / "shapes.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"shapes 1: learnt from {args.images} images, accuracy {measured:.3f} on 2,000 unseen")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
