"""Train the cameras application's models on simulator frames and write their model card.

``python -m inferstream.apps.cameras.train`` writes, into ``models/`` beside this file:

- ``camera_view``: the production per-camera estimator (view: empty, body, head, tail;
  and where the visible end is);
- ``camera_view_dev``: the dev flow's candidate (a narrower net, trained shorter), run
  beside production on the same stream and compared with it;
- ``loco_type``: the later service's locomotive-type classifier (none, shunter,
  mainline, freight), a plain classifier the core ``classify`` step serves.

Needs the ``train`` extra (PyTorch, onnx). Every figure in the card is measured on the
exported ONNX models through ONNX Runtime, on frames from a seed training never saw.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inferstream.apps.cameras.frames import INPUT_SHAPE, FrameSet, sample_frames
from inferstream.apps.cameras.model_card import evaluate_all, write_card
from inferstream.apps.cameras.scene import TYPES, VIEWS

MODELS_DIR = Path(__file__).parent / "models"
OFFSET_WEIGHT = 20.0


@dataclass(frozen=True)
class ModelPlan:
    name: str
    version: str
    width: int
    epochs: int
    task: str  # "view" (logits + end offset) or "type" (logits)


PLANS = (
    ModelPlan("camera_view", "1.0.0", 32, 5, "view"),
    ModelPlan("camera_view_dev", "1.1.0-dev", 12, 2, "view"),
    ModelPlan("loco_type", "1.0.0", 16, 3, "type"),
)


class Net(nn.Module):  # type: ignore[misc, unused-ignore]  # Any without the train extra
    """Two convolution blocks, then a dense layer that keeps where things are."""

    def __init__(self, width: int, outputs: int, squash_last: bool) -> None:
        super().__init__()
        rows, cols = INPUT_SHAPE[1] // 4, INPUT_SHAPE[2] // 4
        self.features = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(width * rows * cols, 64),
            nn.ReLU(),
            nn.Linear(64, outputs),
        )
        self.squash_last = squash_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(x)
        if not self.squash_last:
            return out
        return torch.cat([out[:, :-1], torch.sigmoid(out[:, -1:])], dim=1)


def _loss(plan: ModelPlan, out: torch.Tensor, data: dict[str, torch.Tensor]) -> torch.Tensor:
    if plan.task == "type":
        return nn.functional.cross_entropy(out, data["kind"])
    loss = nn.functional.cross_entropy(out[:, : len(VIEWS)], data["view"])
    ends = data["view"] >= VIEWS.index("head")
    if bool(ends.any()):
        error = out[ends, len(VIEWS)] - data["offset"][ends]
        loss = loss + OFFSET_WEIGHT * nn.functional.smooth_l1_loss(
            error, torch.zeros_like(error), beta=0.02
        )
    return loss


def fit(plan: ModelPlan, data: FrameSet, seed: int, batch: int = 128) -> Net:
    torch.manual_seed(seed)
    net = Net(
        plan.width,
        len(TYPES) if plan.task == "type" else len(VIEWS) + 1,
        squash_last=plan.task == "view",
    )
    tensors = {
        "x": torch.from_numpy(data.x),
        "view": torch.from_numpy(data.view),
        "offset": torch.from_numpy(data.offset),
        "kind": torch.from_numpy(data.kind),
    }
    steps = plan.epochs * (len(data.x) // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(plan.epochs):
        net.train()
        order, total = torch.randperm(len(data.x)), 0.0
        for i in range(len(data.x) // batch):
            idx = order[i * batch : (i + 1) * batch]
            loss = _loss(plan, net(tensors["x"][idx]), {k: v[idx] for k, v in tensors.items()})
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(
            f"  {plan.name} epoch {epoch + 1}/{plan.epochs}: loss {total / (i + 1):.4f}", flush=True
        )
    net.eval()
    return net


def export(net: Net, plan: ModelPlan, out_dir: Path, trained: dict[str, object]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    output = "estimate" if plan.task == "view" else "logits"
    torch.onnx.export(
        net,
        (torch.zeros(1, *INPUT_SHAPE),),
        str(out_dir / f"{plan.name}.onnx"),
        input_names=["frame"],
        output_names=[output],
        dynamic_axes={"frame": {0: "batch"}, output: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    meta: dict[str, object] = {
        "name": plan.name,
        "version": plan.version,
        "labels": list(VIEWS if plan.task == "view" else TYPES),
        "input": "frame",
        "output": output,
        "input_shape": list(INPUT_SHAPE),
        "trained_on": {**trained, "epochs": plan.epochs, "width": plan.width},
    }
    if plan.task == "view":
        meta["offset_column"] = len(VIEWS)
    (out_dir / f"{plan.name}.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR)
    parser.add_argument("--card", type=Path, default=Path("docs/cameras-model-card.md"))
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.monotonic()
    data = sample_frames(args.frames, args.seed)
    print(f"rendered {len(data.x)} labelled frames in {time.monotonic() - started:.1f}s")
    seconds: dict[str, float] = {}
    for plan in PLANS:
        began = time.monotonic()
        net = fit(plan, data, args.seed)
        seconds[plan.name] = round(time.monotonic() - began, 1)
        trained = {
            "generator": "inferstream.apps.cameras.scene",
            "seed": args.seed,
            "frames": args.frames,
            "train_seconds": seconds[plan.name],
        }
        export(net, plan, args.out, trained)
        _check_export(net, args.out / f"{plan.name}.onnx", data.x[:256])
    write_card(args.card, evaluate_all(args.out), seconds)
    print(f"trained in {time.monotonic() - started:.0f}s; card written to {args.card}")


def _check_export(net: Net, path: Path, x: np.ndarray) -> None:
    import onnxruntime as ort

    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"frame": x}
    )
    diff = float(np.abs(expected - got).max())
    if diff > 1e-3:
        raise RuntimeError(f"ONNX export of {path.name} disagrees with torch by {diff}")


if __name__ == "__main__":
    main()
