"""``inferstream example cameras``: a simulated depot through three flows, then a summary.

Starts the production, dev and type pipelines with ``inferstream up`` (the production
one serves the API and dashboard), lets the facility simulator send its frames at a
paced rate with a progress line a second, waits for the last states, and summarises:
windows, states lost and doubled, state accuracy against the simulator's truth (all
states, and those with every camera heard), degraded windows, dev against production,
and the type service's sightings against the truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from inferstream.apps.cameras import APP
from inferstream.apps.cameras.layout import FacilityLayout
from inferstream.apps.cameras.scoring import compare_flows, read_rows, read_states, score_states
from inferstream.apps.cameras.simulator import Emission, FacilitySimulator, SimSettings
from inferstream.bus import open_bus
from inferstream.envelope import new_id, now_us
from inferstream.examples import fresh_workdir, stop_processes
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.runner import ensure_topics
from inferstream.store import ResultFilter, ResultsStore

WINDOW_MS = 1000
STALL_TIMEOUT_S = 60.0
PIPELINES = ("cameras", "cameras-dev", "cameras-types")


@dataclass(frozen=True)
class DemoSettings:
    duration_s: float = 60.0
    #: Simulated seconds per wall second (1: real time; 0: as fast as it goes).
    speed: float = 1.0
    seed: int = 7
    workdir: Path = Path(".inferstream/cameras")
    bus: str | None = None
    store: str | None = None
    tenant: str = "demo-depot"
    summary_json: Path | None = None
    serve: str | None = "127.0.0.1:8000"
    linger: bool = False


@dataclass(frozen=True)
class Summary:
    frames_sent: int
    windows: int
    states_stored: int
    lost: int
    doubled: int
    state_accuracy: float
    state_accuracy_complete: float
    degraded_windows: int
    end_error_mean_m: float
    dev_states_stored: int
    dev_lost: int
    dev_doubled: int
    dev_state_accuracy: float
    dev_prod_agreement: float
    type_sightings: int
    type_accuracy: float
    seconds: float


def pipeline_specs(settings: DemoSettings) -> list[PipelineSpec]:
    work = settings.workdir.resolve()
    return [
        load_pipeline(APP.pipeline_path(name)).with_urls(
            bus=settings.bus or f"sqlite:///{work / 'bus.db'}",
            store=settings.store or f"sqlite:///{work / 'results.db'}",
            blobs=f"file://{work / 'blobs'}",
        )
        for name in PIPELINES
    ]


def start(spec: PipelineSpec, serve: str | None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "inferstream", "up", str(spec.source)]
    argv += ["--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs]
    argv += ["--serve", serve] if serve else []
    env = dict(os.environ, INFERSTREAM_LOG_LEVEL=os.environ.get("INFERSTREAM_LOG_LEVEL", "WARNING"))
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)


def _dashboard_login(store: ResultsStore, tenant: str) -> tuple[str, str]:
    from inferstream.api.accounts import Accounts
    from inferstream.api.auth import hash_password

    accounts, password = Accounts(store), secrets.token_urlsafe(12)
    if not accounts.tenant_exists(tenant):
        accounts.create_tenant(tenant)
    name = f"viewer-{new_id()[:6]}"
    accounts.create_user(tenant, name, hash_password(password), "viewer")
    return f"{tenant}/{name}", password


class Progress:
    def __init__(self, store: ResultsStore, tenant: str) -> None:
        self.store, self.tenant, self.sent = store, tenant, 0
        self.started = time.monotonic()
        self.stop = threading.Event()

    def counts(self) -> dict[str, int]:
        return {
            flow: self.store.count_results(self.tenant, ResultFilter(attributes={"flow": flow}))
            for flow in ("prod", "dev", "types")
        }

    def loop(self) -> None:
        while not self.stop.wait(1.0):
            c = self.counts()
            print(
                f"  frames sent {self.sent:>6} | states prod {c['prod']:>4} dev {c['dev']:>4} | "
                f"type sightings {c['types']:>5} | {time.monotonic() - self.started:5.1f}s",
                flush=True,
            )


def _wait(progress: Progress, windows: int) -> None:
    best, best_at = -1, time.monotonic()
    while True:
        c = progress.counts()
        if c["prod"] >= windows and c["dev"] >= windows:
            return
        if sum(c.values()) > best:
            best, best_at = sum(c.values()), time.monotonic()
        elif time.monotonic() - best_at > STALL_TIMEOUT_S:
            print(f"no new states for {STALL_TIMEOUT_S:.0f}s; summarising what arrived")
            return
        time.sleep(0.3)


def summarise(
    store: ResultsStore, tenant: str, sim: FacilitySimulator, emission: Emission, seconds: float
) -> Summary:
    prod, dev = read_states(store, tenant, "prod"), read_states(store, tenant, "dev")
    p = score_states(prod, sim, emission, WINDOW_MS)
    d = score_states(dev, sim, emission, WINDOW_MS)
    sightings = read_rows(store, tenant, "types")
    right = sum(
        r.attributes.get("loco_type") == emission.frames[r.root_id][2].kind
        for r in sightings
        if r.root_id in emission.frames
    )
    n = len(sightings)
    return Summary(
        frames_sent=len(emission.frames),
        windows=p.windows_expected,
        states_stored=p.states_stored,
        lost=p.lost,
        doubled=p.doubled,
        state_accuracy=p.accuracy,
        state_accuracy_complete=p.accuracy_complete,
        degraded_windows=p.degraded,
        end_error_mean_m=p.end_error_mean_m,
        dev_states_stored=d.states_stored,
        dev_lost=d.lost,
        dev_doubled=d.doubled,
        dev_state_accuracy=d.accuracy,
        dev_prod_agreement=compare_flows(prod, dev).rate,
        type_sightings=n,
        type_accuracy=right / n if n else float("nan"),
        seconds=seconds,
    )


def run_demo(settings: DemoSettings) -> Summary:
    fresh_workdir(settings.workdir)
    specs = pipeline_specs(settings)
    bus = open_bus(specs[0].bus)
    for spec in specs:
        ensure_topics(bus, spec)
    store = ResultsStore(specs[0].store)
    login = _dashboard_login(store, settings.tenant) if settings.serve else None
    procs = [start(spec, settings.serve if i == 0 else None) for i, spec in enumerate(specs)]
    layout = FacilityLayout()
    sim = FacilitySimulator(layout, SimSettings(duration_s=settings.duration_s, seed=settings.seed))
    try:
        print(f"pipelines {', '.join(PIPELINES)} starting (bus {specs[0].bus})")
        if settings.serve and login:
            print(
                f"dashboard: http://{settings.serve}/dashboard?app=cameras  (log in as "
                f"{login[0]}, password {login[1]})"
            )
        print(
            f"{layout.tracks} tracks, {len(layout.cameras)} cameras, {settings.duration_s:.0f}"
            f" simulated seconds; camera {sim.settings.dead_camera} stops at "
            f"{sim.settings.dead_from * settings.duration_s:.0f}s"
        )
        progress = Progress(store, settings.tenant)
        threading.Thread(target=progress.loop, daemon=True).start()
        # Event time starts now, as a live camera's: a stage slow to start never makes
        # frames late, and the last windows close when the clock passes them.
        epoch_us = now_us() // 1_000_000 * 1_000_000
        emission = sim.emit(
            bus,
            tenant=settings.tenant,
            run=new_id(),
            epoch_us=epoch_us,
            speed=settings.speed or None,
            progress=lambda e: setattr(progress, "sent", len(e.frames)),
        )
        progress.sent = len(emission.frames)
        _wait(progress, len(emission.window_starts(WINDOW_MS)))
        progress.stop.set()
        summary = summarise(
            store, settings.tenant, sim, emission, time.monotonic() - progress.started
        )
        report(summary, settings.summary_json)
        if settings.linger:
            print("\nthe pipelines keep running; press Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                procs[0].wait()
    finally:
        stop_processes(procs)
        bus.close()
        store.close()
    return summary


def report(summary: Summary, path: Path | None) -> None:
    print("\nsummary")
    for key, value in asdict(summary).items():
        print(f"  {key:26} {value:.3f}" if isinstance(value, float) else f"  {key:26} {value}")
    if path is not None:
        path.write_text(json.dumps(asdict(summary), indent=2) + "\n")
        print(f"summary written to {path}")
