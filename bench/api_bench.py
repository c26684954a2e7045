"""Query API under ingest: 100 concurrent readers while scans flow at the flagship's rate.

Starts the eggs pipeline with its API (``inferstream up --serve``) in a temporary
folder, creates a tenant, one viewer user per reader and one scanner key per
simulated scanner, fills the store with ``--prefill-s`` seconds of scans, then runs
the same read mix in three phases of ``--phase-s`` seconds each:

* ``idle``: no ingest (the baseline, measured in the same run);
* ``bus``: the scanner simulator sends ``--rate`` scans/s straight to the bus, the
  flagship's path;
* ``api``: ``--rate`` scans/s are POSTed to ``/v1/scans`` (raw ``application/dicom``,
  one scan per request, with the scanner keys), to see whether the API's own ingest
  keeps up;
* ``batch``: ``--rate`` scans/s are POSTed as ``application/x-protobuf``
  ``EnvelopeBatch`` bodies of ``--batch`` scans (the edge agents' path), spread over
  the scanner keys.

Each reader is one asyncio task with its own keep-alive connection (``http_lite``: a
cheap client, so the load generator does not starve the API of CPU) and its own login
(the rate limit is per credential, as for 100 people), and loops:
``GET /v1/results`` with filters and cursor paging (50 %), ``GET /v1/scans/{id}`` of
a recently listed scan (30 %), ``GET /v1/groups/{group}/summary`` of a tray (20 %), then thinks
for an exponentially distributed ``--think-ms`` (0 = closed loop, each reader fires
as soon as its answer is in). Prints one table per phase (requests/s, p50/p99 per
route, non-2xx count, ingest rate, CPU of load generator and API, load average, and
the pipeline's p50/p99 end to end over the scans created during the phase)::

    .venv/bin/python bench/api_bench.py [--rate 1000] [--phase-s 20] [--think-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from http_lite import Connection
from sqlalchemy import select

from inferstream.api.accounts import Accounts
from inferstream.api.auth import Principal, hash_password, issue_key, issue_token
from inferstream.api.settings import JWT_SECRET_ENV, ApiSettings
from inferstream.apps.eggs import APP
from inferstream.apps.eggs.simulator import ScannerSimulator, ScanPool, stamp
from inferstream.bus import open_bus
from inferstream.envelope import EnvelopeBatch, now_us
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.runner import ensure_topics
from inferstream.store import ResultsStore
from inferstream.store.schema import records

TENANT = "bench-hatchery"
ROUTES = ("GET /v1/results", "GET /v1/scans/{id}", "GET /v1/groups/{group}/summary")
LABELS = ("female", "male", "not_developing")
DICOM = {"Content-Type": "application/dicom"}
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@dataclass
class Shared:
    """What readers learn from answers: recent scan ids and groups (trays), to ask about next."""

    ids: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    groups: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    latencies: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in ROUTES})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROUTES, 0))
    posted: int = 0
    post_errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


@dataclass
class Reader:
    """One reader's paging state: the query it is paging through and how deep it is."""

    params: dict[str, Any] = field(default_factory=dict)
    cursor: str | None = None
    pages: int = 0


# -- setup --------------------------------------------------------------------------------


def make_spec(work: Path) -> PipelineSpec:
    return load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{work / 'bus.db'}",
        store=f"sqlite:///{work / 'results.db'}",
        blobs=f"file://{work / 'blobs'}",
    )


def make_credentials(
    spec: PipelineSpec, readers: int, scanners: int
) -> tuple[list[str], list[str]]:
    """Reader tokens (one viewer user each) and scanner API keys, all in :data:`TENANT`."""
    store = ResultsStore(spec.store)
    accounts = Accounts(store)
    accounts.create_tenant(TENANT)
    password_hash = hash_password(secrets.token_urlsafe(16))
    settings = ApiSettings(spec, "scans.raw", jwt_secret=os.environ[JWT_SECRET_ENV])
    tokens = []
    for i in range(readers):
        name = f"reader-{i:03d}"
        accounts.create_user(TENANT, name, password_hash, "viewer")
        tokens.append(issue_token(settings, Principal(name, TENANT, "viewer")))
    keys = [
        issue_key(accounts, TENANT, f"scanner-{i:02d}", "device").secret for i in range(scanners)
    ]
    store.close()
    return tokens, keys


def start_pipeline(
    spec: PipelineSpec, port: int, api_workers: int
) -> list[subprocess.Popen[bytes]]:
    """``inferstream up --serve`` (one API process), or ``up`` plus ``serve --workers N``."""
    urls = ["--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs]
    env = dict(os.environ, INFERSTREAM_LOG_LEVEL="WARNING")
    run = [sys.executable, "-m", "inferstream"]
    if api_workers == 1:
        up = [*run, "up", str(spec.source), *urls, "--serve", f"127.0.0.1:{port}"]
        return [subprocess.Popen(up, stdout=subprocess.DEVNULL, env=env)]
    serve = [*run, "serve", str(spec.source), *urls, "--port", str(port),
             "--workers", str(api_workers)]  # fmt: skip
    up = [*run, "up", str(spec.source), *urls]
    return [subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env) for argv in (up, serve)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Any, what: str, procs: list[subprocess.Popen[bytes]], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen; run 'inferstream up' on eggs.yaml to see why")
        time.sleep(0.2)


def api_up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def wait_quiet(max_load: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until the 1-minute load is under ``max_load``."""
    deadline = time.monotonic() + max_wait_s
    while (load := os.getloadavg()[0]) > max_load and time.monotonic() < deadline:
        print(f"  machine busy (1-min load {load:.2f} > {max_load}); waiting...", flush=True)
        time.sleep(15)
    return load


# -- ingest -------------------------------------------------------------------------------


def _emit(bus_url: str, pool: ScanPool, rate: float, total: int, run: str) -> None:
    """Simulated scanners in their own process, so their CPU is not the readers'."""
    bus = open_bus(bus_url)
    try:
        ScannerSimulator(bus, "scans.raw", pool, rate=rate, tenant=TENANT, run=run).emit(total)
    finally:
        bus.close()


def start_simulator(
    spec: PipelineSpec, pool: ScanPool, rate: float, seconds: float, run: str
) -> Any:
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_emit, args=(spec.bus, pool, rate, int(rate * seconds), run))
    proc.start()
    return proc


@dataclass(frozen=True)
class Load:
    """One phase's load: where to send it, until when, and at what pace."""

    base: str
    until: float
    think_s: float
    rate: float
    pool: ScanPool


async def post_scans(load: Load, keys: list[str], shared: Shared) -> None:
    """POST one raw DICOM scan per request on a global schedule of ``load.rate``/s."""
    slots = iter(range(10**9))
    started = time.monotonic()
    pool = load.pool

    async def poster(key: str) -> None:
        conn = Connection(load.base, {"X-API-Key": key})
        while (now := time.monotonic()) < load.until:
            n = next(slots)
            await asyncio.sleep(max(0.0, started + n / load.rate - now))
            scan = pool.scans[n % len(pool.scans)]
            data, _, _ = stamp(scan, n, "apib", f"SCANNER-{n % 8 + 1:02d}")
            try:
                status = (await conn.request("POST", "/v1/scans", body=data, headers=DICOM)).status
            except (OSError, asyncio.IncompleteReadError):
                status = 0
            if status == 202:
                shared.posted += 1
            else:
                shared.post_errors += 1
                shared.statuses[status] = shared.statuses.get(status, 0) + 1
        await conn.close()

    # Enough requests in flight that one slow answer does not stall the schedule.
    await asyncio.gather(*(poster(keys[i % len(keys)]) for i in range(64)))


async def post_batches(load: Load, keys: list[str], shared: Shared, size: int) -> None:
    """POST ``EnvelopeBatch`` bodies of ``size`` scans, ``load.rate`` scans/s in all."""
    started, pool = time.monotonic(), load.pool

    async def agent(lane: int, key: str) -> None:
        conn = Connection(load.base, {"X-API-Key": key})
        number = lane  # request numbers: lane, lane + lanes, ...
        while (now := time.monotonic()) < load.until:
            await asyncio.sleep(max(0.0, started + number * size / load.rate - now))
            batch = EnvelopeBatch()
            for n in range(number * size, (number + 1) * size):
                scanner = f"SCANNER-{n % 8 + 1:02d}"
                data, egg_id, _ = stamp(pool.scans[n % len(pool.scans)], n, "apib", scanner)
                env = batch.envelopes.add(partition_key=egg_id, created_at_us=now_us())
                env.payload.content_type = "application/dicom"
                env.payload.inline = data
            body = batch.SerializeToString()
            try:
                status = (
                    await conn.request("POST", "/v1/scans", body=body, headers=PROTOBUF)
                ).status
            except (OSError, asyncio.IncompleteReadError):
                status = 0
            if status == 202:
                shared.posted += size
            else:
                shared.post_errors += 1
                shared.statuses[status] = shared.statuses.get(status, 0) + 1
            number += len(keys)
        await conn.close()

    await asyncio.gather(*(agent(lane, key) for lane, key in enumerate(keys)))


# -- readers ------------------------------------------------------------------------------


def next_request(
    reader: Reader, shared: Shared, rng: random.Random
) -> tuple[str, str, dict[str, Any]]:
    """The route, path and query parameters of a reader's next request."""
    pick = rng.random()
    if pick < 0.3 and shared.ids:
        return ROUTES[1], f"/v1/scans/{rng.choice(shared.ids)}", {}
    if pick < 0.5 and shared.groups:
        return ROUTES[2], f"/v1/groups/{rng.choice(shared.groups)}/summary", {}
    if reader.cursor is not None and reader.pages < 3:
        reader.pages += 1
        return ROUTES[0], "/v1/results", {**reader.params, "cursor": reader.cursor}
    reader.pages = 1
    reader.params = {"limit": 50, "order": "desc"}
    choice = rng.randrange(5)
    if choice == 1 and shared.groups:
        reader.params |= {"group": rng.choice(shared.groups), "order": "asc"}
    elif choice == 2:
        reader.params |= {"label": rng.choice(LABELS), "min_confidence": 0.8}
    elif choice == 3:
        reader.params |= {"source": f"SCANNER-0{rng.randrange(1, 4)}"}
    elif choice == 4:
        since = datetime.now(UTC) - timedelta(seconds=60)
        reader.params |= {"since": since.isoformat()}
    return ROUTES[0], "/v1/results", dict(reader.params)


def learn(route: str, reader: Reader, body: dict[str, Any], shared: Shared) -> None:
    if route != ROUTES[0]:
        return
    reader.cursor = body.get("next_cursor")
    for item in body.get("items", [])[:10]:
        shared.ids.append(item["root_id"])  # the scan's id; a record's own id is not
        if item.get("group"):
            shared.groups.append(item["group"])


async def read_loop(load: Load, client: Connection, shared: Shared, seed: int) -> None:
    """One reader: its own login and keep-alive connection, requests until the phase ends."""
    rng = random.Random(seed)
    reader = Reader()
    try:
        # Readers do not start in step: 100 first requests at one instant are a burst
        # no real audience makes, and it alone set the p99.
        await asyncio.sleep(rng.uniform(0, load.think_s))
        while time.monotonic() < load.until:
            route, path, params = next_request(reader, shared, rng)
            began = time.perf_counter()
            try:
                answer = await client.request("GET", path, params=params)
                status, body = answer.status, answer.body
            except (OSError, asyncio.IncompleteReadError):
                status, body = 0, b""  # reset or closed: counted as an error, never hidden
            shared.latencies[route].append(time.perf_counter() - began)
            if 200 <= status < 300:
                learn(route, reader, json.loads(body), shared)
            else:
                shared.errors[route] += 1
                shared.statuses[status] = shared.statuses.get(status, 0) + 1
                reader.cursor = None
            if load.think_s:
                # Capped below uvicorn's 5 s keep-alive, so readers keep their connection.
                await asyncio.sleep(min(rng.expovariate(1 / load.think_s), 4.0))
    finally:
        await client.close()


# -- phases -------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    seconds: float
    shared: Shared
    stored_per_s: float
    offered_per_s: float
    loadgen_cpu: float
    api_cpu: float
    pipeline_cpu: float
    load: tuple[float, float, float]
    #: End-to-end latency (created -> stored) of the scans created during the phase.
    pipeline_ms: list[float]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def run_readers(
    args: argparse.Namespace, ctx: dict[str, Any], shared: Shared, ingest: str
) -> None:
    clients = [
        Connection(ctx["base"], {"Authorization": f"Bearer {token}"}) for token in ctx["tokens"]
    ]
    until = time.monotonic() + args.phase_s
    load = Load(ctx["base"], until, args.think_ms / 1000, args.rate, ctx["pool"])
    tasks = [read_loop(load, client, shared, i) for i, client in enumerate(clients)]
    if ingest == "api":
        tasks.append(post_scans(load, ctx["keys"], shared))
    if ingest == "batch":
        tasks.append(post_batches(load, ctx["keys"], shared, args.batch))
    await asyncio.gather(*tasks)


def run_phase(
    name: str, args: argparse.Namespace, ctx: dict[str, Any], shared: Shared
) -> PhaseResult:
    store: ResultsStore = ctx["store"]
    api, workers = ctx["api_procs"], ctx["worker_procs"]
    before = (store.count_results(TENANT), time.perf_counter(), time.process_time(),
              cpu_seconds(api), cpu_seconds(workers))  # fmt: skip
    started_us = now_us()
    sim = (
        start_simulator(ctx["spec"], ctx["pool"], args.rate, args.phase_s, name)
        if name == "bus"
        else None
    )
    asyncio.run(run_readers(args, ctx, shared, name))
    if sim is not None:
        sim.join()
    wall = time.perf_counter() - before[1]
    stored = store.count_results(TENANT) - before[0]
    offered = {"idle": 0.0, "bus": args.rate}.get(name, shared.posted / wall)
    result = PhaseResult(
        name, wall, shared, stored / wall, offered,
        loadgen_cpu=(time.process_time() - before[2]) / wall,
        api_cpu=(cpu_seconds(api) - before[3]) / wall,
        pipeline_cpu=(cpu_seconds(workers) - before[4]) / wall,
        load=os.getloadavg(), pipeline_ms=[],
    )  # fmt: skip
    time.sleep(2.0)  # the phase's last scans are still in flight
    query = select(records.c.latency_ms).where(
        records.c.tenant == TENANT, records.c.created_at_us >= started_us
    )
    with store.engine.connect() as conn:
        result.pipeline_ms = [float(row[0]) for row in conn.execute(query)]
    return result


def drain(store: ResultsStore, expected: int, timeout_s: float) -> None:
    """Wait until the pipeline has stored ``expected`` results (or stops making progress)."""
    deadline = time.monotonic() + timeout_s
    while store.count_results(TENANT) < expected and time.monotonic() < deadline:
        time.sleep(0.5)


# -- report -------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _row(res: PhaseResult, route: str, lat: list[float], errors: int) -> str:
    rate = len(lat) / res.seconds
    return (f"| {res.name} | {route} | {len(lat)} | {rate:.0f} | {pct(lat, .5):.1f} | "
            f"{pct(lat, .99):.1f} | {errors} |")  # fmt: skip


def report(results: list[PhaseResult], args: argparse.Namespace) -> None:
    print(f"\n{args.readers} readers, think {args.think_ms:g} ms, {args.phase_s:g} s per phase, "
          f"target ingest {args.rate:g} scans/s, {os.cpu_count()} CPUs\n")  # fmt: skip
    print("| phase | route | requests | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for res in results:
        everything: list[float] = []
        for route in ROUTES:
            everything += res.shared.latencies[route]
            print(_row(res, route, res.shared.latencies[route], res.shared.errors[route]))
        print(_row(res, "**all reads**", everything, sum(res.shared.errors.values())))
    print(
        "\n| phase | ingest offered/s | results stored/s | API accepted scans/s | POST non-2xx | "
        "load-gen CPU | API CPU | pipeline CPU | load avg (1/5/15) | scans timed | "
        "pipeline p50 ms | pipeline p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for res in results:
        posted = res.shared.posted / res.seconds
        load = "/".join(f"{x:.2f}" for x in res.load)
        timed = [ms / 1000 for ms in res.pipeline_ms]  # pct() takes seconds
        print(f"| {res.name} | {res.offered_per_s:.0f} | {res.stored_per_s:.0f} | {posted:.0f} | "
              f"{res.shared.post_errors} | {res.loadgen_cpu:.0%} | {res.api_cpu:.0%} | "
              f"{res.pipeline_cpu:.0%} | {load} | {len(timed)} | {pct(timed, .5):.1f} | "
              f"{pct(timed, .99):.1f} |")  # fmt: skip
    statuses = {k: v for r in results for k, v in r.shared.statuses.items()}
    print(f"\nnon-2xx statuses (0: connection error): {statuses or 'none'}")
    print("CPU: 100% = one core; load-gen = this process (readers and uploads)")


# -- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="ingest scans/s")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--think-ms", type=float, default=1000.0, help="mean think time")
    parser.add_argument("--prefill-s", type=float, default=10.0, help="seconds of scans first")
    parser.add_argument("--scanners", type=int, default=10, help="scanner keys for API ingest")
    parser.add_argument("--pool", type=int, default=128, help="distinct scans rendered")
    parser.add_argument("--phases", default="idle,bus,api,batch")
    parser.add_argument("--batch", type=int, default=50, help="scans per protobuf request")
    parser.add_argument("--api-workers", type=int, default=1, help="serve --workers N")
    parser.add_argument("--workdir", type=Path, help="keep bus and store here (default: temp)")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a quieter machine")
    parser.add_argument("--max-wait-s", type=float, default=600.0, help="... this long at most")
    return parser.parse_args()


def setup(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    os.environ.setdefault(JWT_SECRET_ENV, secrets.token_hex(32))
    spec = make_spec(work)
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    bus.close()
    tokens, keys = make_credentials(spec, args.readers, args.scanners)
    print(f"rendering {args.pool} scans...", flush=True)
    pool = ScanPool.build(args.pool)
    port = free_port()
    return {"spec": spec, "tokens": tokens, "keys": keys, "pool": pool,
            "base": f"http://127.0.0.1:{port}", "port": port}  # fmt: skip


def attach_pipeline(
    ctx: dict[str, Any], procs: list[subprocess.Popen[bytes]], args: argparse.Namespace
) -> None:
    store = ResultsStore(ctx["spec"].store)
    ctx["store"] = store
    wait_until(lambda: api_up(ctx["base"]), "the API answering /readyz", procs, 120)
    time.sleep(1)  # every worker process of the pipeline is started by now
    everything = [psutil.Process(p.pid) for p in procs]
    everything += [c for p in everything for c in p.children(recursive=True)]
    ctx["api_procs"] = [p for p in everything if "serve" in p.cmdline()[:5] or
                        (p.parent() and "serve" in p.parent().cmdline()[:5])]  # fmt: skip
    ctx["worker_procs"] = [p for p in everything if p not in ctx["api_procs"]]
    total = int(args.rate * args.prefill_s)
    print(f"prefill: {total} scans at {args.rate:g}/s through the bus...", flush=True)
    sim = start_simulator(ctx["spec"], ctx["pool"], args.rate, args.prefill_s, "pre")
    sim.join()
    drain(store, total, 120)
    print(f"  {store.count_results(TENANT)} results stored", flush=True)


def main() -> None:
    args = parse_args()
    # Other people's work on a shared machine would be measured as ours: wait it out.
    print(f"1-min load before the run: {wait_quiet(args.max_load, args.max_wait_s):.2f}")
    with tempfile.TemporaryDirectory(prefix="api-bench-") as folder:
        work = args.workdir or Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        ctx = setup(args, work)
        procs = start_pipeline(ctx["spec"], ctx["port"], args.api_workers)
        results = []
        try:
            attach_pipeline(ctx, procs, args)
            for name in args.phases.split(","):
                load = os.getloadavg()[0]
                print(f"phase {name}: {args.phase_s:g} s (1-min load {load:.2f})...", flush=True)
                results.append(run_phase(name, args, ctx, Shared()))
                time.sleep(3)  # let the pipeline catch up before the next phase
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            if "store" in ctx:
                ctx["store"].close()
        report(results, args)


if __name__ == "__main__":
    main()
