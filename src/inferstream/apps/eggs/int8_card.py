"""The int8 copy of the flagship model against fp32: a scan-by-scan comparison on
held-out scans, and the model card's section on it.

:mod:`inferstream.apps.eggs.quantize` makes the copy and records what it measured in
``models/egg_sexing_int8.json``; :func:`int8_section` renders that record for
``docs/model-card.md``. Needs no onnx: the comparison runs both models through
:mod:`inferstream.classify`, the code that serves them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferstream.apps.eggs import APP, LABELS
from inferstream.apps.eggs.phantom import DEFAULT_DIFFICULTY, generate
from inferstream.apps.eggs.preprocess import preprocess_batch
from inferstream.classify import Model
from inferstream.promotion import wilson

#: The int8 copy of the shipped model, beside it in ``models/``.
INT8_MODEL = "egg_sexing_int8"


@dataclass(frozen=True)
class Comparison:
    """A reference model and a candidate scored on the same held-out scans."""

    seed: int
    n: int
    difficulty: float
    reference_correct: int
    candidate_correct: int
    only_reference: int  # scans only the reference labels right
    only_candidate: int  # scans only the candidate labels right
    agree: int  # scans both give the same label

    @property
    def reference_accuracy(self) -> float:
        return self.reference_correct / self.n

    @property
    def candidate_accuracy(self) -> float:
        return self.candidate_correct / self.n

    @property
    def difference_points(self) -> float:
        """Candidate minus reference accuracy, in points (percent)."""
        return 100 * (self.candidate_correct - self.reference_correct) / self.n

    def difference_interval_points(self) -> tuple[float, float]:
        """95 % interval of the paired difference (normal approximation over the scans
        only one of the two labels right)."""
        n, gained, lost = self.n, self.only_candidate, self.only_reference
        half = 1.96 * math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n
        return 100 * ((gained - lost) / n - half), 100 * ((gained - lost) / n + half)

    def within(self, points: float) -> bool:
        """Whether the candidate is at most ``points`` below the reference."""
        return self.candidate_correct - self.reference_correct >= -points / 100 * self.n

    def to_json(self) -> dict[str, Any]:
        low, high = self.difference_interval_points()
        return {
            "generator": "inferstream.apps.eggs.phantom",
            "seed": self.seed,
            "scans": self.n,
            "difficulty": self.difficulty,
            "fp32_accuracy": round(self.reference_accuracy, 5),
            "int8_accuracy": round(self.candidate_accuracy, 5),
            "fp32_interval": [round(v, 5) for v in wilson(self.reference_correct, self.n)],
            "int8_interval": [round(v, 5) for v in wilson(self.candidate_correct, self.n)],
            "difference_points": round(self.difference_points, 3),
            "difference_interval_points": [round(low, 3), round(high, 3)],
            "agreement": round(self.agree / self.n, 5),
            "only_fp32_right": self.only_reference,
            "only_int8_right": self.only_candidate,
        }


def compare_models(
    reference: Model, candidate: Model, seed: int, n: int, difficulty: float = DEFAULT_DIFFICULTY
) -> Comparison:
    """Both models on the same ``n`` fresh scans, scan by scan."""
    counts = np.zeros(5, dtype=np.int64)  # reference right, candidate right, only r, only c, agree
    for specs, scans in generate(n, seed=seed, difficulty=difficulty):
        truth = np.array([LABELS.index(s.label) for s in specs])
        inputs = preprocess_batch(scans)
        ref = reference.predict(inputs)[1].argmax(axis=1)
        cand = candidate.predict(inputs)[1].argmax(axis=1)
        ref_right, cand_right = ref == truth, cand == truth
        counts += [
            ref_right.sum(), cand_right.sum(), (ref_right & ~cand_right).sum(),
            (cand_right & ~ref_right).sum(), (ref == cand).sum(),
        ]  # fmt: skip
    return Comparison(seed, n, difficulty, *(int(c) for c in counts))


def int8_section(models_dir: Path = APP.models_dir) -> list[str]:
    """The int8 copy of the model as :mod:`inferstream.apps.eggs.quantize` made and
    measured it (``models/egg_sexing_int8.json``); nothing if it is not shipped."""
    path = models_dir / f"{INT8_MODEL}.json"
    if not path.is_file():
        return []
    meta = json.loads(path.read_text())
    made, source = meta["quantization"], meta["quantized_from"]
    fp32 = (models_dir / source["file"]).read_bytes()
    stale = hashlib.sha256(fp32).hexdigest() != source["sha256"]
    return [
        f"## Int8 model: {meta['name']} {meta['version']}",
        "",
        *(
            [
                f"**Stale**: made from another `{source['file']}` than the one shipped; "
                "run `python -m inferstream.apps.eggs.quantize` again.",
                "",
            ]
            if stale
            else []
        ),
        f"`python -m inferstream.apps.eggs.quantize` made it from {source['version']} "
        f"(SHA-256 `{source['sha256'][:16]}...`) with {made['tool']}: {made['format']} "
        f"format, weights {made['weights']}, activations {made['activations']}, ranges "
        f"calibrated ({made['calibration']['method']}) on {made['calibration']['scans']:,} "
        f"generated scans (seed {made['calibration']['seed']}, difficulties "
        f"{made['calibration']['difficulties']}) that no training or evaluation uses. "
        f"Before quantising, the input is padded from one channel to "
        f"{made['input_padded_to_channels']} with zeros, the same function: ONNX Runtime's "
        "int8 convolution is fast only on a multiple of 4 input channels.",
        "",
        *_int8_accuracy(meta),
        *_int8_speed(meta["throughput"]),
    ]


def _int8_accuracy(meta: dict[str, Any]) -> list[str]:
    held = meta["held_out"]
    low, high = held["difference_interval_points"]
    served = meta["serve_by_default"]
    return [
        f"Held-out, both models on the same {held['scans']:,} scans (seed {held['seed']}, "
        f"difficulty {held['difficulty']}):",
        "",
        "| model | accuracy | 95 % interval (Wilson) |",
        "|---|---|---|",
        f"| fp32 {meta['quantized_from']['version']} | {held['fp32_accuracy']:.4f} | "
        f"{held['fp32_interval'][0]:.4f}-{held['fp32_interval'][1]:.4f} |",
        f"| int8 {meta['version']} | {held['int8_accuracy']:.4f} | "
        f"{held['int8_interval'][0]:.4f}-{held['int8_interval'][1]:.4f} |",
        "",
        f"- difference {held['difference_points']:+.3f} points (paired 95 % interval "
        f"{low:+.3f} to {high:+.3f}); the same label on {held['agreement']:.2%} of the scans; "
        f"right only in fp32: {held['only_fp32_right']}, only in int8: "
        f"{held['only_int8_right']}",
        f"- **{meta['decision']}**. "
        + (
            f"On first use the registry points `{meta['name']}@champion` at "
            f"{meta['version']} (fp32 {meta['quantized_from']['version']} is registered "
            f"beside it: `inferstream models alias PIPELINE {meta['name']} champion "
            f"{meta['quantized_from']['version']} --reason ...` serves it again)."
            if served
            else "It ships beside fp32, which the registry serves."
        ),
        "",
    ]


def _int8_speed(speed: dict[str, Any]) -> list[str]:
    rows = [
        f"| {key.removeprefix('batch_')} | {v['fp32']:,} | {v['int8']:,} | {v['ratio']:.2f} |"
        for key, v in speed.items()
        if key.startswith("batch_")
    ]
    return [
        f"Inference throughput, {speed['measured']} ({speed['cpu']}"
        + (f", {speed['vnni']}" if "vnni" in speed else "")
        + f", 1-minute load {speed['load_1min']}); the goal is 1.7 times:",
        "",
        "| batch | fp32 scans/s | int8 scans/s | int8 / fp32 |",
        "|---|---|---|---|",
        *rows,
        "",
        "`bench/quantized_bench.py` measures it with the wall clock too, and the flagship "
        'ceiling with each model (`docs/benchmarks.md`, "Int8 inference"). The ratio '
        "depends on the CPU: ONNX Runtime's int8 convolutions are fast with VNNI "
        "(AVX-512 VNNI or AVX-VNNI) and little faster than fp32 without it (0.92 to 1.16 "
        "times fp32 per CPU-second on a 2-core AMD EPYC with AVX2 only, 2026-12-02). "
        "`python -m inferstream.apps.eggs.quantize --remeasure` measures the shipped pair "
        "again on the machine it runs on and rewrites this table.",
        "",
    ]


__all__ = ["INT8_MODEL", "Comparison", "compare_models", "int8_section"]
