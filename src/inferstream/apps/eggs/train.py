"""Train the shipped ``egg_sexing`` model on generated scans and write its model card.

``python -m inferstream.apps.eggs.train --out src/inferstream/models --card docs/model-card.md``

Needs the ``train`` extra (PyTorch, onnx); nothing else in inferstream imports torch.
Data come from :mod:`inferstream.apps.eggs.phantom` (seeded) and go through the serving
:func:`~inferstream.apps.eggs.preprocess.preprocess_batch`, so the model is trained on
exactly what it will see. The exported ONNX model is checked against torch, and every
figure in the card is measured on the exported model through ONNX Runtime, on scans
from a seed that training never saw.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from inferstream.apps.eggs import LABELS
from inferstream.apps.eggs.model_card import Evaluation, evaluate, write_card
from inferstream.apps.eggs.phantom import DEFAULT_DIFFICULTY, DEFAULT_MIX, generate
from inferstream.apps.eggs.preprocess import OUT_SIZE, preprocess_batch
from inferstream.classify import Model, load_model

MODEL_NAME = "egg_sexing"
MODEL_VERSION = "1.0.0"


@dataclass(frozen=True)
class TrainConfig:
    n_train: int = 14000
    seed: int = 1
    eval_seed: int = 1001
    n_eval: int = 3000
    difficulties: tuple[float, ...] = (0.3, 0.4, DEFAULT_DIFFICULTY, 0.6, 0.7)
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    threads: int = 2


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def build_net() -> nn.Sequential:
    """Small CNN for (1, 64, 64) scans: ~17 M multiply-accumulates, ~0.1 M parameters."""
    return nn.Sequential(
        *_block(1, 24),
        nn.MaxPool2d(2),
        *_block(24, 32),
        nn.MaxPool2d(2),
        *_block(32, 64),
        nn.MaxPool2d(2),
        *_block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, len(LABELS)),
    )


def count_macs(net: nn.Module, shape: Sequence[int] = (1, OUT_SIZE, OUT_SIZE)) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * kernel * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, *shape))
    for handle in handles:
        handle.remove()
    return total


def make_data(
    n: int, seed: int, difficulties: Sequence[float]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Preprocessed scans and label indices; difficulty cycles chunk by chunk."""
    xs, ys = [], []
    per = -(-n // len(difficulties))
    for k, difficulty in enumerate(difficulties):
        count = min(per, n - k * per)
        for specs, scans in generate(count, seed=seed * 100 + k, difficulty=difficulty):
            xs.append(preprocess_batch(scans))
            ys.append(np.array([LABELS.index(s.label) for s in specs]))
    return np.concatenate(xs), np.concatenate(ys)


def train(net: nn.Module, x: NDArray[np.float32], y: NDArray[np.int64], cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = cfg.epochs * (len(x) // cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(x))
        started, seen, correct, loss_sum = time.monotonic(), 0, 0, 0.0
        for i in range(len(x) // cfg.batch_size):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            logits = net(xt[idx])
            loss = loss_fn(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            correct += int((logits.argmax(1) == yt[idx]).sum())
            loss_sum += float(loss.detach()) * len(idx)
            if i % 50 == 0:
                print(
                    f"  epoch {epoch + 1} batch {i}: loss {loss_sum / seen:.4f} "
                    f"acc {correct / seen:.4f} ({time.monotonic() - started:.0f}s)",
                    flush=True,
                )
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.4f} acc {correct / seen:.4f}"
            f" in {time.monotonic() - started:.0f}s",
            flush=True,
        )


def export(net: nn.Module, out_dir: Path, macs: int, cfg: TrainConfig, seconds: float) -> Path:
    """Write ``egg_sexing.onnx`` and ``egg_sexing.json``; return the ONNX path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{MODEL_NAME}.onnx"
    net.eval()
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, OUT_SIZE, OUT_SIZE),),
        str(onnx_path),
        input_names=["scan"],
        output_names=["logits"],
        dynamic_axes={"scan": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    meta = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "labels": list(LABELS),
        "input": "scan",
        "output": "logits",
        "input_shape": [1, OUT_SIZE, OUT_SIZE],
        "macs": macs,
        "trained_on": {
            "generator": "inferstream.apps.eggs.phantom",
            "seed": cfg.seed,
            "scans": cfg.n_train,
            "difficulties": list(cfg.difficulties),
            "mix": dict(zip(LABELS, DEFAULT_MIX, strict=True)),
            "epochs": cfg.epochs,
            "train_seconds": round(seconds),
        },
    }
    (out_dir / f"{MODEL_NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return onnx_path


def check_export(net: nn.Module, model: Model, x: NDArray[np.float32]) -> float:
    """Largest |torch - ONNX Runtime| logit difference on a batch; raises when too large."""
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    diff = float(np.abs(expected - model.logits(x)).max())
    if diff > 1e-3:
        raise RuntimeError(f"ONNX export disagrees with torch by {diff}; do not ship it")
    return diff


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("src/inferstream/models"))
    parser.add_argument("--card", type=Path, default=Path("docs/model-card.md"))
    parser.add_argument("--scans", type=int, default=TrainConfig.n_train)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    args = parser.parse_args(argv)
    cfg = TrainConfig(n_train=args.scans, epochs=args.epochs)
    torch.set_num_threads(cfg.threads)
    started = time.monotonic()
    x, y = make_data(cfg.n_train, cfg.seed, cfg.difficulties)
    print(f"generated and preprocessed {len(x)} scans in {time.monotonic() - started:.0f}s")
    net = build_net()
    macs = count_macs(net)
    print(f"model: {macs / 1e6:.1f} M MACs, {sum(p.numel() for p in net.parameters())} params")
    train(net, x, y, cfg)
    seconds = time.monotonic() - started
    model = load_model(export(net, args.out, macs, cfg, seconds))
    print(f"export check: max logit difference {check_export(net, model, x[:256]):.2e}")
    evaluation: Evaluation = evaluate(model, cfg.eval_seed, cfg.n_eval)
    write_card(args.card, model, evaluation, seconds)
    print(
        f"held-out accuracy {evaluation.accuracy:.4f}, ECE {evaluation.ece:.4f}; "
        f"card written to {args.card}"
    )


if __name__ == "__main__":
    main()
