"""``inferstream example NAME``: each installed application's end-to-end example.

An application offers one through the ``example`` hook of its
:class:`~inferstream.application.AppSpec`, a function that adds its sub-command.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inferstream.application import installed_apps, load_ref


def add_example_commands(sub: Any) -> None:
    """Register ``inferstream example ...`` on the CLI's sub-parsers."""
    example = sub.add_parser(
        "example",
        help="Run an application's example pipeline end to end.",
        description="Run an installed application's example pipeline end to end here.",
    )
    kinds = example.add_subparsers(dest="example", required=True, metavar="EXAMPLE")
    for app in installed_apps().values():
        if app.example:
            load_ref(app.example, f"application {app.name!r} example")(kinds)
    for command in kinds.choices.values():
        command.set_defaults(handler=_stopping_on_sigterm(command.get_default("handler")))


def _stopping_on_sigterm(handler: Callable[[argparse.Namespace], int]) -> Any:
    """``handler``, with SIGTERM unwinding it like Ctrl-C: an example stops the pipeline
    it started in a ``finally`` (Python's default SIGTERM would leave it running)."""

    def run(args: argparse.Namespace) -> int:
        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
        return handler(args)

    return run


def add_run_arguments(command: Any, app: str, tenant: str) -> None:
    """The options every application's example shares: where it runs and for whom."""
    command.add_argument(
        "--workdir", default=f".inferstream/{app}", help="where its bus, results and blobs live"
    )
    command.add_argument("--bus", help="bus URL (default: embedded log in the workdir)")
    command.add_argument("--store", help="results store URL (default: SQLite in the workdir)")
    command.add_argument("--tenant", default=tenant, help=f"tenant of the data (default {tenant})")
    command.add_argument("--summary-json", metavar="FILE", help="write the summary as JSON")


def add_serve_arguments(command: Any, *, optional: bool = True) -> None:
    """Where an example's API and dashboard listen (``--no-serve``: none, where
    ``optional``), and whether it keeps running after its summary."""
    command.add_argument(
        "--serve", default="127.0.0.1:8000", metavar="HOST:PORT",
        help="where the API and live dashboard listen (default 127.0.0.1:8000)",
    )  # fmt: skip
    if optional:
        command.add_argument(
            "--no-serve", action="store_true", help="run without the API and dashboard"
        )
    command.add_argument(
        "--linger", action=argparse.BooleanOptionalAction, default=None,
        help="keep running after the summary until Ctrl-C (default: when run from a terminal)",
    )  # fmt: skip


def serve_address(args: argparse.Namespace) -> str | None:
    """``--serve``, or None with ``--no-serve``."""
    return None if getattr(args, "no_serve", False) else str(args.serve)


def lingers(args: argparse.Namespace) -> bool:
    """``--linger``, or by default whether the example runs from a terminal."""
    return bool(args.linger) if args.linger is not None else sys.stdin.isatty()


def fresh_workdir(workdir: Path, folders: tuple[str, ...] = ("blobs",)) -> None:
    """Each run starts from an empty embedded bus and store (``*.db*``, with their bell
    folders and locks) and without ``folders``, so its figures are its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    for path in workdir.glob("*.db*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for folder in folders:
        shutil.rmtree(workdir / folder, ignore_errors=True)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 60.0) -> None:
    """SIGTERM to each (they drain), then wait for them all."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=timeout_s)
