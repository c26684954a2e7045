"""What a scan costs each flagship step at the batch sizes a worker sees under load.

At half the ceiling's rate the classify workers take batches of a few scans, not the 64
of ``flagship_ceiling.py``; each step's fixed work per call is then shared by fewer
scans. This runs the classify stage's steps as ``eggs.yaml`` lists them
(``decode_dicom``, ``preprocess_scan``, ``egg_guard``, ``classify`` with the model the
registry serves first, the int8 copy) and the store stage's ``store_results`` (SQLite)
on the same envelopes, one batch size after another, and prints each step's CPU
(this thread's) per scan; the batch of 64 is the baseline the others are divided by.
Each size runs ``--rounds`` times, taking turns with the others; medians. No bus, no
worker: the steps alone::

    .venv/bin/python bench/step_batches.py [--sizes 1 2 4 8 64] [--rounds 5] [--scans 1536]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from flagship_ceiling import flagship_steps, scan_messages, time_steps

from inferstream.apps.eggs.domain import EggGuardStep, load_domain
from inferstream.apps.eggs.int8_card import INT8_MODEL
from inferstream.apps.eggs.simulator import ScanPool
from inferstream.steps import Step

BASELINE = 64


def stage_steps(db: Path) -> list[tuple[str, Step]]:
    """The classify stage's steps in order, then the store stage's."""
    decode, preprocess, classify, store = flagship_steps(db, INT8_MODEL)
    guard = ("guard", EggGuardStep(load_domain("egg_domain")))
    return [decode, preprocess, guard, classify, store]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, BASELINE])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scans", type=int, default=1536, help="scans per pass")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes) | {BASELINE})
    pool = ScanPool.build(256)
    with tempfile.TemporaryDirectory() as tmp:
        steps = stage_steps(Path(tmp) / "results.db")
        time_steps(steps, scan_messages(pool, 2 * BASELINE, "warm"), BASELINE)  # first runs
        found: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
        for round_ in range(args.rounds):
            for size in sizes:
                # Fresh ids every pass: the store really inserts, as in a worker.
                messages = scan_messages(pool, args.scans, f"r{round_}b{size}")
                found[size].append(time_steps(steps, messages, size, time.thread_time))
        for _, step in steps:
            step.close()
    medians = {
        size: {name: statistics.median(r[name] for r in rows) for name in rows[0]}
        for size, rows in found.items()
    }
    names = list(medians[BASELINE])
    print("CPU µs per scan (this thread), medians of", args.rounds, "rounds")
    print(f"{'batch':>5} " + " ".join(f"{n:>10}" for n in names) + f" {'all':>8} {'x64':>5}")
    base = sum(medians[BASELINE].values())
    for size in sizes:
        row = medians[size]
        total = sum(row.values())
        cells = " ".join(f"{row[n]:10.0f}" for n in names)
        print(f"{size:>5} {cells} {total:8.0f} {total / base:5.2f}")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in medians.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
