"""``inferstream models ...``: the model registry from the command line.

Each command takes the pipeline file whose store and blob store hold the registry (the
same ``--store``/``--blobs`` overrides as every command). The CLI acts for the
deployment: what it registers, every tenant may use; ``--tenant`` acts for one tenant
instead (its private models). Every change is written to the audit log with the
``--reason`` given and the user running the command.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inferstream.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]


def _registry(args: argparse.Namespace) -> Any:
    from inferstream.blob_crypto import open_blobs
    from inferstream.pipeline import load_pipeline
    from inferstream.registry import ModelRegistry
    from inferstream.store import ResultsStore

    spec = load_pipeline(args.pipeline).with_urls(store=args.store, blobs=args.blobs)
    store = ResultsStore(spec.store)
    return ModelRegistry(store, open_blobs(spec.blobs, store)), spec


def _actor() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def _when(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_register(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    try:
        version = registry.register_files(
            Path(args.file), actor=_actor(), tenant=args.tenant, reason=args.reason or ""
        )
        print(f"registered {version.name} {version.version} (sha256 {version.sha256[:12]}...)")
        if args.alias:
            registry.set_alias(
                version.name, args.alias, version.version, actor=_actor(),
                reason=args.reason or "registered", tenant=args.tenant,
            )  # fmt: skip
            print(f"{version.name}@{args.alias} -> {version.version}")
    finally:
        registry.store.close()
    return 0


def cmd_shipped(args: argparse.Namespace) -> int:
    """Register the models the pipeline's application ships, and point the alias of each
    where it points nowhere yet at the version the application serves by default (an
    existing alias is left alone)."""
    from inferstream.application import app_named
    from inferstream.shipped import versions_in

    registry, spec = _registry(args)
    if not spec.app:
        raise ConfigError(f"pipeline {spec.name!r} names no application (app: ...)")
    try:
        for name, shipped in versions_in(app_named(spec.app).models_dir).items():
            for each in shipped:
                registry.register_files(each.path, actor=_actor(), reason="shipped model")
            _point_at_shipped(registry, name, shipped, args.alias)
    finally:
        registry.store.close()
    return 0


def _point_at_shipped(registry: Any, name: str, shipped: list[Any], alias: str) -> None:
    """Point ``name@alias`` at the version served by default, unless it points somewhere;
    print a line per version."""
    from inferstream.registry import RegistryError
    from inferstream.shipped import served_by_default

    try:
        current, moved = registry.resolve(name, alias).version, False
    except RegistryError:
        current, moved = served_by_default(shipped).version, True
        registry.set_alias(name, alias, current, actor=_actor(), reason="shipped model")
    for each in shipped:
        where = f"; @{alias} stays at {current}" if not moved else ""
        if moved and each.version == current:
            where = f", @{alias}"
        print(f"{name} {each.version}: registered{where}")


def cmd_list(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    try:
        versions = registry.versions(args.name, tenant=args.tenant)
        aliases = registry.aliases(args.name, tenant=args.tenant)
    finally:
        registry.store.close()
    pointed: dict[tuple[str, str, str], list[str]] = {}
    for alias in aliases:
        pointed.setdefault((alias.owner, alias.name, alias.version), []).append(alias.alias)
    if args.json:
        print(json.dumps([
            {**v.to_dict(), "aliases": pointed.get((v.owner, v.name, v.version), [])}
            for v in versions
        ], indent=2))  # fmt: skip
        return 0
    if not versions:
        print("no models registered; add one: inferstream models register PIPELINE FILE.onnx")
        return 0
    print(f"{'MODEL':<22} {'VERSION':<14} {'OWNER':<12} {'ALIASES':<24} REGISTERED")
    for v in versions:
        names = ",".join(pointed.get((v.owner, v.name, v.version), [])) or "-"
        print(f"{v.name:<22} {v.version:<14} {v.owner or '(deployment)':<12} {names:<24} "
              f"{_when(v.registered_at_us)} by {v.registered_by}")  # fmt: skip
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    try:
        registry.set_alias(args.name, args.alias, args.version, actor=_actor(),
                           reason=args.reason, tenant=args.tenant)  # fmt: skip
    finally:
        registry.store.close()
    print(f"{args.name}@{args.alias} -> {args.version}; workers serving it switch within "
          "their refresh (2 s by default), between batches")  # fmt: skip
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    try:
        moved = registry.rollback(args.name, args.alias, actor=_actor(), reason=args.reason,
                                  tenant=args.tenant)  # fmt: skip
    finally:
        registry.store.close()
    print(f"{args.name}@{args.alias} -> {moved.version} (rolled back)")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    registry, _ = _registry(args)
    try:
        entries = registry.history(args.name, tenant=args.tenant)
        switches = registry.switches(args.name)
    finally:
        registry.store.close()
    for e in reversed(entries):
        change = f"{e.from_version or '-'} -> {e.to_version or '-'}"
        where = f"@{e.alias} " if e.alias else ""
        print(f"{_when(e.at_us)}  {e.action:<8} {where}{change}  by {e.actor}: {e.reason}")
    for s in switches:
        print(f"{_when(s.at_us)}  switch   {s.pipeline}/{s.stage} {s.worker} @{s.alias} "
              f"{s.from_version} -> {s.to_version} at {json.dumps(s.positions)}")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Compare the challenger with the champion on labelled records; with --decide,
    apply the policy (promote, keep or wait: each in the audit log)."""
    from inferstream.application import app_named
    from inferstream.promotion import Policy, apply_decision, compare

    registry, spec = _registry(args)
    try:
        if not spec.app:
            raise ConfigError(f"pipeline {spec.name!r} names no application (app: ...)")
        app = app_named(spec.app)
        head = args.head or (app.first_head.name if app.first_head else "")
        champion = registry.resolve(args.name, args.champion)
        challenger = registry.resolve(args.name, args.challenger)
        comparison = compare(
            registry.store, args.labels_from, app=app.name, head=head, name=args.name,
            champion=champion.version, challenger=challenger.version,
        )  # fmt: skip
        policy = Policy(args.min_labels, args.alpha, args.margin)
        decision, why = policy.decide(comparison)
        if args.decide:
            apply_decision(registry, comparison, policy, actor=_actor(), alias=args.champion)
    finally:
        registry.store.close()
    if args.json:
        print(json.dumps({**comparison.to_dict(), "decision": decision, "why": why,
                          "applied": bool(args.decide)}, indent=2))  # fmt: skip
        return 0
    print(comparison.figures())
    if comparison.champion_calibration is not None:
        print(f"  calibration error (ECE): champion {comparison.champion_calibration:.3f}, "
              f"challenger {comparison.challenger_calibration or 0.0:.3f}")  # fmt: skip
    for label, (n, a, b) in comparison.per_class.items():
        print(f"  {label:<16} {n:6d} labelled: champion {a / n:.3f}, challenger {b / n:.3f}")
    applied = "" if args.decide else " (not applied: add --decide)"
    print(f"decision: {decision}{applied}: {why}")
    return 0


def cmd_replay_diff(args: argparse.Namespace) -> int:
    """Replay a stage's retained input through another version and report the diff."""
    from inferstream.bus import open_bus
    from inferstream.replay_diff import replay_diff
    from inferstream.runner import build_steps

    registry, spec = _registry(args)
    spec = spec.with_urls(bus=args.bus)
    bus = open_bus(spec.bus)
    stage = spec.stage(args.stage)
    steps = build_steps(spec, stage, f"replay-diff-{socket.gethostname()}")
    try:
        since, until = (_time_us(t) if t else None for t in (args.since, args.until))
        report = replay_diff(
            spec, stage.name, args.version, bus=bus, store=registry.store, registry=registry,
            steps=steps, since_us=since, until_us=until, output_topic=args.output_topic,
            progress=lambda line: print(line, flush=True),
        )  # fmt: skip
    finally:
        for step in steps:
            step.close()
        bus.close()
        registry.store.close()
    Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    Path(args.html).write_text(report.to_html())
    print(f"{report.compared} compared, {report.agreed} agree ({report.agreement:.1%}), "
          f"{len(report.changed)} changed; report: {args.json}, {args.html}")  # fmt: skip
    return 0


def _time_us(text: str) -> int:
    """An ISO-8601 time with its zone, in microseconds since the epoch."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--since/--until: {text!r} is not an ISO-8601 time") from exc
    if when.tzinfo is None:
        raise ConfigError(f"--since/--until: {text!r} has no time zone; add one, e.g. +00:00")
    return int(when.timestamp() * 1_000_000)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML file whose store holds the registry")
    parser.add_argument("--store", help="results store URL, overrides the file")
    parser.add_argument("--blobs", help="blob store URL, overrides the file")
    parser.add_argument("--tenant", help="act for this tenant (its private models)")


def add_models_commands(sub: Any) -> None:
    """``inferstream models ...``."""
    text = "The model registry: register versions, move and roll back aliases, audit."
    models = sub.add_parser("models", help=text, description=__doc__)
    verbs = models.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(
            name, help=help_text, description=help_text
        )
        parser.set_defaults(handler=handler)
        _common(parser)
        return parser

    register = verb("register", cmd_register, "Register NAME.onnx (with NAME.json beside it).")
    register.add_argument("file", help="the model's .onnx file; its .json must be beside it")
    register.add_argument("--alias", help="also point this alias at it (e.g. challenger)")
    register.add_argument("--reason", help="why (kept in the audit log)")
    shipped = verb(
        "shipped",
        cmd_shipped,
        "Register the models the pipeline's application ships; point --alias at each "
        "where it points nowhere yet.",
    )
    shipped.add_argument("--alias", default="champion", help="alias to set (default champion)")
    listing = verb("list", cmd_list, "List versions and the aliases pointing at them.")
    listing.add_argument("name", nargs="?", help="one model (default: all)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    alias = verb("alias", cmd_alias, "Point NAME@ALIAS at VERSION (workers follow it).")
    alias.add_argument("name")
    alias.add_argument("alias", help="champion, challenger, shadow, or any name")
    alias.add_argument("version")
    alias.add_argument("--reason", required=True, help="why (kept in the audit log)")
    rollback = verb("rollback", cmd_rollback, "Point NAME@ALIAS back where it was before.")
    rollback.add_argument("name")
    rollback.add_argument("alias")
    rollback.add_argument("--reason", required=True, help="why (kept in the audit log)")
    history = verb("history", cmd_history, "The audit trail of NAME, and workers' switches.")
    history.add_argument("name")
    evaluate = verb(
        "evaluate",
        cmd_evaluate,
        "Compare NAME@challenger with NAME@champion on records both scored that feedback "
        "has labelled (paired: McNemar's exact test); --decide applies the policy.",
    )
    evaluate.add_argument("name")
    evaluate.add_argument(
        "--labels-from", action="append", required=True, metavar="TENANT",
        help="a tenant whose labelled records count (repeat for more)",
    )  # fmt: skip
    evaluate.add_argument("--head", help="the prediction head (default: the app's first)")
    evaluate.add_argument("--champion", default="champion", help="alias of the champion")
    evaluate.add_argument("--challenger", default="challenger", help="alias of the challenger")
    evaluate.add_argument("--min-labels", type=int, default=200, help="labels needed (200)")
    evaluate.add_argument("--alpha", type=float, default=0.05, help="significance (0.05)")
    evaluate.add_argument("--margin", type=float, default=0.0,
                          help="accuracy the challenger must gain at least (0)")  # fmt: skip
    evaluate.add_argument("--decide", action="store_true",
                          help="apply: promote (move the champion alias), keep or wait; "
                          "each decision is written to the audit log with its figures")  # fmt: skip
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    diff = verb(
        "replay-diff",
        cmd_replay_diff,
        "Run a stage's retained input through another version of its model and report "
        "what changes against the stored records (JSON and HTML); the stage keeps running.",
    )
    diff.add_argument("--stage", required=True, help="the stage whose classify step to vary")
    diff.add_argument("--version", required=True, help="the registered version to replay with")
    diff.add_argument("--since", help="only events from this ISO-8601 time")
    diff.add_argument("--until", help="only events before this ISO-8601 time")
    diff.add_argument("--output-topic", help="also write the replayed outputs here (isolated)")
    diff.add_argument("--bus", help="bus URL, overrides the file")
    diff.add_argument("--json", default="replay-diff.json", help="report file (JSON)")
    diff.add_argument("--html", default="replay-diff.html", help="report page (HTML)")


__all__ = ["add_models_commands"]
