"""Run one stage of a pipeline in this process: the body of ``inferstream worker``.

Builds the stage's steps from the pipeline spec, makes sure its topics exist,
installs SIGTERM/SIGINT handlers that drain (finish the batch in hand, commit,
leave the group) and runs the :class:`~inferstream.worker.StageWorker` loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from inferstream.application import load_ref
from inferstream.blob_crypto import open_blobs
from inferstream.bus import Bus, RetentionPolicy, open_bus
from inferstream.errors import ConfigError
from inferstream.heap import settle
from inferstream.pipeline import PipelineSpec, StageSpec
from inferstream.replays import ReplayBoard, ReplayWatch
from inferstream.steps import ConditionalStep, Step, StepContext, build_step
from inferstream.tracing import NO_TRACING, Tracing
from inferstream.worker import StageWorker

if TYPE_CHECKING:
    from inferstream.dataflow.operator import Operator

log = logging.getLogger(__name__)


def pipeline_topics(spec: PipelineSpec) -> dict[str, int]:
    """Every topic the pipeline uses, dead-letter topics included, with its partitions."""
    topics: dict[str, int] = {}
    for stage in spec.stages:
        for topic in stage.inputs:
            suffixes = ("", ".dlq", ".late") if stage.stateful else ("", ".dlq")
            for suffix in suffixes:
                topics[topic + suffix] = spec.partitions(topic + suffix)
        for topic in stage.router.all_topics():
            topics[topic] = spec.partitions(topic)
    return topics


def ensure_topics(bus: Bus, spec: PipelineSpec) -> None:
    """Create every topic the pipeline uses (idempotent), dead-letter topics included."""
    for topic, partitions in pipeline_topics(spec).items():
        bus.create_topic(topic, partitions)


def topic_retention(
    spec: PipelineSpec, existing: Iterable[str], longest_s: float | None = None
) -> dict[str, RetentionPolicy]:
    """Each topic's retention: the pipeline file's; with ``longest_s`` (the shortest
    tenant's policy) no topic of the pipeline among ``existing`` keeps a message longer.
    Topics are shared by every tenant, so a tenant's messages cannot be dropped alone."""
    policies = dict(spec.retention)
    if longest_s is None:
        return policies
    for topic in set(pipeline_topics(spec)).intersection(existing) | set(spec.retention):
        policy = policies.get(topic, RetentionPolicy())
        if policy.max_age_s is None or longest_s < policy.max_age_s:
            policies[topic] = dataclasses.replace(policy, max_age_s=longest_s)
    return policies


#: Tenants' retention policies cap the shared topics, never below this many hours (a
#: week): a tenant admin's one-day policy must not drop every tenant's messages that an
#: outage left unconsumed. ``0`` lets the shortest policy cap them (docs/data-lifecycle.md).
TOPIC_FLOOR_ENV = "INFERSTREAM_TOPIC_RETENTION_FLOOR_HOURS"
TOPIC_FLOOR_HOURS = 168.0


def tenant_topic_cap(shortest_s: float | None, env: Mapping[str, str] = os.environ) -> float | None:
    """How long the pipeline's topics may keep a message, given the shortest tenant
    policy (None: no policy, no cap): that policy, or the floor when it is longer."""
    if shortest_s is None:
        return None
    raw = env.get(TOPIC_FLOOR_ENV, "").strip()
    try:
        hours = float(raw) if raw else TOPIC_FLOOR_HOURS
    except ValueError:
        hours = math.nan
    if not math.isfinite(hours) or hours < 0:
        raise ConfigError(
            f"{TOPIC_FLOOR_ENV}={raw!r}: give hours, 0 or more ({TOPIC_FLOOR_HOURS:g}, "
            "a week, when unset; 0 lets the shortest tenant retention cap the topics)"
        )
    return max(shortest_s, hours * 3600.0)


def apply_retention(spec: PipelineSpec, longest_s: float | None = None) -> int:
    """Drop what the pipeline's retention settings no longer keep, and with ``longest_s``
    what is older than that on any of its topics; return how many messages."""
    if not spec.retention and longest_s is None:
        return 0
    bus = open_bus(spec.bus)
    try:
        policies = topic_retention(spec, bus.topics(), longest_s)
        return sum(bus.apply_retention(topic, policy) for topic, policy in policies.items())
    finally:
        bus.close()


def housekeep(spec: PipelineSpec) -> list[str]:
    """One round of the pipeline's chores, each said in a line: the tenants' stored
    retention policies, topic retention (capped by the shortest of those policies), new
    data keys for tenants whose newest is too old (when encryption is on), then its
    application's own (its ``housekeeping`` hook, e.g. purging expired outputs),
    promotion policies, and the analytics export and daily reports when
    ``INFERSTREAM_ANALYTICS_DIR`` is set."""
    from inferstream.store.data_key_age import renew_data_keys

    done, shortest_s = expire_results(spec)
    longest_s = tenant_topic_cap(shortest_s)
    dropped = apply_retention(spec, longest_s)
    if longest_s is None:
        done.append(f"topic retention dropped {dropped} messages")
    else:
        why = "the shortest tenant retention" if longest_s == shortest_s else TOPIC_FLOOR_ENV
        done.append(f"topic retention dropped {dropped} messages (none kept over "
                    f"{longest_s / 86_400:g} days: {why})")  # fmt: skip
    if not _not_made_yet(spec.store):
        done += renew_data_keys(spec.store)
    app = spec.application()
    if app is not None and app.housekeeping:
        chore = load_ref(app.housekeeping, f"application {app.name!r} housekeeping")
        outcome = chore(spec)
        done.append(f"{app.name}: {outcome if outcome is not None else 'done'}")
    if spec.promotions:
        done += promote(spec)
    folder = os.environ.get("INFERSTREAM_ANALYTICS_DIR")
    if folder:
        done += analytics(spec, folder)
    return done


def expire_results(spec: PipelineSpec) -> tuple[list[str], float | None]:
    """The tenants' stored retention policies (``docs/data-lifecycle.md``): a line per
    tenant that expired anything, and the shortest policy in seconds (None: none)."""
    from inferstream.blobs import open_blob_store
    from inferstream.envelope import now_us
    from inferstream.store import ResultsStore
    from inferstream.store.audit import AuditLog, audit_key_from_env
    from inferstream.store.retention import expire_by_policies, list_policies, shortest_keep_s

    if _not_made_yet(spec.store):
        return [], None  # no policy in it; a pipeline without a store does not get one
    with ResultsStore(spec.store) as store:
        policies = list_policies(store)
        audit = AuditLog(store, audit_key_from_env())
        expired = expire_by_policies(audit, open_blob_store(spec.blobs), policies, now_us())
        lines = [
            f"retention: {policy.tenant} expired {done.rows} rows and {done.blobs_deleted} "
            f"blobs older than {policy.keep_days} days"
            for policy, done in expired
            if done.rows
        ]
    return lines, shortest_keep_s(policies)


def _not_made_yet(store_url: str) -> bool:
    """Whether ``store_url`` is a SQLite file that does not exist yet."""
    from pathlib import Path

    from inferstream.store.engine import parse_store_url

    url = parse_store_url(store_url)
    database = url.database or ":memory:"
    in_a_file = url.get_backend_name() == "sqlite" and database != ":memory:"
    return in_a_file and not database.startswith("file:") and not Path(database).exists()


def analytics(spec: PipelineSpec, folder: str) -> list[str]:
    """The analytics chore (``docs/analytics.md``): export, then yesterday's reports."""
    from pathlib import Path

    from inferstream.analytics.chore import analytics_chore
    from inferstream.store import ResultsStore

    if "://" in folder:
        raise ConfigError(
            f"INFERSTREAM_ANALYTICS_DIR={folder!r}: the scheduled chore keeps its export, "
            "daily reports and saved queries in a local folder (a volume); set a folder, "
            "and export to object storage with `inferstream analytics export PIPELINE --to "
            "s3://bucket/prefix`"
        )
    with ResultsStore(spec.store) as store:
        return analytics_chore(store, Path(folder))


def promote(spec: PipelineSpec) -> list[str]:
    """One round of the pipeline's promotion policies (``promotion:`` in its file)."""
    from inferstream.promotion import run_policy
    from inferstream.registry import ModelRegistry
    from inferstream.store import ResultsStore

    app = spec.application()
    if app is None:
        return ["promotion: the pipeline names no application (app: ...); nothing compared"]
    store = ResultsStore(spec.store)
    try:
        registry = ModelRegistry(store, open_blobs(spec.blobs, store))
        lines = []
        for policy in spec.promotions:
            tenants = list(policy.labels_from) or store.tenant_names()
            head = policy.head or (app.first_head.name if app.first_head else "")
            lines.append("promotion: " + run_policy(
                registry, policy, app=app.name, head=head, tenants=tenants
            ))  # fmt: skip
        return lines
    finally:
        store.close()


def build_steps(spec: PipelineSpec, stage: StageSpec, worker_id: str) -> list[Step]:
    app = spec.application()
    context = StepContext(
        pipeline=spec.name,
        stage=stage.name,
        worker=worker_id,
        store_url=spec.store,
        blobs=open_blobs(spec.blobs, spec.store),
        app=app,
        max_clock_skew_s=spec.max_clock_skew_s,
        claim_check_bytes=spec.claim_check_bytes,
    )
    app_steps = app.steps if app else {}
    built = []
    for step in stage.steps:
        made = build_step(step.ref, context, step.params, app_steps)
        conditional = step.when is not None or step.unless is not None
        built.append(ConditionalStep(made, step.takes) if conditional else made)
    return built


def make_worker(
    spec: PipelineSpec,
    stage_name: str,
    bus: Bus,
    replica: int = 0,
    tracing: Tracing = NO_TRACING,
) -> StageWorker:
    """The worker of one stage: stateful (with an operator and durable state) when the
    stage has a join, a window or a keyed step first, else the plain micro-batch loop;
    a span per message it handles when ``tracing`` is on."""
    stage = spec.stage(stage_name)
    worker_id = f"{stage.name}-{replica}@{socket.gethostname()}:{os.getpid()}"
    steps = build_steps(spec, stage, worker_id)
    operator, steps = _operator(stage, steps)
    settings: dict[str, Any] = {
        "pipeline": spec.name,
        "stage": stage.name,
        "inputs": stage.inputs,
        "router": stage.router,
        "start": stage.start,
        "steps": steps,
        "max_batch": stage.batch.max_size,
        "max_wait_s": stage.batch.max_wait_ms / 1000,
        "max_attempts": stage.max_attempts,
        "worker_id": worker_id,
        "replays": ReplayWatch(ReplayBoard(spec.store), stage.group(spec.name)),
        "tracing": tracing,
    }
    if operator is None:
        return StageWorker(bus, **settings)
    from inferstream.dataflow.state_store import StateStore
    from inferstream.dataflow.stateful_worker import StatefulWorker

    state = StateStore(spec.store)
    return StatefulWorker(
        bus,
        operator=operator,
        state=state,
        idle_s=stage.idle_ms / 1000,
        upstream=spec.upstream(stage.name),
        **settings,
    )


def _operator(stage: StageSpec, steps: list[Step]) -> tuple[Operator | None, list[Step]]:
    """The stage's operator, and the steps that run on its outputs."""
    from inferstream.dataflow.join import JoinOperator
    from inferstream.dataflow.keyed import StatefulStep, StepOperator
    from inferstream.dataflow.window import WindowOperator

    # A join or window is the stage's operator; else a keyed step may be, if first.
    for later in steps if stage.stateful else steps[1:]:
        if isinstance(later, StatefulStep):
            raise ConfigError(
                f"stage {stage.name!r}: step {later.name!r} keeps state, so it must be the "
                "stage's first step, in a stage without a join or window (one stateful "
                "operator per stage)"
            )
    if stage.join is not None:
        return JoinOperator(stage.join, stage.name, stage.inputs), steps
    if stage.window is not None:
        return WindowOperator(stage.window, stage.name, stage.inputs), steps
    if steps and isinstance(steps[0], StatefulStep):
        return StepOperator(steps[0], stage.name), steps[1:]
    return None, steps


@contextlib.contextmanager
def drain_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT, so the loop drains instead of dying mid-batch."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def watch_parent(stop: threading.Event) -> None:
    """Set ``stop`` if the supervisor that started this process dies (its pid is in the env)."""
    from inferstream.supervisor import SUPERVISOR_PID_ENV

    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if not supervisor:
        return

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != int(supervisor):
                log.warning("supervisor %s is gone: draining", supervisor)
                stop.set()

    threading.Thread(target=watch, name="watch-supervisor", daemon=True).start()


def lower_priority(nice: int) -> None:
    """Run this process at ``nice`` (never raising its priority, which needs privileges)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        log.info("running at nice %d", nice)


def run_stage(
    spec: PipelineSpec,
    stage_name: str,
    replica: int = 0,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run ``stage_name`` until SIGTERM/SIGINT; drains cleanly.

    ``on_ready`` runs once the topics exist and the signals drain the worker: what shows
    the world the worker is up (its metrics page) starts there, never before.
    """
    from inferstream.tracing_config import open_tracing

    stop = threading.Event()
    watch_parent(stop)
    lower_priority(spec.stage(stage_name).nice)
    resource = {"inferstream.pipeline": spec.name, "inferstream.stage": stage_name}
    tracing = open_tracing("inferstream-worker", resource)
    bus = open_bus(spec.bus)
    try:
        ensure_topics(bus, spec)
        worker = make_worker(spec, stage_name, bus, replica, tracing)
        settle()  # start-up's objects are never walked by the cycle collector again
        with drain_on_signals(stop):
            if on_ready is not None:
                on_ready()
            log.info("stage %s (%s) started on %s", stage_name, worker.worker_id, spec.bus)
            worker.run(stop)
        log.info("stage %s drained and stopped", stage_name)
    finally:
        bus.close()
        tracing.close()  # the spans still pending are exported
