"""``inferstream example imageops``: jobs through the API and the pipeline on the embedded
defaults, with progress and a summary (see :mod:`.demo`). Registered through the
``example`` hook of the application's declaration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inferstream.examples import add_run_arguments, add_serve_arguments, lingers


def cmd_example_imageops(args: argparse.Namespace) -> int:
    # Imported here: every ``inferstream`` command registers this one, few run it.
    from inferstream.apps.imageops.demo import DemoSettings, run_demo

    settings = DemoSettings(
        jobs=args.jobs,
        concurrency=args.concurrency,
        workdir=Path(args.workdir),
        bus=args.bus,
        store=args.store,
        tenant=args.tenant,
        serve=args.serve,
        summary_json=Path(args.summary_json) if args.summary_json else None,
        linger=lingers(args),
    )
    summary = run_demo(settings)
    return 0 if summary.lost == summary.doubled == summary.wrong == 0 else 1


def add_example_command(kinds: Any) -> None:
    """Register ``inferstream example imageops`` (the ``example`` hook of its APP)."""
    cmd = kinds.add_parser(
        "imageops",
        help="Resize, split and blur uploaded images as jobs over the API.",
        description=(
            "Submits jobs (512x512, 1024x1024 and 333x517 images, each job with the same "
            "file names, several actions documents) to the imageops API, which workers "
            "process through the bus; prints progress and a summary after checking every "
            "output by id against its operations: lost, doubled, wrong, throughput, latency."
        ),
    )
    cmd.add_argument("--jobs", type=int, default=20, help="jobs to submit (default 20)")
    cmd.add_argument("--concurrency", type=int, default=4, help="jobs sent at once (default 4)")
    add_run_arguments(cmd, "imageops", "demo-studio")
    add_serve_arguments(cmd, optional=False)  # the example drives its API
    cmd.set_defaults(handler=cmd_example_imageops)
