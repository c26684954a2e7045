"""``inferstream example leaves``: a simulated field trial through the leaves pipeline.

A drone photographs fixed positions in a control and a treated area for a few days;
the photos go through detection, five graders and the per-leaf join on the embedded
defaults; progress is printed while it runs, then a summary: every record counted by
id against the truth (lost, doubled), the detector's precision and recall, each
grader's accuracy, and the mean grade per day, area and disease with its trend.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inferstream.examples import add_run_arguments

#: Give up when no record arrived for this long (a stalled pipeline, not a slow one).
STALL_S = 120.0


@dataclass(frozen=True)
class TrialSettings:
    positions: int = 4
    days: int = 3
    seed: int = 0
    tenant: str = "demo-farm"
    workdir: Path = Path(".inferstream/leaves")
    bus: str | None = None
    store: str | None = None
    summary_json: Path | None = None
    quiet: bool = False


def run_trial(settings: TrialSettings) -> dict[str, Any]:
    """Simulate, run the pipeline (every stage in a thread of this process), wait for
    every record, check and summarise; returns the summary."""
    from inferstream.apps.leaves import APP
    from inferstream.apps.leaves.analysis import analysis
    from inferstream.apps.leaves.detect import DEFAULT_MODEL
    from inferstream.apps.leaves.field import check, expected_crops, read_records, send_photos
    from inferstream.apps.leaves.simulator import DISEASES, simulate
    from inferstream.blobs import open_blob_store
    from inferstream.bus import open_bus
    from inferstream.classify import load_model
    from inferstream.pipeline import load_pipeline
    from inferstream.store import ResultsStore
    from inferstream.testing import pipeline_threads

    say = (lambda *_: None) if settings.quiet else print
    # The store's schema migrations log each step at INFO; the progress lines matter here.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    work = settings.workdir.resolve()
    if settings.bus is None and settings.store is None:
        shutil.rmtree(work, ignore_errors=True)  # each run's figures are its own
    work.mkdir(parents=True, exist_ok=True)
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=settings.bus or f"sqlite:///{work / 'bus.db'}",
        store=settings.store or f"sqlite:///{work / 'results.db'}",
        blobs=f"file://{work / 'blobs'}",
    )
    photos = list(simulate(settings.positions, settings.days, settings.seed, settings.tenant))
    expected = expected_crops(photos, load_model(DEFAULT_MODEL))
    want = len(expected) * (len(DISEASES) + 1)
    say(f"{len(photos)} photos ({settings.positions} positions x {settings.days} days), "
        f"{len(expected)} leaves to grade; pipeline {spec.name!r} on {spec.bus}")  # fmt: skip
    store, bus = ResultsStore(spec.store), open_bus(spec.bus)
    started = time.monotonic()
    try:
        with pipeline_threads(spec):
            send_photos(bus, open_blob_store(spec.blobs), photos)
            _wait(store, settings.tenant, want, say)
        seconds = time.monotonic() - started
        grades = read_records(store, settings.tenant, "grade")
        leaves = read_records(store, settings.tenant, "leaf")
    finally:
        bus.close()
        store.close()
    result = check(photos, expected, grades, leaves)
    summary = {**asdict(result), "ok": result.ok, "seconds": round(seconds, 2),
               "records_per_s": round((len(grades) + len(leaves)) / seconds, 1),
               "analysis": analysis(grades)}  # fmt: skip
    _report(summary, settings.summary_json, say)
    return summary


def _wait(store: Any, tenant: str, want: int, say: Any) -> None:
    from inferstream.store import ResultFilter

    filters = ResultFilter(app="leaves")
    last, last_change = -1, time.monotonic()
    while True:
        have = store.count_results(tenant, filters)
        if have != last:
            say(f"  {have}/{want} records stored")
            last, last_change = have, time.monotonic()
        if have >= want:
            time.sleep(0.5)  # anything doubled would land now
            return
        if time.monotonic() - last_change > STALL_S:
            say(f"  no progress for {STALL_S:.0f}s; summarising what arrived")
            return
        time.sleep(0.5)


def _report(summary: dict[str, Any], path: Path | None, say: Any) -> None:
    say("\nsummary")
    for key, value in summary.items():
        if key not in ("analysis", "grade_accuracy"):
            say(f"  {key:20} {value:.4f}" if isinstance(value, float) else f"  {key:20} {value}")
    say("  grader accuracy     " + ", ".join(
        f"{d} {acc:.3f}" for d, acc in summary["grade_accuracy"].items()))  # fmt: skip
    say("\nmean grade per day, area and disease")
    cells = summary["analysis"]["cells"]
    for cell in cells:
        say(f"  {cell['date']} {cell['area']:8} {cell['disease']:7} {cell['mean_grade']:.2f}"
            f" ({cell['leaves']} leaves)")  # fmt: skip
    say("\ntrend (grade change per day): control vs treated")
    for disease, trend in summary["analysis"]["trends"].items():
        verdict = "treated heals faster" if trend["treated_heals_faster"] else "no faster healing"
        say(f"  {disease:7} {trend['control']:+.2f} vs {trend['treated']:+.2f}  {verdict}")
    if path is not None:
        path.write_text(json.dumps(summary, indent=2) + "\n")
        say(f"summary written to {path}")


def cmd_example_leaves(args: argparse.Namespace) -> int:
    settings = TrialSettings(
        positions=args.positions, days=args.days, seed=args.seed, tenant=args.tenant,
        workdir=Path(args.workdir), bus=args.bus, store=args.store,
        summary_json=Path(args.summary_json) if args.summary_json else None,
    )  # fmt: skip
    return 0 if run_trial(settings)["ok"] else 1


def add_example_command(kinds: Any) -> None:
    """Register ``inferstream example leaves`` (the ``example`` hook of the APP)."""
    leaves = kinds.add_parser(
        "leaves",
        help="Drone leaf-disease grading of a simulated field trial.",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    leaves.add_argument("--positions", type=int, default=4, help="GPS positions (default 4)")
    leaves.add_argument("--days", type=int, default=3, help="days of photos (default 3)")
    leaves.add_argument("--seed", type=int, default=0, help="simulator seed")
    add_run_arguments(leaves, "leaves", "demo-farm")
    leaves.set_defaults(handler=cmd_example_leaves)
