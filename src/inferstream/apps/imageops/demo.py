"""``inferstream example imageops``: jobs through the API and the pipeline, every output
checked.

Starts the imageops pipeline with its API (``inferstream up --serve``, supervised
worker processes), makes a tenant and an API key, submits jobs concurrently through
``POST /v1/apps/imageops/jobs`` (each job the same three file names: a 512x512 PNG,
a 1024x1024 JPEG and a 333x517 PNG, with one of several actions documents), prints
progress each second, waits for every job, then checks every output by id: the ids
its file must make (input id, stage, tile), its size and format against the plan,
and its bytes, downloaded over the API, against the same plan applied here. The
summary counts outputs lost, doubled and wrong (all must be 0), throughput and job
latency.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from inferstream.apps.imageops import APP
from inferstream.apps.imageops.client import ImageopsClient
from inferstream.apps.imageops.images import SIZES, encoded
from inferstream.apps.imageops.operations import parse_document, run_plan
from inferstream.envelope import derive_id
from inferstream.errors import ConfigError
from inferstream.examples import fresh_workdir, stop_processes
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.store import ResultFilter, ResultRow, ResultsStore

#: The actions documents jobs take in turn; the first is the form users already send.
ACTIONS: tuple[dict[str, Any], ...] = (
    {"operations": [["resize", "200x300"], ["split", True], ["blur", "gaussian"]], "output": "jpg"},
    {"operations": [["split", "2x3"], ["resize", "100x100"], ["blur", "median", 2]],
     "output": "png"},
    {"operations": [["blur", "bilateral"], ["resize", "256x256"]], "output": "webp"},
    {"operations": [["blur", "updownsampling"], ["split", True], ["split", True]],
     "output": "png"},
    {"operations": [["resize", "300x300"], ["blur", "gaussian", 3], ["resize", "150x120"]],
     "output": "jpg"},
)  # fmt: skip
#: The file names every job uses: concurrent jobs with the same names must never meet.
FILES = (("photo.png", "png"), ("photo.jpg", "jpg"), ("odd.png", "png"))
STAGE = "apply"
STALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DemoSettings:
    jobs: int = 20
    concurrency: int = 4
    workdir: Path = Path(".inferstream/imageops")
    bus: str | None = None
    store: str | None = None
    tenant: str = "demo-studio"
    serve: str = "127.0.0.1:8000"
    summary_json: Path | None = None
    linger: bool = False


@dataclass(frozen=True)
class Summary:
    jobs: int
    files: int
    outputs_expected: int
    outputs_stored: int
    lost: int
    doubled: int
    wrong: int
    downloaded: int
    throughput_outputs_per_s: float
    job_latency_p50_ms: float
    job_latency_p99_ms: float
    elapsed_s: float


@dataclass
class Submitted:
    """A job as the API accepted it, with when it was sent and when it was seen done."""

    job: str
    actions: dict[str, Any]
    files: list[dict[str, Any]]
    sent_at: float
    done_at: float | None = None
    status: dict[str, Any] = field(default_factory=dict)


def pipeline_spec(settings: DemoSettings) -> PipelineSpec:
    work = settings.workdir.resolve()
    return load_pipeline(APP.pipeline_path()).with_urls(
        bus=settings.bus or f"sqlite:///{work / 'bus.db'}",
        store=settings.store or f"sqlite:///{work / 'results.db'}",
        blobs=f"file://{work / 'blobs'}",
    )


def check_port_free(serve: str) -> None:
    host, _, port = serve.rpartition(":")
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot serve the API on {serve} ({exc}); pick another with --serve HOST:PORT"
            ) from exc


def _credentials(store: ResultsStore, tenant: str) -> tuple[str, str, str]:
    """An API key for submitting jobs, and a viewer login for the dashboard."""
    from inferstream.api.accounts import Accounts
    from inferstream.api.auth import hash_password, issue_key

    accounts = Accounts(store)
    if not accounts.tenant_exists(tenant):
        accounts.create_tenant(tenant)
    key = issue_key(accounts, tenant, "imageops example", "device")
    password = secrets.token_urlsafe(12)
    name = f"viewer-{secrets.token_hex(3)}"
    accounts.create_user(tenant, name, hash_password(password), "viewer")
    return key.secret, f"{tenant}/{name}", password


def start_pipeline(spec: PipelineSpec, serve: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "inferstream", "up", str(spec.source), "--serve", serve]
    argv += ["--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs]
    env = dict(os.environ, INFERSTREAM_LOG_LEVEL=os.environ.get("INFERSTREAM_LOG_LEVEL", "WARNING"))
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)


def _wait_ready(client: ImageopsClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not client.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the pipeline or its API did not start; run 'inferstream up' on it")
        time.sleep(0.2)


def job_files(seed: int) -> list[tuple[str, bytes]]:
    """One job's images: the three file names, at the example's sizes."""
    return [
        (name, encoded(width, height, seed * 10 + index, kind))
        for index, ((name, kind), (width, height)) in enumerate(zip(FILES, SIZES, strict=True))
    ]


def run_demo(settings: DemoSettings) -> Summary:
    check_port_free(settings.serve)
    fresh_workdir(settings.workdir)
    spec = pipeline_spec(settings)
    store = ResultsStore(spec.store)
    key, login, password = _credentials(store, settings.tenant)
    print(f"making {len(FILES)} images for each of {settings.jobs} jobs (sizes "
          f"{', '.join(f'{w}x{h}' for w, h in SIZES)})...")  # fmt: skip
    inputs = {n: job_files(n) for n in range(settings.jobs)}
    proc = start_pipeline(spec, settings.serve)
    try:
        client = ImageopsClient(f"http://{settings.serve}", key)
        print(f"starting pipeline {spec.name!r} (bus {spec.bus}, store {spec.store})...")
        _wait_ready(client, proc)
        print(f"dashboard: http://{settings.serve}/dashboard  (log in as {login}, password "
              f"{password})")  # fmt: skip
        summary = _run_jobs(client, store, inputs, settings)
        if settings.linger:
            _linger(proc, settings.serve)
    finally:
        stop_processes([proc])
        store.close()
    return summary


def _run_jobs(
    client: ImageopsClient,
    store: ResultsStore,
    inputs: dict[int, list[tuple[str, bytes]]],
    settings: DemoSettings,
) -> Summary:
    started = time.monotonic()
    jobs: list[Submitted] = []
    stop = threading.Event()
    progress = threading.Thread(target=_progress, args=(jobs, len(inputs), stop), daemon=True)
    progress.start()

    def submit(n: int) -> Submitted:
        actions = ACTIONS[n % len(ACTIONS)]
        sent = time.monotonic()
        answer = client.submit(actions, inputs[n])
        return Submitted(answer["job"], actions, answer["files"], sent)

    print(f"submitting {len(inputs)} jobs, {settings.concurrency} at a time, all with the "
          f"same file names")  # fmt: skip
    with ThreadPoolExecutor(settings.concurrency) as pool:
        for job in pool.map(submit, sorted(inputs)):
            jobs.append(job)
    _wait_for_jobs(client, jobs)
    stop.set()
    progress.join(timeout=5)
    summary = summarise(client, store, settings.tenant, jobs, inputs, started=started)
    report(summary, settings.summary_json)
    return summary


def _progress(jobs: list[Submitted], total: int, stop: threading.Event) -> None:
    """A progress line a second, and a last one when the jobs are done (a short run
    finishes inside its first second)."""
    started = time.monotonic()
    while True:
        stopping = stop.wait(1.0)
        done = sum(1 for job in list(jobs) if job.done_at is not None)
        print(f"  jobs submitted {len(jobs):>4}/{total} | done {done:>4} | "
              f"{time.monotonic() - started:5.1f}s", flush=True)  # fmt: skip
        if stopping:
            return


def _wait_for_jobs(client: ImageopsClient, jobs: list[Submitted]) -> None:
    last_progress = time.monotonic()
    while True:
        pending = [job for job in jobs if job.done_at is None]
        if not pending:
            return
        for job in pending:
            job.status = client.status(job.job)
            if job.status["status"] in ("done", "failed"):
                job.done_at = time.monotonic()
                last_progress = job.done_at
        if time.monotonic() - last_progress > STALL_TIMEOUT_S:
            print(f"no job finished for {STALL_TIMEOUT_S:.0f}s; summarising what arrived")
            return
        time.sleep(0.2)


def expected_outputs(job: Submitted, inputs: list[tuple[str, bytes]]) -> dict[str, bytes]:
    """Output id -> the bytes it must hold: the job's plan applied here to each file."""
    plan = parse_document(job.actions)
    expected = {}
    for accepted in job.files:
        data = inputs[accepted["index"]][1]
        for tile, output in enumerate(run_plan(data, plan)):
            expected[derive_id(accepted["id"], STAGE, tile)] = output
    return expected


def summarise(
    client: ImageopsClient,
    store: ResultsStore,
    tenant: str,
    jobs: Sequence[Submitted],
    inputs: dict[int, list[tuple[str, bytes]]],
    *,
    started: float,
) -> Summary:
    """Every output by id against what its plan makes: lost, doubled, wrong."""
    lost = doubled = wrong = downloaded = expected_total = stored_total = 0
    for n, job in enumerate(jobs):
        expected = expected_outputs(job, inputs[n])
        rows = _records(store, tenant, job.job)
        ids = [row.id for row in rows]
        expected_total += len(expected)
        stored_total += len(ids)
        lost += len(expected.keys() - set(ids))
        doubled += len(ids) - len(set(ids)) + len(set(ids) - expected.keys())
        for row in rows:
            if row.id in expected:
                fetched = client.download(_url(job, row))
                downloaded += 1
                wrong += _is_wrong(row, fetched, expected[row.id])
    latencies = sorted((job.done_at - job.sent_at) * 1000 for job in jobs if job.done_at)
    elapsed = time.monotonic() - started
    # From the first job sent to the last one seen done (not the checking after).
    span = max((job.done_at or job.sent_at for job in jobs), default=started) - min(
        (job.sent_at for job in jobs), default=started
    )
    return Summary(
        jobs=len(jobs), files=sum(len(job.files) for job in jobs),
        outputs_expected=expected_total, outputs_stored=stored_total, lost=lost,
        doubled=doubled, wrong=wrong, downloaded=downloaded,
        throughput_outputs_per_s=round(stored_total / max(span, 1e-9), 1),
        job_latency_p50_ms=round(_quantile(latencies, 0.5), 1),
        job_latency_p99_ms=round(_quantile(latencies, 0.99), 1), elapsed_s=round(elapsed, 1),
    )  # fmt: skip


def _records(store: ResultsStore, tenant: str, job: str) -> list[ResultRow]:
    rows: list[ResultRow] = []
    cursor: str | None = None
    while True:
        page = store.list_results(tenant, ResultFilter(app=APP.name, group=job), cursor, 1000)
        rows.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return rows


def _url(job: Submitted, row: ResultRow) -> str:
    return f"/v1/apps/imageops/jobs/{job.job}/outputs/{row.attributes['output']}"


def _is_wrong(row: ResultRow, fetched: bytes, expected: bytes) -> bool:
    """The stored record, the served bytes and the reference must all agree."""
    digest = sha256(expected).hexdigest()
    return not (row.attributes["sha256"] == digest == sha256(fetched).hexdigest())


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _linger(proc: subprocess.Popen[bytes], serve: str) -> None:
    print(f"\nthe pipeline and the dashboard at http://{serve}/dashboard keep running; "
          "press Ctrl-C to stop")  # fmt: skip
    try:
        proc.wait()
    except KeyboardInterrupt:
        print("stopping: workers drain their batches...")


def report(summary: Summary, path: Path | None) -> None:
    print("\nsummary")
    for key, value in asdict(summary).items():
        print(f"  {key:26} {value}")
    if path is not None:
        path.write_text(json.dumps(asdict(summary), indent=2) + "\n")
        print(f"summary written to {path}")
