"""The ``inferstream`` command: validate, run and operate pipelines.

Every sub-command takes the pipeline file first; ``--bus``/``--store``/``--blobs``
override the URLs in it (environment variables the file refers to as ``${NAME}`` do
the same without flags). Errors print one clear line and exit with status 2;
``--help`` on any sub-command explains it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from inferstream.errors import InferstreamError
from inferstream.logs import log_level
from inferstream.pipeline import PipelineSpec, load_pipeline, wiring_warnings

Handler = Callable[[argparse.Namespace], int]


def _load(args: argparse.Namespace) -> PipelineSpec:
    spec = load_pipeline(args.pipeline)
    return spec.with_urls(bus=args.bus, store=args.store, blobs=args.blobs)


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args)
    print(f"{args.pipeline}: pipeline {spec.name!r} is valid")
    for stage in spec.stages:
        steps = " -> ".join(s.ref for s in stage.steps)
        print(f"  {stage.name}: {stage.input} -> [{steps}] -> {stage.output or '(sink)'}"
              f"  x{stage.replicas}")  # fmt: skip
    for warning in wiring_warnings(spec):
        print(f"inferstream validate: warning: {warning}", file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from inferstream.runner import run_stage

    run_stage(_load(args), args.stage, args.replica)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from inferstream.bus import open_bus
    from inferstream.runner import apply_retention, ensure_topics
    from inferstream.supervisor import Supervisor, pipeline_children

    spec = _load(args)
    bus = open_bus(spec.bus)
    try:
        ensure_topics(bus, spec)
    finally:
        bus.close()
    children = pipeline_children(spec)
    if args.serve:
        from inferstream.supervisor import api_child

        children.append(api_child(spec, args.serve))
    supervisor = Supervisor(
        children,
        drain_timeout_s=args.drain_timeout,
        housekeeping=lambda: apply_retention(spec),
    )
    total = len(supervisor.children)
    print(f"running pipeline {spec.name!r}: {total} worker processes on {spec.bus}; Ctrl-C drains")
    supervisor.run()
    print("all workers drained and stopped")
    return supervisor.exit_code


def cmd_topics(args: argparse.Namespace) -> int:
    from inferstream.bus import open_bus

    spec = _load(args)
    bus = open_bus(spec.bus)
    try:
        print(f"{'topic':32} {'partitions':>10} {'messages':>10}  group lag")
        for topic, count in sorted(bus.topics().items()):
            parts = bus.partitions(topic)
            retained = sum(p.high - p.low for p in parts)
            groups = [s.group(spec.name) for s in spec.stages if s.input == topic]
            lags = [f"{g}={sum(p.lag for p in bus.partitions(topic, g))}" for g in groups]
            print(f"{topic:32} {count:>10} {retained:>10}  {' '.join(lags) or '-'}")
    finally:
        bus.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from inferstream.bus import open_bus, seek_target

    spec = _load(args)
    stage = spec.stage(args.stage)
    topic = args.topic or stage.input
    target = seek_target(args.to)
    bus = open_bus(spec.bus)
    try:
        bus.seek_group(stage.group(spec.name), topic, target)
    finally:
        bus.close()
    print(f"group {stage.group(spec.name)} on {topic} moved to {args.to}; "
          f"restart the stage's workers to reprocess")  # fmt: skip
    return 0


def _add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML file")
    parser.add_argument(
        "--bus", help="bus URL, overrides the file (sqlite:///… or kafka://host:port)"
    )
    parser.add_argument("--store", help="results store URL, overrides the file")
    parser.add_argument("--blobs", help="blob store URL, overrides the file (file:///folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferstream",
        description="Run trained image models as near-real-time, event-driven pipelines.",
        epilog="Start with: inferstream example --help   (each application's example, end "
        "to end, no servers)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(handler=handler)
        return cmd

    _add_pipeline_args(add("validate", cmd_validate, "Check a pipeline file and print its stages."))
    up = add("up", cmd_up, "Run every stage as supervised processes; Ctrl-C drains cleanly.")
    _add_pipeline_args(up)
    up.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds workers get to finish their batch on shutdown (default 30)",
    )
    up.add_argument(
        "--serve",
        metavar="HOST:PORT",
        help="also run the service API on HOST:PORT (e.g. 127.0.0.1:8000), supervised",
    )
    worker = add("worker", cmd_worker, "Run one stage in this process (one replica, for clusters).")
    _add_pipeline_args(worker)
    worker.add_argument("--stage", required=True, help="stage name from the pipeline file")
    worker.add_argument(
        "--replica", type=int, default=0, help="replica number, for logs (default 0)"
    )
    _add_pipeline_args(add("topics", cmd_topics, "List topics, partitions and consumer-group lag."))
    replay = add("replay", cmd_replay, "Move a stage's consumer group to reprocess old events.")
    _add_pipeline_args(replay)
    replay.add_argument("--stage", required=True, help="stage whose group to move")
    replay.add_argument("--to", required=True, help="earliest | latest | OFFSET | ISO-8601 time")
    replay.add_argument("--topic", help="topic to move on (default: the stage's input)")
    from inferstream.examples import add_example_commands

    add_example_commands(sub)
    from inferstream.api.cli import add_api_commands

    add_api_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=log_level(args.verbose),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except InferstreamError as exc:
        print(f"inferstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
