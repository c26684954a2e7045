"""``inferstream example cameras``: the facility simulator, production and dev flows and
the later type service, end to end on the embedded defaults, with progress and a summary.
Registered through the ``example`` hook of the application's declaration.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inferstream.examples import add_run_arguments, add_serve_arguments, lingers, serve_address


def cmd_example_cameras(args: argparse.Namespace) -> int:
    # Imported here: every ``inferstream`` command registers this one, few run it.
    from inferstream.apps.cameras.demo import DemoSettings, run_demo

    settings = DemoSettings(
        duration_s=args.seconds,
        speed=args.speed,
        seed=args.seed,
        workdir=Path(args.workdir),
        bus=args.bus,
        store=args.store,
        tenant=args.tenant,
        summary_json=Path(args.summary_json) if args.summary_json else None,
        serve=serve_address(args),
        linger=lingers(args),
    )
    summary = run_demo(settings)
    return 0 if summary.lost == 0 and summary.doubled == 0 else 1


def add_example_command(kinds: Any) -> None:
    """Register ``inferstream example cameras`` (the ``example`` hook of :data:`APP`)."""
    cameras = kinds.add_parser(
        "cameras",
        help="Multi-camera facility state from a simulated locomotive depot.",
        description=(
            "Simulated cameras (some flaky, one that stops) watch locomotives on a depot's "
            "tracks; per-camera estimators and a windowed fusion keep the facility state. "
            "Runs the production flow, a dev flow beside it and a locomotive-type service "
            "on the same frames; prints progress and a summary: states lost and doubled, "
            "state accuracy against the simulator's truth, degraded windows, dev vs prod."
        ),
    )
    cameras.add_argument("--seconds", type=float, default=60.0, help="simulated seconds (60)")
    cameras.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per wall second (default 1: real time; 0: as fast as it goes)",
    )
    cameras.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    add_run_arguments(cameras, "cameras", "demo-depot")
    add_serve_arguments(cameras)
    cameras.set_defaults(handler=cmd_example_cameras)
