"""``inferstream example filedrop``: images dropped into a folder, labels that arrive
later, a model retrained and promoted while it runs. Registered through the
``example`` hook of the application's declaration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inferstream.examples import add_run_arguments, add_serve_arguments, lingers, serve_address


def cmd_example_filedrop(args: argparse.Namespace) -> int:
    # Imported here: every ``inferstream`` command registers this one, few run it.
    from inferstream.apps.filedrop.demo import DemoSettings, run_demo

    summary = run_demo(
        DemoSettings(
            workdir=Path(args.workdir),
            waves=args.waves,
            per_wave=args.per_wave,
            seed=args.seed,
            bus=args.bus,
            store=args.store,
            tenant=args.tenant,
            summary_json=Path(args.summary_json) if args.summary_json else None,
            serve=serve_address(args),
            linger=lingers(args),
        )
    )
    return 0 if summary.lost == 0 and summary.doubled == 0 else 1


def add_example_command(kinds: Any) -> None:
    """Register ``inferstream example filedrop`` (the ``example`` hook of :data:`APP`)."""
    command = kinds.add_parser(
        "filedrop",
        help="Images dropped into a folder; a model retrained and swapped while it runs.",
        description=(
            "Starts the file-drop pipeline (workers and trainer) and a folder watcher, "
            "then drops images in waves; each wave's labels arrive after it is stored. "
            "The shipped model is weak on purpose: watch the trainer register a better "
            "one as challenger, the policy promote it on the labels, and the workers "
            "switch, with no restart. Prints progress and a summary: files against "
            "records (lost, doubled), each version's accuracy, promotions and switches."
        ),
    )
    command.add_argument("--waves", type=int, default=3, help="waves of images (default 3)")
    command.add_argument(
        "--per-wave", type=int, default=300, help="images per wave (default 300; at least 150)"
    )
    command.add_argument("--seed", type=int, default=11, help="image seed (default 11)")
    add_run_arguments(command, "filedrop", "demo-drop")
    add_serve_arguments(command)
    command.set_defaults(handler=cmd_example_filedrop)
