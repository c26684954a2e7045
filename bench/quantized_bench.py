"""Int8 against fp32 inference, in the same run: the flagship's two shipped models.

Inference alone (``Model.logits``, what the classify step calls; one thread, the serving
session options) at batch 1, 16 and 64: in each round every model runs for ``--seconds``,
taking turns, so load from other work on the machine falls on both; the figures are
medians over ``--rounds``, as scans per wall-clock second and per CPU-second of the
thread (which other processes disturb much less), the ratio the median of the rounds'
ratios. With ``--ceiling``, the flagship
ceiling (``flagship_ceiling.py``: decode, preprocess, classify, store in a tight loop,
one process and two) with each model, alternately, best of ``--ceiling-repeats``::

    .venv/bin/python bench/quantized_bench.py [--rounds 15] [--ceiling] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from flagship_ceiling import run_ceiling
from numpy.typing import NDArray

from inferstream.apps.eggs.int8_card import INT8_MODEL
from inferstream.apps.eggs.phantom import generate
from inferstream.apps.eggs.preprocess import preprocess_batch
from inferstream.apps.eggs.simulator import ScanPool
from inferstream.classify import Model, load_model

MODELS = {"fp32": "egg_sexing", "int8": INT8_MODEL}
BATCHES = (1, 16, 64)


def _round(model: Model, batch: NDArray[np.float32], seconds: float) -> tuple[float, float]:
    """Scans per wall-clock second and per CPU-second over ``seconds`` of wall clock."""
    done, wall, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall < seconds:
        model.logits(batch)
        done += len(batch)
    return done / (time.perf_counter() - wall), done / (time.thread_time() - cpu)


def inference(models: dict[str, Model], rounds: int, seconds: float) -> dict[str, Any]:
    scans = preprocess_batch(next(generate(max(BATCHES), seed=11))[1])
    out: dict[str, Any] = {}
    for size in BATCHES:
        batch = np.ascontiguousarray(scans[:size])
        for model in models.values():
            _round(model, batch, 0.1)  # first runs: allocations, caches
        walls: dict[str, list[float]] = {name: [] for name in models}
        cpus: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, model in models.items():
                wall, cpu = _round(model, batch, seconds)
                walls[name].append(wall)
                cpus[name].append(cpu)
        row = {
            name: {"wall": statistics.median(walls[name]), "cpu": statistics.median(cpus[name])}
            for name in models
        }
        # Each round's ratio is of two runs moments apart: drift in the machine cancels.
        row["ratio"] = {
            kind: statistics.median(
                i / f for f, i in zip(found["fp32"], found["int8"], strict=True)
            )
            for kind, found in (("wall", walls), ("cpu", cpus))
        }
        out[f"batch_{size}"] = row
        print(f"batch {size:>2}: " + ", ".join(
            f"{name} {row[name]['wall']:,.0f}/s wall {row[name]['cpu']:,.0f}/s cpu"
            for name in models
        ) + f"; int8/fp32 {row['ratio']['wall']:.2f} wall, {row['ratio']['cpu']:.2f} cpu",
              flush=True)  # fmt: skip
    return out


def ceilings(scans: int, repeats: int) -> dict[str, Any]:
    pool = ScanPool.build(256)
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name, model in MODELS.items():
            found = run_ceiling(pool, scans, repeats=1, model=model)
            kept = best.get(name)
            if kept is None or found["all_processes_per_s"] > kept["all_processes_per_s"]:
                best[name] = found
    for name, found in best.items():
        classify = found["step_us_per_scan"]["classify"]
        print(
            f"ceiling {name}: one process {found['one_process_per_s']:,.0f}/s, "
            f"{found['processes']} processes {found['all_processes_per_s']:,.0f}/s, "
            f"classify {classify:.0f} us/scan",
            flush=True,
        )
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--seconds", type=float, default=0.15, help="per model per round")
    parser.add_argument("--ceiling", action="store_true", help="also the flagship ceiling")
    parser.add_argument("--ceiling-scans", type=int, default=3000, help="per process")
    parser.add_argument("--ceiling-repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    out: dict[str, Any] = {"load_1min_before": os.getloadavg()[0]}
    print(f"1-minute load before: {out['load_1min_before']:.2f}", flush=True)
    models = {name: load_model(model) for name, model in MODELS.items()}
    out["versions"] = {name: model.info.version for name, model in models.items()}
    out["inference"] = inference(models, args.rounds, args.seconds)
    if args.ceiling:
        out["ceiling"] = ceilings(args.ceiling_scans, args.ceiling_repeats)
    out["load_1min_after"] = os.getloadavg()[0]
    print(f"1-minute load after: {out['load_1min_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
