"""The ``inferstream`` command: validate, run and operate pipelines.

Every sub-command takes the pipeline file first; ``--bus``/``--store``/``--blobs``
override the URLs in it (environment variables the file refers to as ``${NAME}`` do
the same without flags). Errors print one clear line and exit with status 2;
``--help`` on any sub-command explains it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from inferstream.errors import InferstreamError
from inferstream.logs import log_level
from inferstream.pipeline import PipelineSpec, StageSpec, load_pipeline, wiring_warnings
from inferstream.tracing_config import add_otlp_option, export_to

if TYPE_CHECKING:
    from inferstream.admit import Admitter
    from inferstream.application import AppSpec
    from inferstream.bus import Bus

Handler = Callable[[argparse.Namespace], int]


def _load(args: argparse.Namespace) -> PipelineSpec:
    spec = load_pipeline(args.pipeline)
    return spec.with_urls(bus=args.bus, store=args.store, blobs=args.blobs)


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args)
    print(f"{args.pipeline}: pipeline {spec.name!r} is valid")
    for stage in spec.stages:
        steps = " -> ".join(_operator(stage) + [s.ref for s in stage.steps])
        print(f"  {stage.name}: {', '.join(stage.inputs)} -> [{steps}] -> "
              f"{_destinations(stage)}  x{stage.replicas}")  # fmt: skip
    for p in spec.promotions:
        print(f"  promotion: {p.model}@{p.challenger} replaces @{p.champion} when better "
              f"on {p.min_labels}+ labels (alpha {p.alpha}, margin {p.margin})")  # fmt: skip
    for r in spec.retraining:
        print(f"  retraining: {r.model}@{r.alias} learnt by {r.learner!r} every "
              f"{r.min_new_labels} new labels (a trainer process beside the workers)")  # fmt: skip
    for warning in wiring_warnings(spec):
        print(f"inferstream validate: warning: {warning}", file=sys.stderr)
    return 0


def _operator(stage: StageSpec) -> list[str]:
    if stage.join is not None:
        return [f"join by {stage.join.by}"]
    if stage.window is not None:
        return [f"{stage.window.kind} window"]
    return []


def _destinations(stage: StageSpec) -> str:
    if stage.routes:
        return "routes to " + ", ".join(stage.router.all_topics() or ("(nothing)",))
    return ", ".join(stage.outputs) or "(sink)"


def cmd_worker(args: argparse.Namespace) -> int:
    from inferstream.runner import run_stage

    spec = _load(args)
    export_to(args.otlp_endpoint)
    on_ready = None
    if args.metrics_port is not None:
        from functools import partial

        from inferstream.metrics import serve

        on_ready = partial(serve, args.metrics_port)  # once the topics and signals are set
    run_stage(spec, args.stage, args.replica, on_ready)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from inferstream.bus import open_bus
    from inferstream.runner import ensure_topics, housekeep
    from inferstream.supervisor import Supervisor, pipeline_children

    spec = _load(args)
    export_to(args.otlp_endpoint)  # the env every child starts with
    bus = open_bus(spec.bus)
    try:
        ensure_topics(bus, spec)
    finally:
        bus.close()
    children = pipeline_children(spec)
    if args.serve:
        from inferstream.supervisor import api_child

        share = ["--tenant-rate", str(args.tenant_rate)] if args.tenant_rate else []
        children.append(api_child(spec, args.serve, share))
    supervisor = Supervisor(
        children,
        drain_timeout_s=args.drain_timeout,
        housekeeping=lambda: housekeep(spec),
    )
    total = len(supervisor.children)
    print(f"running pipeline {spec.name!r}: {total} processes on {spec.bus}; Ctrl-C drains")
    supervisor.run()
    print("all workers drained and stopped")
    return supervisor.exit_code


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM: a long-running command's way to stop cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    return stop


def _admitter(spec: PipelineSpec, bus: Bus, topic: str, tenant: str) -> Admitter:
    """Items admitted into ``spec``'s ``topic`` as uploads are: its application's checks,
    its blob store and claim-check size."""
    from inferstream.admit import Admitter
    from inferstream.blob_crypto import open_blobs

    app = spec.application()
    return Admitter(bus, open_blobs(spec.blobs, spec.store), topic=topic, tenant=tenant, app=app,
                    claim_check_bytes=spec.claim_check_bytes)  # fmt: skip


def cmd_trainer(args: argparse.Namespace) -> int:
    from inferstream.retraining import run_trainer

    spec = _load(args)
    stop = _stop_on_signals()
    run_trainer(spec, once=args.once, stop=stop, say=lambda line: print(line, flush=True))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from inferstream.bus import open_bus
    from inferstream.folder_source import FolderSource, watch

    spec = _load(args)
    topic = args.topic or spec.stages[0].inputs[0]
    bus = open_bus(spec.bus)
    try:
        admitter = _admitter(spec, bus, topic, args.tenant)
        source = FolderSource(Path(args.folder), admitter, settle_s=args.settle)
        stop = _stop_on_signals()
        print(f"watching {args.folder} for {spec.name!r} (topic {topic}); Ctrl-C stops")
        watch(source, interval_s=args.interval, stop=stop,
              say=lambda line: print(line, flush=True))  # fmt: skip
    finally:
        bus.close()
    return 0


def cmd_dicom_receive(args: argparse.Namespace) -> int:
    from inferstream.bus import open_bus
    from inferstream.dicom_receiver import DicomReceiver, ReceiverSettings, parse_calling

    spec = _load(args)
    topic = args.topic or spec.stages[0].inputs[0]
    settings = ReceiverSettings(
        ae_title=args.ae_title, host=args.host, port=args.port,
        calling=parse_calling(args.calling), max_associations=args.max_associations,
        sop_classes=tuple(args.sop_class),
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
    )  # fmt: skip
    bus = open_bus(spec.bus)
    try:
        receiver = DicomReceiver(_admitter(spec, bus, topic, args.tenant), settings)
        stop = _stop_on_signals()
        receiver.start()
        print(
            f"DICOM receiver {settings.ae_title} on {settings.host}:{receiver.port} for "
            f"{spec.name!r} (topic {topic}, tenant {args.tenant}); Ctrl-C stops",
            flush=True,
        )
        while not stop.wait(60):
            c = receiver.counts
            print(f"stored {c.stored}, refused {c.refused}, failed {c.failed}", flush=True)
        receiver.stop()
    finally:
        bus.close()
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    import os

    from inferstream.application import app_named
    from inferstream.dicom_receiver import ReceiverSettings, parse_calling
    from inferstream.edge import EdgeSettings, run_edge
    from inferstream.errors import ConfigError

    key = os.environ.get("INFERSTREAM_API_KEY", "")
    if args.api_key_file:
        key = Path(args.api_key_file).read_text().strip()
    if (args.api is None) == (args.bus is None):
        raise ConfigError(
            "say where the centre is: --api URL (its HTTP API), or --bus kafka://... with "
            "--tenant (its bus, where a check_ingest stage checks what arrives)"
        )
    if args.bus is None and not key:
        raise ConfigError(
            "the edge agent needs the centre's API key of a device: set INFERSTREAM_API_KEY "
            "or --api-key-file FILE (inferstream admin create-key ... --role device)"
        )
    dicom = None
    if args.dicom_port is not None:
        calling = parse_calling(args.calling)
        dicom = ReceiverSettings(
            ae_title=args.ae_title, host=args.dicom_host, port=args.dicom_port, calling=calling
        )
    settings = EdgeSettings(
        buffer=Path(args.buffer), api=args.api or "", api_key=key, bus=args.bus,
        topic=args.topic, tenant=args.tenant or "",
        folder=Path(args.folder) if args.folder else None, dicom=dicom, batch=args.batch,
        report_s=args.report, deidentify=_deidentifier(args),
    )  # fmt: skip
    app = app_with_settings(app_named(args.app), args.settings)
    stop = _stop_on_signals()
    run_edge(settings, app, stop, say=lambda line: print(line, flush=True))
    return 0


def _deidentifier(args: argparse.Namespace) -> Callable[[bytes], bytes] | None:
    import os

    from inferstream.deidentify import Deidentifier
    from inferstream.errors import ConfigError

    if not args.deidentify:
        return None
    seed = os.environ.get("INFERSTREAM_DEID_SEED", "")
    if args.deid_seed_file:
        seed = Path(args.deid_seed_file).read_text().strip()
    if not seed:
        raise ConfigError(
            "--deidentify needs the site's secret seed (it decides every pseudonym, the same "
            "across restarts): set INFERSTREAM_DEID_SEED or --deid-seed-file FILE"
        )
    return Deidentifier(seed, keep=args.deid_keep)


def app_with_settings(app: AppSpec, path: str | None) -> AppSpec:
    """``app`` with an installation's settings read from ``path``: a YAML file of them,
    or a pipeline file (its ``settings:`` section), so the edge checks as the centre."""
    import yaml

    from inferstream.errors import ConfigError

    if path is None:
        return app
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--settings {path}: cannot read it: {exc}") from exc
    if isinstance(raw, dict) and "stages" in raw:
        raw = raw.get("settings") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"--settings {path}: expected a mapping of the application's settings")
    return app.with_settings(raw)


def cmd_housekeep(args: argparse.Namespace) -> int:
    from inferstream.runner import housekeep

    for line in housekeep(_load(args)):
        print(line)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from inferstream.store import ResultsStore

    with ResultsStore(_load(args).store, migrate=False) as store:
        done = store.migrate()
    if done.newer:
        print(f"{store.url}: at revision {done.after}, newer than this release's {done.head} "
              "(a newer release migrated it); nothing to do")  # fmt: skip
    elif done.before == done.after:
        print(f"{store.url}: already at revision {done.after}")
    else:
        print(f"{store.url}: migrated from {done.before or 'an empty database'} to {done.after}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from inferstream.bus import open_bus

    spec = _load(args)
    bus = open_bus(spec.bus)
    try:
        print(f"{'topic':32} {'partitions':>10} {'messages':>10}  group lag")
        for topic, count in sorted(bus.topics().items()):
            parts = bus.partitions(topic)
            retained = sum(p.high - p.low for p in parts)
            groups = [s.group(spec.name) for s in spec.stages if topic in s.inputs]
            lags = [f"{g}={sum(p.lag for p in bus.partitions(topic, g))}" for g in groups]
            print(f"{topic:32} {count:>10} {retained:>10}  {' '.join(lags) or '-'}")
    finally:
        bus.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from inferstream.bus import open_bus, seek_target
    from inferstream.stage_replay import replay_stage_in_store

    spec = _load(args)
    stage = spec.stage(args.stage)
    topics = [args.topic] if args.topic else list(stage.inputs)
    target = seek_target(args.to)
    bus = open_bus(spec.bus)
    try:
        replay_stage_in_store(
            bus, spec.store, group=stage.group(spec.name), topics=topics, target=target,
            timeout_s=args.timeout, progress=print,
        )  # fmt: skip
    finally:
        bus.close()
    return 0


def _add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML file")
    parser.add_argument(
        "--bus", help="bus URL, overrides the file (sqlite:///… or kafka://host:port)"
    )
    parser.add_argument("--store", help="results store URL, overrides the file")
    parser.add_argument("--blobs", help="blob store URL, overrides the file (file:///folder)")


def _add_source_commands(add: Callable[[str, Handler, str], argparse.ArgumentParser]) -> None:
    """Where data and models come from beside the API: a watched folder, a DICOM
    receiver, and the trainer."""
    watcher = add(
        "watch",
        cmd_watch,
        "Send files dropped into a folder to a pipeline: each checked like an upload, "
        "then moved to done/ (or rejected/ with the reason beside it).",
    )
    watcher.add_argument("folder", help="the folder to watch (done/ and rejected/ made in it)")
    _add_pipeline_args(watcher)
    watcher.add_argument(
        "--topic", help="topic to send to (default: the first stage's first input)"
    )
    watcher.add_argument("--tenant", default="default", help="tenant the files belong to")
    watcher.add_argument(
        "--interval", type=float, default=0.5, metavar="S", help="seconds between looks (0.5)"
    )
    watcher.add_argument(
        "--settle",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds a file must hold still before it is taken, so a copy in progress is "
        "not (0.5)",
    )
    receive = add(
        "dicom-receive",
        cmd_dicom_receive,
        "Receive DICOM from scanners (a storage SCP: C-ECHO, C-STORE) into a pipeline; "
        "each instance checked like an upload, refused ones answered with the reason.",
    )
    _add_pipeline_args(receive)
    receive.add_argument("--ae-title", default="INFERSTREAM", help="our AE title (INFERSTREAM)")
    receive.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    receive.add_argument("--port", type=int, default=11112, help="port to listen on (11112)")
    receive.add_argument(
        "--calling",
        action="append",
        default=[],
        metavar="AE",
        help="a scanner's AE title allowed to send (repeat; default: any)",
    )
    receive.add_argument(
        "--max-associations", type=int, default=10, help="associations at once (10)"
    )
    receive.add_argument(
        "--sop-class",
        action="append",
        default=[],
        metavar="UID|KEYWORD",
        help="a storage SOP class accepted, e.g. MRImageStorage (repeat; default: all)",
    )
    receive.add_argument("--tenant", default="default", help="tenant the scans belong to")
    receive.add_argument("--topic", help="topic to send to (default: the first stage's input)")
    receive.add_argument("--tls-cert", metavar="PEM", help="TLS: our certificate")
    receive.add_argument("--tls-key", metavar="PEM", help="TLS: its private key")
    receive.add_argument(
        "--tls-ca", metavar="PEM", help="TLS: require scanners' certificates signed by this CA"
    )
    edge = add(
        "edge",
        cmd_edge,
        "Run beside a scanner: a watched folder and/or a DICOM receiver into a local "
        "durable buffer, forwarded to the central API; nothing lost across an uplink "
        "outage or a crash; reports its backlog.",
    )
    edge.add_argument(
        "--app", required=True,
        help="the installed application the scans are for ('inferstream example --help' "
        "lists them); its checks run at the edge",
    )  # fmt: skip
    edge.add_argument(
        "--settings", metavar="YAML",
        help="the installation's settings of the application (its tag mapping, say): a YAML "
        "file of them, or the centre's pipeline file (its settings: section)",
    )  # fmt: skip
    edge.add_argument("--api", help="the central API, e.g. https://centre:8000")
    edge.add_argument(
        "--bus", metavar="URL",
        help="instead of the API, the central bus (kafka://broker:9092): a check_ingest "
        "stage there checks what arrives (docs/sources.md)",
    )  # fmt: skip
    edge.add_argument("--topic", default="scans.edge", help="its topic (scans.edge)")
    edge.add_argument("--tenant", help="with --bus: the tenant the scans are for")
    edge.add_argument(
        "--api-key-file", metavar="FILE",
        help="a device API key of the centre (default: $INFERSTREAM_API_KEY)",
    )  # fmt: skip
    edge.add_argument(
        "--buffer",
        default=".inferstream/edge",
        help="the local buffer's folder (.inferstream/edge)",
    )
    edge.add_argument("--folder", help="a folder to watch (done/ and rejected/ made in it)")
    edge.add_argument("--dicom-port", type=int, help="run the DICOM receiver on this port")
    edge.add_argument("--dicom-host", default="0.0.0.0", help="its address (0.0.0.0)")
    edge.add_argument("--ae-title", default="INFERSTREAM", help="its AE title (INFERSTREAM)")
    edge.add_argument(
        "--calling", action="append", default=[], metavar="AE",
        help="a scanner's AE title allowed to send (repeat; default: any)",
    )  # fmt: skip
    edge.add_argument(
        "--deidentify", action="store_true",
        help="de-identify every DICOM file before it is buffered (PS3.15 basic profile: "
        "names replaced, ids and UIDs pseudonymised, dates shifted, all from the site's "
        "secret seed: $INFERSTREAM_DEID_SEED or --deid-seed-file)",
    )  # fmt: skip
    edge.add_argument("--deid-seed-file", metavar="FILE", help="the secret seed, in a file")
    edge.add_argument(
        "--deid-keep", action="append", default=[], metavar="KEYWORD",
        help="a DICOM element to keep as it is (repeat), e.g. StationName",
    )  # fmt: skip
    edge.add_argument("--batch", type=int, default=64, help="scans a request (64)")
    edge.add_argument(
        "--report", type=float, default=10.0, metavar="S", help="seconds between reports (10)"
    )
    trainer = add(
        "trainer",
        cmd_trainer,
        "Retrain the file's models as labels arrive (its retraining: section), register each "
        "new version as the challenger and run its promotion policies; 'up' runs it.",
    )
    _add_pipeline_args(trainer)
    trainer.add_argument(
        "--once", action="store_true", help="one round (retrain if due, promote), then exit"
    )


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
    up.add_argument(
        "--tenant-rate", type=float, metavar="SCANS_PER_S",
        help="with --serve: scans/s one tenant may send (its share; see serve --tenant-rate)",
    )  # fmt: skip
    add_otlp_option(up)
    worker = add("worker", cmd_worker, "Run one stage in this process (one replica, for clusters).")
    _add_pipeline_args(worker)
    worker.add_argument("--stage", required=True, help="stage name from the pipeline file")
    worker.add_argument(
        "--replica", type=int, default=0, help="replica number, for logs (default 0)"
    )
    worker.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="serve this worker's Prometheus metrics at http://0.0.0.0:PORT/metrics (on a "
        "cluster, where no supervisor gathers them for the API; default: off)",
    )  # fmt: skip
    add_otlp_option(worker)
    _add_pipeline_args(add("topics", cmd_topics, "List topics, partitions and consumer-group lag."))
    _add_pipeline_args(
        add(
            "housekeep",
            cmd_housekeep,
            "Run the pipeline's chores once: the tenants' stored retention policies, topic "
            "retention (no longer than the shortest policy) and its application's own (e.g. "
            "purging expired outputs); 'up' runs them every minute.",
        )
    )
    _add_pipeline_args(
        add(
            "migrate",
            cmd_migrate,
            "Bring the store's schema to this release's newest revision, then exit (the "
            "first step of an upgrade; every process also does it when it opens the store).",
        )
    )
    _add_source_commands(add)
    replay = add(
        "replay",
        cmd_replay,
        "Make a stage reprocess from a point in its input while it runs (no restart).",
    )
    _add_pipeline_args(replay)
    replay.add_argument("--stage", required=True, help="stage whose group to move")
    replay.add_argument("--to", required=True, help="earliest | latest | OFFSET | ISO-8601 time")
    replay.add_argument("--topic", help="one topic to move on (default: every input of the stage)")
    replay.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds the stage's workers get to pause; if one does not, nothing moves and "
        "they resume where they were (default 60)",
    )
    from inferstream.examples import add_example_commands

    add_example_commands(sub)
    from inferstream.analytics.cli import add_analytics_commands
    from inferstream.api.cli import add_api_commands
    from inferstream.keys_cli import add_keys_commands
    from inferstream.lifecycle_cli import add_lifecycle_commands
    from inferstream.registry_cli import add_models_commands
    from inferstream.retention_cli import add_retention_commands
    from inferstream.sharing_cli import add_grants_commands

    add_api_commands(sub)
    add_models_commands(sub)
    add_keys_commands(sub)
    add_grants_commands(sub)
    add_analytics_commands(sub)
    add_lifecycle_commands(sub)
    add_retention_commands(sub)
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
