"""``inferstream example eggs``: the flagship end to end on the embedded defaults.

Simulated MRI scanners -> the eggs pipeline (``eggs.yaml`` beside this file) -> results
in SQLite, with a live progress line and a final summary. Registered through the
``example`` hook of the application's declaration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_example_eggs(args: argparse.Namespace) -> int:
    # Imported here: every ``inferstream`` command registers this one, few run it.
    from inferstream.apps.eggs.demo import DemoSettings, run_demo

    settings = DemoSettings(
        scans=args.scans,
        rate=args.rate,
        workdir=Path(args.workdir),
        bus=args.bus,
        store=args.store,
        summary_json=Path(args.summary_json) if args.summary_json else None,
        pool=args.pool,
        tenant=args.tenant,
        serve=None if args.no_serve else args.serve,
        linger=args.linger if args.linger is not None else sys.stdin.isatty(),
        scanners=args.scanners,
    )
    summary = run_demo(settings)
    return 0 if summary.lost == 0 and summary.duplicates == 0 else 1


def add_example_command(kinds: Any) -> None:
    """Register ``inferstream example eggs`` (the ``example`` hook of :data:`APP`)."""
    eggs = kinds.add_parser(
        "eggs",
        help="In-ovo sexing from simulated MRI scanners (the flagship).",
        description=(
            "Simulated MRI scanners send DICOM scans into the eggs pipeline (decode, "
            "preprocess, classify, store) running as supervised worker processes; prints "
            "live progress and a summary: lost, doubled, accuracy, throughput, latency."
        ),
    )
    eggs.add_argument("--scans", type=int, default=20000, help="scans to send (default 20000)")
    eggs.add_argument("--rate", type=float, default=1000.0, help="scans/s offered (default 1000)")
    eggs.add_argument("--pool", type=int, default=512, help="distinct scans rendered up front")
    eggs.add_argument("--scanners", type=int, default=8, help="virtual MRI scanners (default 8)")
    eggs.add_argument("--workdir", default=".inferstream/eggs", help="where bus and results live")
    eggs.add_argument("--bus", help="bus URL (default: embedded log in the workdir)")
    eggs.add_argument("--store", help="results store URL (default: SQLite in the workdir)")
    eggs.add_argument("--tenant", default="demo-hatchery", help="tenant of the scans")
    eggs.add_argument("--summary-json", metavar="FILE", help="write the summary as JSON")
    eggs.add_argument(
        "--serve", default="127.0.0.1:8000", metavar="HOST:PORT",
        help="where the API and live dashboard listen (default 127.0.0.1:8000)",
    )  # fmt: skip
    eggs.add_argument("--no-serve", action="store_true", help="run without the API and dashboard")
    eggs.add_argument(
        "--linger", action=argparse.BooleanOptionalAction, default=None,
        help="keep running after the summary until Ctrl-C (default: when run from a terminal)",
    )  # fmt: skip
    eggs.set_defaults(handler=cmd_example_eggs)
