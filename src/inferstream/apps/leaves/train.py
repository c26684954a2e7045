"""Train the leaves models on simulated photos, export ONNX, and write the model card.

``python -m inferstream.apps.leaves.train`` writes into this package's ``models/``:
``leaf_detector`` (a tiny fully convolutional leaf/soil heatmap), one grader per disease
``leaf_<disease>`` (severity 0-4 from a 32 x 32 crop) and ``leaf_rust_v2``, a second
version of the rust grader (more data, another seed) for the replay example. Needs the
``train`` extra; every figure in the card is measured on the exported models through
ONNX Runtime, on photos from a seed training never saw.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from inferstream.apps.leaves.simulator import DISEASES, GRADES, HEIGHT, WIDTH, Photo, simulate
from inferstream.apps.leaves.vision import CROP, crop_image, crop_tensor, photo_tensor

MODELS = Path(__file__).parent / "models"
GRADE_LABELS = tuple(str(g) for g in range(GRADES))
TRAIN_SEED = 1
THREADS = 2


def detector_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 1, 1),
    )  # fmt: skip


def grader_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, GRADES),
    )  # fmt: skip


def _fit(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any, *, steps: int, batch: int
) -> float:
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3 * 3, total_steps=steps)
    net.train()
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        loss = loss_fn(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def crops_and_grades(
    photos: Sequence[Photo], jitter: int, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Grader inputs from truth boxes (jittered a little, as the detector's are) and
    their grades (leaves, diseases)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for photo in photos:
        for leaf in photo.leaves:
            x0, y0, x1, y1 = (
                int(v) for v in np.asarray(leaf.box) + rng.integers(-jitter, jitter + 1, 4)
            )
            box = (max(x0, 0), max(y0, 0), min(x1, WIDTH), min(y1, HEIGHT))
            xs.append(crop_tensor(crop_image(photo.image, box)))
            ys.append([leaf.grades[d] for d in DISEASES])
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def export(
    net: nn.Module, name: str, meta: dict[str, Any], shape: tuple[int, ...], out: str
) -> None:
    MODELS.mkdir(exist_ok=True)
    net.eval()
    torch.onnx.export(
        net, (torch.zeros(1, *shape),), str(MODELS / f"{name}.onnx"),
        input_names=["image"], output_names=[out],
        dynamic_axes={"image": {0: "batch"}, out: {0: "batch"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    body = {"input": "image", "output": out, "input_shape": list(shape), **meta}
    (MODELS / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")


def train_detector(photos: Sequence[Photo], steps: int) -> float:
    torch.manual_seed(TRAIN_SEED)
    x = torch.from_numpy(np.stack([photo_tensor(p.image) for p in photos]))
    y = torch.from_numpy(np.stack([p.mask.astype(np.float32) for p in photos]))[:, None]
    net = detector_net()
    loss = _fit(net, x, y, nn.BCEWithLogitsLoss(), steps=steps, batch=8)
    export(net, "leaf_detector", {
        "name": "leaf_detector", "version": "1.0.0", "labels": ["leaf"],
        "trained_on": {"photos": len(photos), "seed": TRAIN_SEED, "steps": steps},
    }, (3, HEIGHT, WIDTH), "heatmap")  # fmt: skip
    return loss


def train_grader(
    disease: str, x: NDArray[np.float32], grades: NDArray[np.int64], steps: int,
    *, file: str, version: str, seed: int,
) -> float:  # fmt: skip
    torch.manual_seed(seed)
    net = grader_net()
    y = torch.from_numpy(grades[:, DISEASES.index(disease)])
    loss = _fit(net, torch.from_numpy(x), y, nn.CrossEntropyLoss(), steps=steps, batch=64)
    export(net, file, {
        "name": f"leaf_{disease}", "version": version, "labels": list(GRADE_LABELS),
        "disease": disease,
        "trained_on": {"crops": len(x), "seed": seed, "steps": steps},
    }, (3, CROP, CROP), "logits")  # fmt: skip
    return loss


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=60)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600, help="grader optimiser steps")
    parser.add_argument(
        "--only", choices=DISEASES, help="retrain this grader alone (1.0.0), nothing else"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    started = time.monotonic()
    photos = list(simulate(args.positions, args.days, seed=TRAIN_SEED, tenant="train"))
    print(f"simulated {len(photos)} photos in {time.monotonic() - started:.0f}s", flush=True)
    x, grades = crops_and_grades(photos, jitter=2, seed=TRAIN_SEED)
    if args.only:
        loss = train_grader(args.only, x, grades, args.steps, file=f"leaf_{args.only}",
                            version="1.0.0", seed=TRAIN_SEED)  # fmt: skip
        print(f"grader {args.only}: loss {loss:.4f} ({time.monotonic() - started:.0f}s)")
        return
    loss = train_detector(photos, 300)
    print(f"detector: loss {loss:.4f} ({time.monotonic() - started:.0f}s)", flush=True)
    for disease in DISEASES:
        loss = train_grader(disease, x, grades, args.steps, file=f"leaf_{disease}",
                            version="1.0.0", seed=TRAIN_SEED)  # fmt: skip
        print(f"grader {disease}: loss {loss:.4f} ({time.monotonic() - started:.0f}s)", flush=True)
    loss = train_grader("rust", x, grades, args.steps * 2, file="leaf_rust_v2", version="2.0.0",
                        seed=TRAIN_SEED + 1)  # fmt: skip
    seconds = time.monotonic() - started
    print(f"grader rust v2: loss {loss:.4f}; trained everything in {seconds:.0f}s", flush=True)
    (MODELS / "training.json").write_text(json.dumps({"train_seconds": round(seconds)}) + "\n")


if __name__ == "__main__":
    main()
