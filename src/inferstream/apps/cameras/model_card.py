"""Held-out evaluation of the cameras models and the model card it writes.

Needs no PyTorch: it measures the exported ONNX models through the serving loader
(:func:`inferstream.classify.load_model`) on frames from a seed training never saw.
``python -m inferstream.apps.cameras.model_card`` re-measures the shipped models and
rewrites ``docs/cameras-model-card.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferstream.apps.cameras.frames import sample_frames
from inferstream.apps.cameras.scene import TYPES, VIEWS
from inferstream.classify import load_model

EVAL_SEED = 1001
EVAL_FRAMES = 8000
SEGMENT_M = 60.0  # a camera's segment in the default layout


@dataclass(frozen=True)
class ModelFigures:
    name: str
    version: str
    accuracy: float  # view (or type, on frames showing a locomotive) accuracy
    per_class: dict[str, float]
    end_mae_m: float | None = None  # |position error| of a correctly seen end, metres
    end_p95_m: float | None = None


def evaluate_all(
    models_dir: Path, n: int = EVAL_FRAMES, seed: int = EVAL_SEED
) -> list[ModelFigures]:
    data = sample_frames(n, seed)
    figures = []
    for path in sorted(models_dir.glob("*.onnx")):
        model = load_model(path)
        out = model.logits(data.x)
        labels = model.info.labels
        predicted = out[:, : len(labels)].argmax(axis=1)
        if tuple(labels) == TYPES:
            seen = data.kind > 0
            truth, guess = data.kind[seen], predicted[seen]
        else:
            truth, guess = data.view, predicted
        per_class = {
            label: float((guess[truth == k] == k).mean()) if (truth == k).any() else float("nan")
            for k, label in enumerate(labels)
        }
        figure = ModelFigures(
            model.info.name, model.info.version, float((truth == guess).mean()), per_class
        )
        if tuple(labels) == VIEWS:
            ends = (data.view >= 2) & (predicted == data.view)
            error = np.abs(out[ends, len(VIEWS)] - data.offset[ends]) * SEGMENT_M
            figure = ModelFigures(
                **{
                    **figure.__dict__,
                    "end_mae_m": float(error.mean()),
                    "end_p95_m": float(np.percentile(error, 95)),
                }
            )
        figures.append(figure)
    return figures


def write_card(path: Path, figures: Sequence[ModelFigures], seconds: Mapping[str, float]) -> None:
    lines = [
        "# Model card: cameras application",
        "",
        "Three small convolutional nets on 16 x 48 grayscale camera strips, trained by",
        "`python -m inferstream.apps.cameras.train` on frames the application's own scene",
        "generator renders (`inferstream.apps.cameras.scene`, seed 1, 20,000 frames of 40",
        "random facilities); nothing is downloaded. Shipped as ONNX in",
        "`src/inferstream/apps/cameras/models/` with their metadata.",
        "",
        "- `camera_view` (production): what a camera sees (empty, body, head, tail) and",
        "  where the visible end is, as one output: 4 logits then the end's place in the",
        "  frame (0..1).",
        "- `camera_view_dev` (the dev flow's candidate): the same task, a narrower net",
        "  trained for fewer epochs.",
        "- `loco_type` (the later service): the locomotive type from its body texture.",
        "",
        f"Held-out figures: {EVAL_FRAMES} frames from seed {EVAL_SEED} (training never saw",
        "it), measured on the exported ONNX models through ONNX Runtime.",
        "",
        "| model | version | accuracy | per class | end error mean / p95 (m) | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        classes = ", ".join(f"{k} {v:.3f}" for k, v in f.per_class.items())
        ends = f"{f.end_mae_m:.2f} / {f.end_p95_m:.2f}" if f.end_mae_m is not None else "-"
        lines.append(
            f"| {f.name} | {f.version} | {f.accuracy:.4f} | {classes} | {ends} | "
            f"{seconds.get(f.name, float('nan')):.0f} |"
        )
    lines += [
        "",
        "Accuracy of `loco_type` counts frames that show a locomotive. End errors count",
        "frames whose head or tail the model saw as such; a camera's segment is 60 m,",
        "48 pixels (1.25 m a pixel).",
        "",
        "Limits: the frames are synthetic (one locomotive per track at a time, locomotives",
        "longer than a camera's segment, fixed lighting range and noise); figures on real",
        "cameras would differ. The dev model is a deliberately weaker candidate so the",
        "comparison of the two flows has something to show.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, default=Path("docs/cameras-model-card.md"))
    args = parser.parse_args(argv)
    write_card(args.card, evaluate_all(Path(__file__).parent / "models"), {})


if __name__ == "__main__":
    main()
