"""``inferstream example filedrop``: a model retrained and swapped while files keep
arriving, end to end on the embedded defaults.

Starts ``inferstream up`` on the file-drop pipeline (its workers and its trainer) and
``inferstream watch`` on an inbox folder, then drops images in waves, each written
under a hidden name and renamed, as a careful copier does, plus one broken file that
must end up in ``rejected/`` with its reason. After each wave is stored its labels
arrive (the truth, as ``POST /v1/feedback`` would record it). What a new user then
sees, with no restart:

- wave 1 is scored by the shipped champion, a weak model learnt from twelve images;
- its labels are enough for the trainer: version ``r1``, registered as challenger,
  scores wave 2 in shadow beside the champion;
- wave 2's labels let the promotion policy compare the two on the same images: ``r1``
  is promoted, and the workers switch to it between two batches;
- wave 3 is scored by ``r1``, with ``r2`` in shadow, and so on: after the last wave's
  labels the policy judges the last challenger once more.

The summary counts every dropped file against the records stored (0 lost, 0 doubled),
gives each version's accuracy on the labels and the registry's history (versions,
promotions, switches with the offsets they happened at).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inferstream.application import app_named
from inferstream.apps.filedrop import APP
from inferstream.apps.filedrop.shapes import Shape, png, shapes
from inferstream.blobs import open_blob_store
from inferstream.bus import open_bus
from inferstream.envelope import new_id, now_us
from inferstream.errors import InferstreamError
from inferstream.examples import fresh_workdir, stop_processes
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.registry import ModelRegistry
from inferstream.runner import ensure_topics
from inferstream.store import Feedback, ResultFilter, ResultRow, ResultsStore

MODEL = "shapes"
#: How long a wait may see nothing change before the example says so and summarises.
STALL_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class DemoSettings:
    workdir: Path
    waves: int = 3
    per_wave: int = 300
    seed: int = 11
    bus: str | None = None
    store: str | None = None
    tenant: str = "demo-drop"
    summary_json: Path | None = None
    serve: str | None = None
    linger: bool = False


@dataclass(frozen=True)
class Summary:
    files_dropped: int
    records_stored: int
    lost: int
    doubled: int
    rejected: int
    #: The versions that acted, wave by wave.
    acting_by_wave: list[str]
    #: "version (role)" -> accuracy against the labels.
    accuracy_by_version: dict[str, float]
    champion_at_end: str
    challenger_at_end: str
    promotions: list[str] = field(default_factory=list)
    switches: int = 0
    seconds: float = 0.0


def pipeline_spec(settings: DemoSettings) -> PipelineSpec:
    work = settings.workdir.resolve()
    return load_pipeline(APP.pipeline_path()).with_urls(
        bus=settings.bus or f"sqlite:///{work / 'bus.db'}",
        store=settings.store or f"sqlite:///{work / 'results.db'}",
        blobs=f"file://{work / 'blobs'}",
    )


def drop(inbox: Path, batch: list[Shape]) -> None:
    """Write each image under a hidden name, then rename it: the watcher never sees half."""
    for shape in batch:
        hidden = inbox / f".{shape.name}.png.part"
        hidden.write_bytes(png(shape.image))
        os.replace(hidden, inbox / f"{shape.name}.png")


def wait_for(what: str, done: Callable[[], bool], progress: Callable[[], str]) -> None:
    """Wait until ``done``; print ``progress`` when it changes; give up after a stall."""
    said, changed = "", time.monotonic()
    while not done():
        now_said = progress()
        if now_said != said:
            print(f"  {now_said}", flush=True)
            said, changed = now_said, time.monotonic()
        elif time.monotonic() - changed > STALL_TIMEOUT_S:
            raise InferstreamError(
                f"waited {STALL_TIMEOUT_S:.0f}s for {what} with no change; the pipeline's "
                "warnings are above (run again with INFERSTREAM_LOG_LEVEL=INFO for more)"
            )
        time.sleep(0.25)


def _stored(store: ResultsStore, tenant: str) -> int:
    return store.count_results(tenant, ResultFilter())


def _alias(registry: ModelRegistry, alias: str) -> str:
    try:
        return registry.resolve(MODEL, alias).version
    except InferstreamError:
        return "-"


def _switched_to(registry: ModelRegistry, alias: str, version: str) -> bool:
    return any(s.alias == alias and s.to_version == version for s in registry.switches(MODEL))


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, INFERSTREAM_LOG_LEVEL=os.environ.get("INFERSTREAM_LOG_LEVEL", "WARNING"))
    return subprocess.Popen([sys.executable, "-m", "inferstream", *argv], env=env,
                            stdout=subprocess.DEVNULL)  # fmt: skip


def _login(store: ResultsStore, tenant: str, serve: bool) -> tuple[str, str] | None:
    """The tenant (the trainer learns from the tenants the store knows) and, with the
    dashboard, a viewer to log in as."""
    from inferstream.api.accounts import Accounts
    from inferstream.api.auth import hash_password

    accounts = Accounts(store)
    if not accounts.tenant_exists(tenant):
        accounts.create_tenant(tenant)
    if not serve:
        return None
    name, password = f"viewer-{new_id()[:6]}", secrets.token_urlsafe(12)
    accounts.create_user(tenant, name, hash_password(password), "viewer")
    return f"{tenant}/{name}", password


def run_demo(settings: DemoSettings) -> Summary:
    started = time.monotonic()
    fresh_workdir(settings.workdir, ("blobs", "inbox"))
    spec = pipeline_spec(settings)
    urls = ["--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs]
    inbox = settings.workdir / "inbox"
    inbox.mkdir(parents=True)
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    bus.close()
    store = ResultsStore(spec.store)
    login = _login(store, settings.tenant, bool(settings.serve))
    registry = ModelRegistry(store, open_blob_store(spec.blobs))
    source = str(spec.source)
    serve = ["--serve", settings.serve] if settings.serve else []
    procs = [
        _start(["up", source, *urls, *serve]),
        _start(["watch", str(inbox), source, *urls, "--tenant", settings.tenant,
                "--interval", "0.2", "--settle", "0.2"]),
    ]  # fmt: skip
    head = app_named(APP.name).first_head
    assert head is not None
    waves = [list(shapes(settings.per_wave, settings.seed + w, f"w{w + 1}"))
             for w in range(settings.waves)]  # fmt: skip
    acting: list[str] = []
    try:
        print(f"pipeline {spec.name!r} and its trainer starting (bus {spec.bus})")
        if login:
            print(f"dashboard: http://{settings.serve}/dashboard?app={APP.name}  (log in as "
                  f"{login[0]}, password {login[1]})")  # fmt: skip
        print(f"dropping {settings.waves} waves of {settings.per_wave} images into {inbox}")
        (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
        expected = 0
        for number, wave in enumerate(waves, start=1):
            champion = _alias(registry, "champion")
            challenger = _alias(registry, "challenger")
            print(f"wave {number}: {len(wave)} images; champion {champion}, "
                  f"challenger in shadow {challenger}")  # fmt: skip
            drop(inbox, wave)
            expected += len(wave)
            _await_records(store, settings.tenant, expected, number)
            acting.append(_acting(store, settings.tenant, wave))
            print(f"  scored by {acting[-1]}; its labels arrive")
            store.add_feedback_batch([
                Feedback(settings.tenant, APP.name, s.name, head.name, s.kind, "example", now_us())
                for s in wave
            ])  # fmt: skip
            _await_next_model(registry, number)
        summary = _summarise(
            store, registry=registry, settings=settings, waves=waves, acting=acting, started=started
        )
        report(summary, settings.summary_json)
        if settings.linger:
            print("\nthe pipeline keeps running; drop more images into the inbox; Ctrl-C stops")
            with contextlib.suppress(KeyboardInterrupt):
                procs[0].wait()
    finally:
        stop_processes(procs)
        store.close()
    return summary


def _await_records(store: ResultsStore, tenant: str, expected: int, number: int) -> None:
    wait_for(
        f"wave {number}'s records",
        lambda: _stored(store, tenant) >= expected,
        lambda: f"stored {_stored(store, tenant)} of {expected}",
    )


def _await_next_model(registry: ModelRegistry, number: int) -> None:
    """After a wave's labels the trainer learns its next version; before that takes the
    challenger's alias the policy has judged the challenger that scored the wave (from
    wave 2 on). The next wave starts once the workers serve what the registry says."""
    before = _alias(registry, "champion")
    wanted = f"r{number}"
    wait_for(
        f"the trainer's {wanted}",
        lambda: _alias(registry, "challenger") == wanted,
        lambda: f"challenger {_alias(registry, 'challenger')}: waiting for {wanted}",
    )
    champion = _alias(registry, "champion")
    if champion != before:
        print(f"  promoted: champion {before} -> {champion}")
    wait_for(
        "the workers to serve the new versions",
        lambda: (
            _switched_to(registry, "challenger", wanted)
            and (champion == before or _switched_to(registry, "champion", champion))
        ),
        lambda: "workers loading the new versions",
    )


def _acting(store: ResultsStore, tenant: str, wave: list[Shape]) -> str:
    """The versions that acted on a wave's records (normally one)."""
    names = {s.name for s in wave}
    versions: dict[str, int] = {}
    for row in _rows(store, tenant):
        if row.subject in names:
            versions[row.model_version] = versions.get(row.model_version, 0) + 1
    return ", ".join(f"{v} ({n})" for v, n in sorted(versions.items())) or "nothing"


def _rows(store: ResultsStore, tenant: str) -> list[ResultRow]:
    rows: list[ResultRow] = []
    cursor = None
    while True:
        page = store.list_results(tenant, ResultFilter(), cursor=cursor, limit=1000)
        rows += page.items
        cursor = page.next_cursor
        if cursor is None:
            return rows


def _summarise(
    store: ResultsStore,
    *,
    registry: ModelRegistry,
    settings: DemoSettings,
    waves: list[list[Shape]],
    acting: list[str],
    started: float,
) -> Summary:
    dropped = [s.name for wave in waves for s in wave]
    stored: dict[str, int] = {}
    for row in _rows(store, settings.tenant):
        if row.subject:
            stored[row.subject] = stored.get(row.subject, 0) + 1
    rejected = sorted(p.name for p in (settings.workdir / "inbox" / "rejected").glob("*.png"))
    return Summary(
        files_dropped=len(dropped) + 1,  # and the broken one
        records_stored=sum(stored.values()),
        lost=sum(1 for name in dropped if name not in stored),
        doubled=sum(n - 1 for n in stored.values() if n > 1),
        rejected=len(rejected),
        acting_by_wave=acting,
        accuracy_by_version={
            f"{m.model_version} ({m.role})": round(m.correct / m.labelled, 4)
            for m in store.accuracy_by_model_version(settings.tenant, APP.name)
            if m.labelled
        },
        champion_at_end=_alias(registry, "champion"),
        challenger_at_end=_alias(registry, "challenger"),
        promotions=[
            f"{e.from_version} -> {e.to_version}: {e.reason.split(';')[0]}"
            for e in reversed(registry.history(MODEL))
            if e.action == "promote"
        ],
        switches=len(registry.switches(MODEL)),
        seconds=round(time.monotonic() - started, 1),
    )


def report(summary: Summary, path: Path | None) -> None:
    print("\nsummary")
    for key, value in asdict(summary).items():
        print(f"  {key:22} {json.dumps(value)}")
    if path is not None:
        path.write_text(json.dumps(asdict(summary), indent=2) + "\n")
        print(f"summary written to {path}")
