"""Dataflow operators: a windowed and a joined stage against a plain stage, same input.

Not a test: it prints a table. One input topic is filled once with join members: two
per parent (the last lineage step is stage ``a`` or ``b``), on 8 partition keys, in
event-time order over ``--span-s`` seconds (member ``b`` half a second after ``a``).
Three stages of one pipeline file, each run alone as ONE worker built by
:func:`inferstream.runner.make_worker`, drain that same topic from the start:

- **plain**: ``steps: [passthrough]`` (the baseline, measured in the same run);
- **window**: a tumbling window of 1 s by partition key, ``keep: count``;
- **join**: by ``parent_id`` over branches ``[a, b]``, outer, 60 s timeout.

A run's time is from the worker's start until its group's committed offsets reach the
topic's end: group join, polls, state loads and commits, produces, everything. Each
round runs the three in turn on fresh groups (so drift hits all alike) and checks the
outputs: plain one per input, the window one per (key, second) with the right counts,
the join one complete join per parent. The "state commit" column is the share of the
run spent in the state store's commits (window and join only).

    .venv/bin/python bench/dataflow_bench.py [--messages 20000] [--batch 256] [--repeat 3]
    .venv/bin/python bench/dataflow_bench.py --store postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/dataflow_bench.py --bus kafka://127.0.0.1:9092
    .venv/bin/python bench/dataflow_bench.py --profile   # top costs of each worker thread

The goal (issue 13) is a window and a join at 70 % or more of the plain stage's rate;
the table says whether this run met it, and nothing fails when it did not. With
``--profile`` the rates include cProfile's overhead: use it to see where the time goes,
not for the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, text

from inferstream.bus import Bus, Record, open_bus
from inferstream.dataflow.state_store import StateStore
from inferstream.dataflow.stateful_worker import StatefulWorker
from inferstream.dataflow.task import TaskState
from inferstream.envelope import (
    SCHEMA_VERSION,
    Envelope,
    LineageStep,
    Payload,
    Prediction,
    parse,
)
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.runner import ensure_topics, make_worker
from inferstream.worker import StageWorker

SECOND = 1_000_000
VARIANTS = ("plain", "window", "join")
GOAL = 0.70
KEYS = 8
#: Event time between a parent's two members.
MEMBER_GAP_US = SECOND // 2
WINDOW_US = SECOND
Profiler = cProfile.Profile | None

PIPELINE = """
name: {name}
bus: "{bus}"
store: "{store}"
blobs: file://{folder}/blobs
topics:
  {input}: {partitions}
stages:
  - name: plain
    input: {input}
    steps: [passthrough]
    batch: {{max_size: {batch}}}
    output: {name}.plain
  - name: window
    input: {input}
    window: {{kind: tumbling, size_ms: {window_ms}, lateness_ms: 0, keep: count, idle_ms: 200}}
    batch: {{max_size: {batch}}}
    output: {name}.window
  - name: join
    input: {input}
    join: {{by: parent_id, branches: [a, b], timeout_ms: 60000, mode: outer, idle_ms: 200}}
    batch: {{max_size: {batch}}}
    output: {name}.join
"""


@dataclass(frozen=True)
class Spec:
    messages: int
    batch: int
    size: int
    partitions: int
    span_s: float
    bus: str
    store: str
    folder: Path
    #: Unique per run, so a shared broker or database never mixes two runs.
    prefix: str = field(default_factory=lambda: f"df{uuid.uuid4().hex[:6]}")

    @property
    def input(self) -> str:
        return f"{self.prefix}.members"


@dataclass(frozen=True)
class Run:
    variant: str
    messages: int
    seconds: float
    #: Time spent in the state store's commits (stateful stages).
    commit_s: float
    #: What the outputs were, ``ok`` or ``WRONG`` first.
    verdict: str

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class TimedStateStore(StateStore):
    """The state store, adding up the time its commits take."""

    commit_s = 0.0

    def commit(self, task: TaskState) -> None:
        started = time.perf_counter()
        try:
            super().commit(task)
        finally:
            self.commit_s += time.perf_counter() - started


# -- the input and what each stage must make of it -------------------------------------


def members(spec: Spec) -> list[Envelope]:
    """Two members per parent, in event-time order, starting an hour ago on a whole second
    (so an idle input's watermark, which follows the clock, closes every window)."""
    pairs = spec.messages // 2
    base = (time.time_ns() // 1000 // SECOND - 3600) * SECOND
    step = int(spec.span_s * SECOND) // max(pairs, 1)
    payload = os.urandom(spec.size)
    envs = [
        _member(f"{spec.prefix}-p{i:07d}", branch, f"k{i % KEYS}", t, payload)
        for i in range(pairs)
        for branch, t in (("a", base + i * step), ("b", base + i * step + MEMBER_GAP_US))
    ]
    return sorted(envs, key=lambda e: e.created_at_us)


def _member(parent: str, branch: str, key: str, t: int, payload: bytes) -> Envelope:
    env = Envelope(
        schema_version=SCHEMA_VERSION,
        id=f"{parent}-{branch}",
        root_id=parent,
        tenant="bench",
        partition_key=key,
        created_at_us=t,
        ingested_at_us=t,
        parent_id=parent,
        payload=Payload(content_type="application/octet-stream", inline=payload),
    )
    env.lineage.extend([LineageStep(stage="ingest", at_us=t), LineageStep(stage=branch, at_us=t)])
    env.predictions.append(Prediction(model_name=branch, label="ok", scores={"ok": 0.9}))
    return env


def expected_windows(envs: Sequence[Envelope]) -> Counter[tuple[str, int]]:
    return Counter((e.partition_key, e.created_at_us // WINDOW_US * WINDOW_US) for e in envs)


def check(variant: str, outputs: list[Envelope], envs: Sequence[Envelope]) -> str:
    """What the stage made of the input, with ``ok`` or ``WRONG`` in front."""
    by_id = {e.id: e for e in outputs}
    if variant == "plain":
        ok, what = len(by_id) == len(envs) == len(outputs), f"{len(outputs)} outputs"
    elif variant == "window":
        got: Counter[tuple[str, int]] = Counter()
        for w in by_id.values():
            slot = (w.attributes["window.key"], int(w.attributes["window.start_us"]))
            got[slot] = int(w.attributes["window.count"])
        want = expected_windows(envs)
        ok = got == want and len(outputs) == len(want)
        what = f"{len(outputs)} windows of {len(want)}, {got.total()} members counted"
    else:
        complete = sum(e.attributes.get("join.status") == "complete" for e in by_id.values())
        ok = complete == len(outputs) == len(envs) // 2
        what = f"{len(outputs)} joins, {complete} complete of {len(envs) // 2}"
    return ("ok     " if ok else "WRONG  ") + what


# -- running one stage -----------------------------------------------------------------


def pipeline(spec: Spec, round_: int) -> PipelineSpec:
    path = spec.folder / f"round{round_}.yaml"
    path.write_text(
        PIPELINE.format(
            name=f"{spec.prefix}r{round_}", bus=spec.bus, store=spec.store, folder=spec.folder,
            input=spec.input, partitions=spec.partitions, batch=spec.batch,
            window_ms=WINDOW_US // 1000,
        )
    )  # fmt: skip
    return load_pipeline(path)


def build(pipe: PipelineSpec, variant: str, bus: Bus) -> tuple[StageWorker, TimedStateStore | None]:
    worker = make_worker(pipe, variant, bus)
    if not isinstance(worker, StatefulWorker):
        return worker, None
    worker.state.close()
    worker.state = timed = TimedStateStore(pipe.store)
    return worker, timed


def lag(bus: Bus, topic: str, group: str) -> int:
    return sum(p.lag for p in bus.partitions(topic, group))


@contextmanager
def running(worker: StageWorker, profile: Profiler) -> Iterator[threading.Thread]:
    """Run ``worker`` in a thread (under ``profile`` if given) for the block."""
    stop = threading.Event()

    def target() -> None:
        if profile is None:
            worker.run(stop)
        else:
            profile.runcall(worker.run, stop)

    thread = threading.Thread(target=target, name=f"worker-{worker.stage}", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=60)
        if thread.is_alive():
            raise RuntimeError(f"the {worker.stage} worker did not stop within 60 s")


def run_stage(
    spec: Spec, bus: Bus, pipe: PipelineSpec, variant: str, *, want: int, profile: Profiler
) -> tuple[float, float, list[Envelope]]:
    """(seconds to drain the input, seconds in state commits, the stage's outputs, once
    ``want`` of them are there or 15 s after the drain)."""
    worker, state = build(pipe, variant, bus)
    out = f"{pipe.name}.{variant}"
    with running(worker, profile) as thread:
        started = time.perf_counter()
        while lag(bus, spec.input, worker.group) > 0:
            if not thread.is_alive():
                raise RuntimeError(f"the {variant} worker died before draining its input")
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        commit_s = state.commit_s if state else 0.0
        # A window's last windows close once its caught-up input has been idle a while.
        until = time.monotonic() + 15
        while sum(p.high for p in bus.partitions(out)) < want:
            if time.monotonic() > until:
                break
            time.sleep(0.05)
    return seconds, commit_s, read_all(bus, out)


def expected_outputs(envs: Sequence[Envelope]) -> dict[str, int]:
    return {"plain": len(envs), "window": len(expected_windows(envs)), "join": len(envs) // 2}


def read_all(bus: Bus, topic: str) -> list[Envelope]:
    expected = sum(p.high - p.low for p in bus.partitions(topic))
    consumer = bus.consumer(f"reader-{uuid.uuid4().hex[:8]}", [topic])
    got: list[Envelope] = []
    try:
        while len(got) < expected:
            batch = consumer.poll_batch(1000, 2.0)
            if not batch:
                break
            got += [parse(m.value) for m in batch]
    finally:
        consumer.close()
    return got


def fill(spec: Spec, bus: Bus, envs: Sequence[Envelope]) -> None:
    for start in range(0, len(envs), 1000):
        records = [
            Record(e.partition_key.encode(), e.SerializeToString())
            for e in envs[start : start + 1000]
        ]
        bus.produce(spec.input, records)


# -- the run and its report ------------------------------------------------------------


def bench(spec: Spec, repeat: int, profiles: dict[str, cProfile.Profile] | None) -> list[Run]:
    envs = members(spec)
    want = expected_outputs(envs)
    bus = open_bus(spec.bus)
    runs: list[Run] = []
    try:
        ensure_topics(bus, pipeline(spec, 0))
        fill(spec, bus, envs)
        split = [p.high for p in bus.partitions(spec.input)]
        print(f"input: {len(envs)} members of {len(envs) // 2} parents, per partition {split}")
        for round_ in range(1, repeat + 1):
            pipe = pipeline(spec, round_)
            ensure_topics(bus, pipe)
            for variant in VARIANTS:
                profile = profiles[variant] if profiles is not None else None
                seconds, commit_s, outputs = run_stage(
                    spec, bus, pipe, variant, want=want[variant], profile=profile
                )
                run = Run(variant, len(envs), seconds, commit_s, check(variant, outputs, envs))
                print(
                    f"round {round_} {variant:<7} {seconds:6.2f} s "
                    f"{run.rate:>9,.0f} msgs/s   {run.verdict}",
                    flush=True,
                )
                runs.append(run)
    finally:
        bus.close()
    return runs


def report(spec: Spec, runs: Sequence[Run]) -> None:
    def rates(variant: str) -> list[float]:
        return sorted(r.rate for r in runs if r.variant == variant)

    plain = statistics.median(rates("plain"))
    print(
        f"\n{spec.messages} input messages, batch {spec.batch}, {spec.partitions} partitions, "
        f"bus {spec.bus.split(':')[0]}, state store {spec.store.split(':')[0]}"
    )
    print(
        f"{'stage':<8} {'runs':>4} {'min msgs/s':>11} {'median':>9} {'max':>9} "
        f"{'vs plain':>9} {'state commit':>13}  goal >= {GOAL:.0%}"
    )
    for variant in VARIANTS:
        mine = [r for r in runs if r.variant == variant]
        values = rates(variant)
        median = statistics.median(values)
        share = sum(r.commit_s for r in mine) / sum(r.seconds for r in mine)
        verdict = "" if variant == "plain" else ("met" if median >= GOAL * plain else "NOT met")
        commit = f"{share:12.0%}" if variant != "plain" else ""
        print(
            f"{variant:<8} {len(mine):>4} {values[0]:>11,.0f} {median:>9,.0f} {values[-1]:>9,.0f} "
            f"{median / plain:>9.0%} {commit:>13}  {verdict}"
        )
    wrong = [r for r in runs if not r.verdict.startswith("ok")]
    print(f"outputs checked: {len(runs) - len(wrong)} of {len(runs)} runs right")


#: Where a worker's time goes: (file, function) whose cumulative time is the phase.
PHASES = {
    "poll": (("embedded_consumer.py", "poll_batch"), ("kafka_consumer.py", "poll_batch")),
    "parse + operator + steps": (("worker.py", "_process"), ("stateful_worker.py", "_process")),
    "produce outputs": (("worker.py", "_publish"),),
    "state commit": (("stateful_worker.py", "_after_publish"),),
    "offset commit": (("embedded_consumer.py", "commit"), ("kafka_consumer.py", "commit")),
}
#: Waiting for messages that will not come (after the drain, until stop): not work.
IDLE = (("embedded_wake.py", "wait"),)
#: What those waits block in, left out of the top functions.
IDLE_BUILTINS = ("<built-in method select.select>",)

StatsRow = tuple[int, int, float, float, object]


def print_profiles(profiles: dict[str, cProfile.Profile], top: int = 12) -> None:
    """Per stage: each phase's share of the worker's busy time, then the top functions."""
    for variant, profile in profiles.items():
        rows: dict[tuple[str, int, str], StatsRow] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        idle = _cumulative(rows, IDLE)
        busy = sum(row[2] for row in rows.values()) - idle
        print(f"\n{variant}: {busy:.2f} s busy under cProfile ({idle:.2f} s idle left out)")
        for phase, functions in PHASES.items():
            spent = _cumulative(rows, functions) - (idle if phase == "poll" else 0.0)
            print(f"  {spent / busy:6.1%}  {phase}")
        print(f"  top {top} functions by own time:")
        work = {where: row for where, row in rows.items() if where[2] not in IDLE_BUILTINS}
        ranked = sorted(work.items(), key=lambda kv: kv[1][2], reverse=True)
        for (file, line, func), (_cc, calls, own, cum, _callers) in ranked[:top]:
            where = f"{Path(file).name}:{line}" if line else "built-in"
            print(
                f"  {own / busy:6.1%} own {cum / busy:6.1%} cum {calls:>8} calls  {func} ({where})"
            )


def _cumulative(
    rows: dict[tuple[str, int, str], StatsRow], wanted: Sequence[tuple[str, str]]
) -> float:
    return sum(row[3] for (file, _, func), row in rows.items() if (Path(file).name, func) in wanted)


@contextmanager
def state_store_url(url: str | None, folder: Path) -> Iterator[str]:
    """SQLite in ``folder``; or a fresh schema of the PostgreSQL at ``url``, dropped after."""
    if url is None:
        yield f"sqlite:///{folder / 'state.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{url}?options={quote(f'-c search_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="input messages (even)")
    parser.add_argument("--batch", type=int, default=256, help="batch.max_size of each stage")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of plain, window, join")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="payload bytes per message")
    parser.add_argument("--span-s", type=float, default=100.0, help="event time the input covers")
    parser.add_argument("--bus", metavar="URL", help="default: an embedded bus in a temp folder")
    parser.add_argument("--store", metavar="URL", help="PostgreSQL for the state (default SQLite)")
    parser.add_argument("--profile", action="store_true", help="cProfile each worker thread")
    args = parser.parse_args(argv)
    profiles = {v: cProfile.Profile() for v in VARIANTS} if args.profile else None
    with (
        tempfile.TemporaryDirectory(prefix="dataflow-bench-") as tmp,
        state_store_url(args.store, Path(tmp)) as store,
    ):
        folder = Path(tmp)
        bus = args.bus or f"sqlite:///{folder / 'bus.db'}"
        spec = Spec(
            args.messages // 2 * 2, args.batch, args.size, args.partitions, args.span_s, bus,
            store, folder,
        )  # fmt: skip
        runs = bench(spec, args.repeat, profiles)
    report(spec, runs)
    if profiles is not None:
        print_profiles(profiles)


if __name__ == "__main__":
    main()
