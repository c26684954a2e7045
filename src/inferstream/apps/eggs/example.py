"""``inferstream example eggs``: the flagship end to end on the embedded defaults.

Simulated MRI scanners -> the eggs pipeline (``eggs.yaml`` beside this file) -> results
in SQLite, with a live progress line and a final summary. Registered through the
``example`` hook of the application's declaration.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inferstream.examples import add_run_arguments, add_serve_arguments, lingers, serve_address


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
        serve=serve_address(args),
        linger=lingers(args),
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
    add_run_arguments(eggs, "eggs", "demo-hatchery")
    add_serve_arguments(eggs)
    eggs.set_defaults(handler=cmd_example_eggs)
