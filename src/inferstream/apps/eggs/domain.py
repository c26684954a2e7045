"""The not-an-egg guard: scans outside the sexing model's domain are flagged, not sexed.

A classifier answers every input with one of its labels, confidently or not: a human
head MR came out "male 0.96". The guard decides first whether a scan looks like the
eggs the model learnt, from what the pipeline has already computed for the model:

- **how egg-like the model input is**: the preprocessed 64x64 slice, averaged down to
  16x16, against the eggs' principal components: the Mahalanobis distance within the
  first :data:`COMPONENTS` components (per component) plus the energy left outside
  them (over the eggs' median), one score; a scan scoring above the threshold, set at
  a quantile of held-out eggs' scores with a margin, is not an egg;
- **how much of the field of view the egg fills** (its extent, from
  ``preprocess_scan``): a tiny egg in a wide field of view crops to something egg-like,
  but was not scanned as the model's eggs were; outside the eggs' range, it is not one.

Flagged scans keep their place in the pipeline: the ``egg_guard`` step marks each scan's
``domain`` (``egg`` or ``not_an_egg``) and ``domain_score``, and drops the model input
of the flagged ones; the pipeline's ``classify`` step is skipped for them (``unless:
{attributes: {domain: not_an_egg}}``), so they are stored with that status and no sex,
and count in no sex ratio.

``python -m inferstream.apps.eggs.domain`` fits the guard on generated eggs and writes
``models/egg_domain.npz`` and ``.json`` (with its rates on eggs and on every kind of
:mod:`inferstream.apps.eggs.negatives`); ``docs/model-card.md`` records them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.apps.eggs.preprocess import EXTENT, OUT_SIZE, preprocess_with_extents
from inferstream.envelope import Envelope, from_tensor
from inferstream.errors import ConfigError, InvalidInput
from inferstream.steps import Outcome, Step, StepContext

F64 = NDArray[np.float64]
COMPONENTS = 24
_FEATURE_SIDE = 16
#: The guard's attributes on each scan.
DOMAIN, SCORE = "domain", "domain_score"
EGG, NOT_AN_EGG = "egg", "not_an_egg"
#: Eggs of every difficulty at the scan sizes scanners send, for fitting.
_SIZES, _DIFFICULTIES = (96, 128, 192), (0.2, 0.5, 0.8)


def features(inputs: NDArray[np.float32]) -> F64:
    """(N, 1, 64, 64) model inputs -> (N, 256) features: each averaged down to 16x16.

    OpenCV's area resize by a whole factor is that average, to the bit, and a tenth of
    the cost of NumPy's mean over the strided axes of a (N, 16, 4, 16, 4) view (3 µs a
    scan against 35, which had been most of the guard's time).
    """
    n = len(inputs)
    pooled = np.empty((n, _FEATURE_SIDE, _FEATURE_SIDE), dtype=np.float32)
    for image, out in zip(inputs.reshape(n, OUT_SIZE, OUT_SIZE), pooled, strict=True):
        cv2.resize(image, (_FEATURE_SIDE, _FEATURE_SIDE), dst=out, interpolation=cv2.INTER_AREA)
    found: F64 = pooled.reshape(n, -1).astype(np.float64)
    return found


@dataclass(frozen=True)
class DomainModel:
    """The eggs' principal components and the limits a scan must keep within."""

    mean: F64
    components: F64  # (COMPONENTS, 256)
    variances: F64  # (COMPONENTS,)
    residual_scale: float
    threshold: float
    extent_range: tuple[float, float]
    version: str = "1"

    def scores(self, inputs: NDArray[np.float32]) -> F64:
        """How unlike the eggs each model input is (about 1 to 3 for eggs)."""
        mahalanobis, residual = self.distances(features(inputs))
        scores: F64 = mahalanobis + residual / self.residual_scale
        return scores

    def distances(self, x: F64) -> tuple[F64, F64]:
        """Of features ``x``: the Mahalanobis distance within the components (per
        component), and the energy left outside them."""
        centred = x - self.mean
        projected = centred @ self.components.T
        mahalanobis: F64 = (projected**2 / self.variances).sum(axis=1) / len(self.variances)
        residual: F64 = ((centred - projected @ self.components) ** 2).sum(axis=1)
        return mahalanobis, residual

    def is_egg(self, scores: F64, extents: NDArray[np.floating[Any]]) -> NDArray[np.bool_]:
        low, high = self.extent_range
        inside: NDArray[np.bool_] = (
            (scores <= self.threshold) & (extents >= low) & (extents <= high)
        )
        return inside

    def save(self, stem: Path, meta: dict[str, Any]) -> None:
        np.savez_compressed(stem.with_suffix(".npz"), mean=self.mean,
                            components=self.components, variances=self.variances)  # fmt: skip
        limits = {"residual_scale": self.residual_scale, "threshold": self.threshold,
                  "extent_range": list(self.extent_range), "version": self.version}  # fmt: skip
        stem.with_suffix(".json").write_text(json.dumps({**limits, **meta}, indent=2) + "\n")

    @classmethod
    def load(cls, stem: Path) -> DomainModel:
        meta = json.loads(stem.with_suffix(".json").read_text())
        with np.load(stem.with_suffix(".npz")) as arrays:
            mean, components, variances = (arrays[k] for k in ("mean", "components", "variances"))
        low, high = meta["extent_range"]
        limits = float(meta["residual_scale"]), float(meta["threshold"]), (float(low), float(high))
        return cls(mean, components, variances, *limits, str(meta["version"]))


def generated_eggs(n: int, seed: int) -> list[NDArray[np.uint16]]:
    """``n`` eggs spread over the scan sizes and difficulties a hatchery sees."""
    kinds = [(size, d) for size in _SIZES for d in _DIFFICULTIES]
    scans: list[NDArray[np.uint16]] = []
    for i, (size, difficulty) in enumerate(kinds):
        count = n // len(kinds) + (i < n % len(kinds))
        scans += list(render_batch(make_specs(count, seed * 100 + i, difficulty), size))
    return scans


def fit(n: int = 4000, seed: int = 1, holdout_seed: int = 2) -> tuple[DomainModel, dict[str, Any]]:
    """The guard fitted on ``n`` generated eggs; the threshold from ``n`` held-out ones."""
    inputs, extents = preprocess_with_extents(generated_eggs(n, seed))
    x = features(inputs)
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    variances = singular[:COMPONENTS] ** 2 / (len(x) - 1)
    draft = DomainModel(mean, vt[:COMPONENTS], variances, 1.0, np.inf, (0.0, 1.0))
    draft = dataclasses.replace(draft, residual_scale=float(np.median(draft.distances(x)[1])))
    held_inputs, held_extents = preprocess_with_extents(generated_eggs(n, holdout_seed))
    held = draft.scores(held_inputs)
    # A margin above the eggs' 99.9th percentile: at most about 0.1% of eggs flagged.
    threshold = float(np.quantile(held, 0.999) * 1.1)
    all_extents = np.concatenate([extents, held_extents])
    extent_range = (float(np.quantile(all_extents, 0.0005) * 0.8),
                    float(min(1.0, np.quantile(all_extents, 0.9995) * 1.06)))  # fmt: skip
    model = dataclasses.replace(draft, threshold=threshold, extent_range=extent_range)
    return model, {"trained_on": f"{n} generated eggs (seed {seed}), threshold from {n} "
                   f"held out (seed {holdout_seed})"}  # fmt: skip


def rates(model: DomainModel, n: int, seed: int) -> dict[str, float]:
    """The share flagged of ``n`` fresh eggs and of ``n`` scans of each negative kind."""
    from inferstream.apps.eggs.negatives import KINDS, negatives

    def flagged(scans: Sequence[NDArray[np.uint16]]) -> float:
        inputs, extents = preprocess_with_extents(scans)
        return float((~model.is_egg(model.scores(inputs), extents)).mean())

    found = {"eggs": flagged(generated_eggs(n, seed))}
    found.update({kind: flagged(negatives(kind, n, seed)) for kind in KINDS})
    return found


def load_domain(name: str = "egg_domain") -> DomainModel:
    """The shipped guard (``models/egg_domain.*``), or one at a path stem."""
    from inferstream.apps.eggs import APP

    stem = Path(name) if "/" in name else APP.models_dir / name
    if not stem.with_suffix(".npz").is_file():
        raise ConfigError(
            f"egg_guard: no domain model {name!r}; fit one with "
            "python -m inferstream.apps.eggs.domain --out DIR"
        )
    return DomainModel.load(stem)


class EggGuardStep(Step):
    """Marks each scan ``domain: egg`` or ``not_an_egg`` with its ``domain_score``, and
    takes the model input away from the ones that are not eggs."""

    name = "egg_guard"

    def __init__(self, model: DomainModel) -> None:
        self.model = model

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        inputs, extents, slots = [], [], []
        for i, env in enumerate(batch):
            if env.payload.WhichOneof("body") != "tensor" or EXTENT not in env.attributes:
                outcomes.append(InvalidInput("egg_guard needs preprocess_scan's output before it"))
                continue
            inputs.append(from_tensor(env.payload.tensor))
            extents.append(float(env.attributes[EXTENT]))
            outcomes.append(env)
            slots.append(i)
        if not slots:
            return outcomes
        scores = self.model.scores(np.stack(inputs).astype(np.float32))
        eggs = self.model.is_egg(scores, np.asarray(extents))
        for slot, score, egg in zip(slots, scores, eggs, strict=True):
            out = Envelope()
            out.CopyFrom(batch[slot])
            out.attributes[DOMAIN] = EGG if egg else NOT_AN_EGG
            out.attributes[SCORE] = f"{score:.3f}"
            if not egg:
                out.payload.ClearField("tensor")  # nothing for a model to read
            outcomes[slot] = out
        return outcomes


def egg_guard_step(context: StepContext, *, model: str = "egg_domain") -> EggGuardStep:
    """Step factory (``egg_guard`` in a pipeline file), after ``preprocess_scan``."""
    del context
    return EggGuardStep(load_domain(model))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m inferstream.apps.eggs.domain",
        description="Fit the not-an-egg guard on generated eggs and write it with its rates "
        "on fresh eggs and on every kind of generated non-egg scan.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for egg_domain.*")
    parser.add_argument("--n", type=int, default=4000, help="eggs to fit on (4000)")
    parser.add_argument("--eval", type=int, default=2000, help="scans per kind to rate (2000)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"fitting on {args.n} generated eggs ...", flush=True)
    model, meta = fit(args.n)
    print(f"rating on {args.eval} fresh eggs and {args.eval} of each non-egg kind ...", flush=True)
    found = rates(model, args.eval, seed=3)
    for kind, share in found.items():
        print(f"  {kind:28s} flagged {share:7.2%}")
    meta.update({"rates_flagged": found, "rated_per_kind": args.eval,
                 "fit_seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "egg_domain", meta)
    print(f"wrote {args.out / 'egg_domain'}.npz and .json", flush=True)


if __name__ == "__main__":
    main()
