"""The batches a finished flagship run's workers took, read back from its results store.

Each stored record keeps the time each stage finished it and which worker did
(``lineage``); a worker stamps the scans of one batch within a fraction of a millisecond
of each other, so stamps closer than ``--gap-us`` are counted as one batch. Prints, per
worker of the first stage in the lineage, the batches, their sizes and the time between
the ends of consecutive batches, and the store's batches (records stored at the same
microsecond). An estimate for runs whose workers' metrics were not scraped::

    .venv/bin/python bench/lineage_batches.py .inferstream/eggs/results.db [--gap-us 300]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import statistics
from collections import Counter, defaultdict
from pathlib import Path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="the run's SQLite results store")
    parser.add_argument("--gap-us", type=int, default=300, help="stamps closer: one batch")
    args = parser.parse_args()
    db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    stamps: dict[str, list[int]] = defaultdict(list)
    stored: Counter[int] = Counter()
    for lineage, stored_at in db.execute("SELECT lineage, stored_at_us FROM records"):
        steps = json.loads(lineage)
        if steps:
            stamps[f"{steps[0]['stage']} {steps[0]['worker']}"].append(steps[0]["at_us"])
        stored[stored_at] += 1
    for worker, times in sorted(stamps.items()):
        times.sort()
        sizes, ends, size = [], [], 1
        for before, after in itertools.pairwise(times):
            if after - before > args.gap_us:
                sizes.append(size)
                ends.append(before)
                size = 0
            size += 1
        sizes.append(size)
        ends.append(times[-1])
        gaps = [(b - a) / 1000 for a, b in itertools.pairwise(ends)] or [0.0]
        print(
            f"{worker}: {len(sizes)} batches, {statistics.mean(sizes):.1f} scans each "
            f"(p90 {_pct(sizes, 0.9)}, max {max(sizes)}); a batch ended every "
            f"{statistics.median(gaps):.1f} ms (p90 {_pct(gaps, 0.9):.1f})"
        )
    print(f"store: {len(stored)} batches, {statistics.mean(stored.values()):.1f} records each")


if __name__ == "__main__":
    main()
