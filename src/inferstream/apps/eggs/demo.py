"""``inferstream example eggs``: the flagship end to end, with progress and a summary.

Starts the eggs pipeline with ``inferstream up`` (supervised worker processes),
waits until one warm-up scan comes out the other end, then lets the simulated
scanners send the scans, prints a progress line every second, waits for the last
result, and summarises: sent, stored, lost, doubled, accuracy against ground truth,
throughput, and latency from scan creation to stored result. Then the hatch results
arrive as feedback (21 days later on the simulator's clock), and the accuracy of each
model version against them is printed, as the dashboard and the registry see it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.simulator import Emission, ScannerSimulator, ScanPool, SendingStopped
from inferstream.bus import open_bus
from inferstream.envelope import new_id, now_us
from inferstream.errors import BusFullError, ConfigError, InferstreamError
from inferstream.examples import fresh_workdir, stop_processes
from inferstream.host_cpu import HostCpu
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.runner import ensure_topics
from inferstream.store import Feedback, ResultFilter, ResultRow, ResultsStore

#: Give up waiting for the last results after this long without progress.
STALL_TIMEOUT_S = 60.0
#: The same once the bus refused scans: it likely refuses the stages' outputs too, so
#: only the batches in flight can still land.
STOPPED_STALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DemoSettings:
    scans: int = 20000
    rate: float = 1000.0
    workdir: Path = Path(".inferstream/eggs")
    bus: str | None = None
    store: str | None = None
    summary_json: Path | None = None
    pool: int = 512
    tenant: str = "demo-hatchery"
    #: HOST:PORT for the API and dashboard, or None to run the pipeline alone.
    serve: str | None = "127.0.0.1:8000"
    #: Keep pipeline and dashboard running after the summary, until Ctrl-C.
    linger: bool = False
    scanners: int = 8


@dataclass(frozen=True)
class Summary:
    scans_sent: int
    results_stored: int
    lost: int
    duplicates: int
    accuracy: float
    throughput_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    offered_rate_per_s: float
    #: Scans the not-an-egg guard flagged (stored without a sex; counted as wrong above).
    not_eggs: int = 0
    #: "model version (role)" -> accuracy against the hatch results (feedback).
    accuracy_by_version: dict[str, float] = field(default_factory=dict)
    #: Share of the machine's CPU time spent working while scans flowed, in percent
    #: (None where the kernel does not say: off Linux).
    host_cpu_busy_pct: float | None = None
    #: Share the hypervisor held back for other virtual machines (steal time), percent.
    host_cpu_steal_pct: float | None = None


#: Below this share of the offered rate the pipeline fell behind the scanners.
KEPT_UP = 0.95
#: From this much steal time on, the summary says the machine was not quiet.
NOISY_STEAL_PCT = 5.0
#: From this share of the machine's CPU time busy on, scans queue for a CPU.
SATURATED_PCT = 90.0


def notes(summary: Summary) -> list[str]:
    """What the summary's figures mean when the run was not a fair measure of latency:
    the pipeline fell behind the offered rate, the machine's CPUs were saturated, or the
    host took CPU from this machine (steal)."""
    found = []
    offered = summary.offered_rate_per_s
    if summary.results_stored and offered > 0 and summary.throughput_per_s < KEPT_UP * offered:
        rate = 0.8 * summary.throughput_per_s
        found.append(
            f"the pipeline stored {summary.throughput_per_s:.0f} scans/s of the "
            f"{offered:.0f}/s offered: it fell behind, so the latency "
            "above is mostly scans waiting in the backlog. To see its latency at a load "
            f"this machine carries, run again with --rate {rate:.0f}"
        )
    elif (summary.host_cpu_busy_pct or 0.0) >= SATURATED_PCT:
        found.append(
            f"this machine's CPUs were busy {summary.host_cpu_busy_pct:.0f} % of the run: "
            "the pipeline kept up, but with the simulated scanners (and the API) it used "
            "nearly all of them, so scans also queued for a CPU; run with --rate "
            f"{0.6 * offered:.0f} to see its latency with headroom"
        )
    steal = summary.host_cpu_steal_pct
    if steal is not None and steal >= NOISY_STEAL_PCT:
        found.append(
            f"the hypervisor held back {steal:.0f} % of this machine's CPU time during the "
            "run (steal: other virtual machines on the host competed for it), so the "
            "throughput and latency above are not the pipeline's alone"
        )
    return found


def pipeline_spec(settings: DemoSettings) -> PipelineSpec:
    work = settings.workdir.resolve()
    spec = load_pipeline(APP.pipeline_path())
    return spec.with_urls(
        bus=settings.bus or f"sqlite:///{work / 'bus.db'}",
        store=settings.store or f"sqlite:///{work / 'results.db'}",
        blobs=f"file://{work / 'blobs'}",
    )


def start_pipeline(spec: PipelineSpec, serve: str | None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "inferstream", "up", str(spec.source)]
    argv += ["--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs]
    argv += ["--serve", serve] if serve else []
    env = dict(os.environ, INFERSTREAM_LOG_LEVEL=os.environ.get("INFERSTREAM_LOG_LEVEL", "WARNING"))
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)


def _dashboard_login(store: ResultsStore, tenant: str, run: str) -> tuple[str, str]:
    """A viewer account of this run for the dashboard: (username, random password)."""
    from inferstream.api.accounts import Accounts
    from inferstream.api.auth import hash_password

    accounts = Accounts(store)
    password = secrets.token_urlsafe(12)
    if not accounts.tenant_exists(tenant):
        accounts.create_tenant(tenant)
    name = f"viewer-{run[:6]}"
    accounts.create_user(tenant, name, hash_password(password), "viewer")
    return f"{tenant}/{name}", password


#: The stage whose replicas must all have scored a warm-up scan before the run.
SCORING_STAGE = "classify"


def _wait_ready(
    sim: ScannerSimulator, store: ResultsStore, proc: subprocess.Popen[bytes], replicas: int
) -> None:
    """Send warm-up scans (their own tenant) until every replica of the classify stage
    has scored one. The run's scans then meet workers that are warm and have all joined
    their group: a replica joining late moved partitions in the run's first second and
    its first batch waited for its start-up (p99 over 200 ms in a 15 s run)."""
    warm = ScannerSimulator(sim.bus, sim.topic, sim.pool, rate=1e6, tenant="warm-up", run="warm")
    since = ResultFilter(since_us=now_us())
    emission, sent, scorers = Emission(started=time.monotonic()), 0, set[str]()
    deadline = time.monotonic() + 120
    while len(scorers) < replicas:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the pipeline did not start; run 'inferstream up' on it to see why")
        warm.send_batch(emission, sent, sent + 1)  # another egg: another partition, likely
        sent += 1
        time.sleep(0.25)
        rows = store.list_results("warm-up", since, limit=1000).items
        scorers = {
            str(step.get("worker", "")).split("@")[0]
            for row in rows
            for step in row.lineage
            if step.get("stage") == SCORING_STAGE
        }


def _wait_served(serve: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the API answers ``/readyz``: its start-up (imports, the app, a first
    collection) takes a core for about a second, which the run's first scans felt."""
    deadline = time.monotonic() + 60
    while True:
        # OSError: not listening yet, or a 503 while it starts.
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://{serve}/readyz", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the API on {serve} did not start; run 'inferstream up' to see why")
        time.sleep(0.2)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def this_run(store: ResultsStore, tenant: str, emission: Emission) -> Iterator[ResultRow]:
    """The stored records made from this run's scans (a store may hold earlier runs)."""
    cursor: str | None = None
    since = ResultFilter(since_us=min(emission.created_us.values(), default=0))
    while True:
        page = store.list_results(tenant, since, cursor=cursor, limit=1000)
        yield from (row for row in page.items if row.root_id in emission.truth)
        cursor = page.next_cursor
        if cursor is None:
            return


#: A chick hatches about 21 days after the egg is laid; the scan is earlier still.
HATCH_AFTER_US = 21 * 24 * 3600 * 1_000_000


def hatch(store: ResultsStore, tenant: str, emission: Emission) -> dict[str, float]:
    """The hatch results, 21 days after each scan on the simulator's clock: every egg of
    this run gets its true sex as feedback (in one batch, source ``hatchery``), and the
    accuracy of each model version against them comes back, as the dashboard's
    accuracy card and ``inferstream models evaluate`` see it."""
    results = [
        Feedback(tenant, APP.name, row.subject, "sex", emission.truth[row.root_id],
                 "hatchery", row.created_at_us + HATCH_AFTER_US)
        for row in this_run(store, tenant, emission)
        if row.subject
    ]  # fmt: skip
    store.add_feedback_batch(results)
    return {
        f"{m.model_name} {m.model_version} ({m.role})": m.correct / m.labelled
        for m in store.accuracy_by_model_version(tenant, APP.name)
        if m.labelled
    }


def summarise(store: ResultsStore, tenant: str, emission: Emission, rate: float) -> Summary:
    """Score this run's results (those of the emitted scans) against the ground truth.

    ``duplicates`` counts eggs with more than one stored record: records are keyed by
    deterministic ids, so a double would mean a scan ingested twice under two ids.
    """
    latencies: list[float] = []
    correct = rows = not_eggs = 0
    seen: set[str] = set()
    eggs: set[str | None] = set()
    first_created, last_stored = float("inf"), 0
    for row in this_run(store, tenant, emission):
        rows += 1
        seen.add(row.root_id)
        eggs.add(row.subject)
        latencies.append(row.latency_ms)
        correct += emission.truth.get(row.root_id) == row.label
        not_eggs += row.attributes.get("domain") == "not_an_egg"
        first_created = min(first_created, row.created_at_us)
        last_stored = max(last_stored, row.stored_at_us)
    span_s = max((last_stored - first_created) / 1e6, 1e-9) if rows else float("nan")
    sent = len(emission.truth)
    return Summary(
        scans_sent=sent,
        results_stored=len(seen & emission.truth.keys()),
        lost=len(emission.truth.keys() - seen),
        duplicates=rows - len(eggs),
        accuracy=correct / sent if sent else float("nan"),
        throughput_per_s=rows / span_s,
        latency_p50_ms=_percentile(latencies, 0.50),
        latency_p99_ms=_percentile(latencies, 0.99),
        offered_rate_per_s=rate,
        not_eggs=not_eggs,
    )


class Progress:
    """Prints one progress line a second while scans flow."""

    def __init__(self, store: ResultsStore, tenant: str, total: int) -> None:
        self.store, self.tenant, self.total = store, tenant, total
        self.sent = 0
        self.started = time.monotonic()
        # Results of scans created from now on: a store may hold earlier runs.
        self.since = ResultFilter(since_us=now_us())
        self.stop = threading.Event()

    def line(self) -> tuple[int, str]:
        stored = self.store.count_results(self.tenant, self.since)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        text = (
            f"  scans sent {self.sent:>7}/{self.total} | results stored {stored:>7} | "
            f"{stored / elapsed:7.0f} results/s | {elapsed:5.1f}s"
        )
        return stored, text

    def loop(self) -> None:
        while not self.stop.wait(1.0):
            print(self.line()[1], flush=True)


def _wait_for_results(progress: Progress, expected: int, stall_s: float) -> None:
    best, best_at = -1, time.monotonic()
    while True:
        stored, _ = progress.line()
        if stored >= expected:
            return
        if stored > best:
            best, best_at = stored, time.monotonic()
        elif time.monotonic() - best_at > stall_s:
            print(f"no new results for {stall_s:.0f}s; summarising what arrived")
            return
        time.sleep(0.2)


def check_port_free(serve: str) -> None:
    """Fail before anything starts when the API's address is taken, with what to do."""
    host, _, port = serve.rpartition(":")
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot serve the dashboard on {serve} ({exc}); pick another address with "
                "--serve HOST:PORT, or run without it using --no-serve"
            ) from exc


def run_demo(settings: DemoSettings) -> Summary:
    if settings.serve:
        check_port_free(settings.serve)
    fresh_workdir(settings.workdir)
    spec = pipeline_spec(settings)
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    store = ResultsStore(spec.store)
    print(f"rendering {settings.pool} distinct MRI scans as DICOM (done once, up front)...")
    pool = ScanPool.build(settings.pool, progress=lambda d, t: print(f"  {d}/{t} scans rendered"))
    run = new_id()
    login = _dashboard_login(store, settings.tenant, run) if settings.serve else None
    proc = start_pipeline(spec, settings.serve)
    try:
        sim = ScannerSimulator(bus, "scans.raw", pool, rate=settings.rate,
                               tenant=settings.tenant, run=run,
                               scanners=settings.scanners)  # fmt: skip
        print(f"starting pipeline {spec.name!r} (bus {spec.bus}, store {spec.store})...")
        _wait_ready(sim, store, proc, spec.stage(SCORING_STAGE).replicas)
        if settings.serve:
            _wait_served(settings.serve, proc)
        if settings.serve and login:
            print(f"dashboard: http://{settings.serve}/dashboard  (log in as {login[0]}, "
                  f"password {login[1]})")  # fmt: skip
        summary = _send_and_summarise(sim, store, settings, spec.bus)
        if settings.linger:
            _linger(proc, settings.serve)
    finally:
        stop_processes([proc])
        bus.close()
        store.close()
    return summary


def _send_and_summarise(
    sim: ScannerSimulator, store: ResultsStore, settings: DemoSettings, bus: str
) -> Summary:
    """Send the scans, wait for their results and print the summary.

    When the bus refuses scans the sending stops; the summary still counts what the
    bus accepted, and only then the error saying why is raised.
    """
    print(f"sending {settings.scans} scans at {settings.rate:.0f}/s from simulated scanners")
    progress = Progress(store, settings.tenant, settings.scans)
    threading.Thread(target=progress.loop, daemon=True).start()
    host = HostCpu()
    stopped: SendingStopped | None = None
    try:
        emission = sim.emit(settings.scans, lambda e: setattr(progress, "sent", len(e.truth)))
    except SendingStopped as exc:
        emission, stopped = exc.emission, exc
    progress.sent = len(emission.truth)
    stall_s = STALL_TIMEOUT_S if stopped is None else STOPPED_STALL_TIMEOUT_S
    _wait_for_results(progress, len(emission.truth), stall_s)
    progress.stop.set()
    summary = summarise(store, settings.tenant, emission, settings.rate)
    if (cpu := host.shares()) is not None:
        summary = replace(
            summary,
            host_cpu_busy_pct=round(100 * cpu.busy, 1),
            host_cpu_steal_pct=round(100 * cpu.steal, 1),
        )
    if stopped is None:  # a run cut short (a full disk) reports what it has, no more
        print("hatch results arrive (21 days later on the simulator's clock) as feedback...")
        try:
            summary = replace(summary, accuracy_by_version=hatch(store, settings.tenant, emission))
        except InferstreamError as exc:
            print(f"the hatch results could not be recorded: {exc}")
    _report(summary, settings.summary_json)
    if stopped is not None:
        raise _cut_short(stopped, bus, settings.scans)
    return summary


def _cut_short(stopped: SendingStopped, bus: str, total: int) -> InferstreamError:
    """The error ending a run whose scans the bus refused, with what to do."""
    if not isinstance(stopped.cause, BusFullError):
        return stopped
    return BusFullError(
        f"the bus's disk is full ({bus}): the scanners stopped after "
        f"{len(stopped.emission.truth)} of {total} scans; free space there, or run again "
        "with --workdir (or --bus) on a bigger disk"
    )


def _linger(proc: subprocess.Popen[bytes], serve: str | None) -> None:
    where = f" and the dashboard at http://{serve}/dashboard" if serve else ""
    print(f"\nthe pipeline keeps running{where}; press Ctrl-C to stop")
    try:
        proc.wait()
    except KeyboardInterrupt:
        print("stopping: workers drain their batches...")


def _report(summary: Summary, path: Path | None) -> None:
    print("\nsummary")
    for key, value in asdict(summary).items():
        if isinstance(value, dict):
            for version, accuracy in value.items():
                print(f"  {key:<26} {version}: {accuracy:.4f}")
            continue
        shown = f"{value:.4f}" if isinstance(value, float) and key == "accuracy" else value
        shown = f"{value:.1f}" if isinstance(value, float) and key != "accuracy" else shown
        print(f"  {key:20} {'n/a' if value is None else shown}")
    for note in notes(summary):
        print(f"note: {note}")
    if path is not None:
        path.write_text(json.dumps(asdict(summary), indent=2) + "\n")
        print(f"summary written to {path}")
