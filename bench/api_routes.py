"""The API's CPU a request, route by route, this tree against another commit.

``api_bench.py`` measures the API under a mix of readers and ingest; this one asks where
a read's CPU goes. It fills one store through the flagship pipeline (``--scans`` scans
through ``inferstream up``, then stops it), then, for each tree in turn (``--rounds``
times, alternating), starts ``inferstream serve`` on that tree's ``src`` over the same
store and drives each route for ``--seconds`` with ``--conns`` keep-alive connections in a
closed loop (``http_lite``: the client costs tens of µs a request). It prints, per tree
and route, requests/s, the API process's CPU a request (user + system, from its
``/proc`` counters) and the share of it spent in the kernel, and the p50 latency; then
the medians over the rounds. Every answer must be a 200 (the run stops otherwise). One
route lists as a second tenant that a sharing grant lets read every record.

Several connections at once show what the routes cost when requests overlap: SQLite's
driver lets go of the GIL at every row it steps, and with another thread waiting each
row becomes a hand-over (``--conns 1 4``). Usage::

    .venv/bin/python bench/api_routes.py --against HEAD~1 [--conns 1 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil  # type: ignore[import-untyped]
from api_bench import (
    TENANT,
    api_up,
    drain,
    free_port,
    make_credentials,
    make_spec,
    start_simulator,
    wait_until,
)
from bus_handoff import add_against, trees_against
from http_lite import Connection

from inferstream.api.accounts import Accounts
from inferstream.api.auth import Principal, hash_password, issue_token
from inferstream.api.settings import JWT_SECRET_ENV, ApiSettings
from inferstream.apps.eggs import APP
from inferstream.apps.eggs.simulator import ScanPool
from inferstream.bus import open_bus
from inferstream.envelope import now_us
from inferstream.pipeline import PipelineSpec
from inferstream.runner import ensure_topics
from inferstream.store import ResultsStore
from inferstream.store.sharing import Sharing


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    params: dict[str, object]
    #: Another credential than the bench tenant's (a bearer token), if any.
    token: str = ""


@dataclass(frozen=True)
class Figures:
    per_s: float
    cpu_ms: float
    kernel_pct: float
    p50_ms: float


#: A second tenant the bench's tenant shares every eggs record with (a sharing grant).
PARTNER = "bench-partner"


def partner_token(spec: PipelineSpec) -> str:
    """A viewer of :data:`PARTNER`, which a live grant lets read every eggs record of
    :data:`TENANT`: its listings run through the grants."""
    with ResultsStore(spec.store) as store:
        Accounts(store).create_tenant(PARTNER)
        Accounts(store).create_user(PARTNER, "partner-viewer", hash_password("x" * 16), "viewer")
        day_us = 86_400_000_000
        Sharing(store).grant(TENANT, PARTNER, APP, expires_at_us=now_us() + day_us,
                             created_by="bench")  # fmt: skip
    settings = ApiSettings(spec, "scans.raw", jwt_secret=os.environ[JWT_SECRET_ENV])
    return issue_token(settings, Principal("partner-viewer", PARTNER, "viewer"))


def fill(spec: PipelineSpec, scans: int, rate: float) -> None:
    """``scans`` scans through the flagship pipeline into the store, every one stored."""
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    bus.close()
    urls = ["--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs]
    env = dict(os.environ, INFERSTREAM_LOG_LEVEL="WARNING")
    up = subprocess.Popen([sys.executable, "-m", "inferstream", "up", str(spec.source), *urls],
                          env=env, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        print(f"filling the store: {scans} scans at {rate:g}/s through the pipeline...", flush=True)
        sim = start_simulator(spec, ScanPool.build(128), rate, scans / rate, "fill")
        sim.join()
        with ResultsStore(spec.store) as store:
            drain(store, scans, 300)
            stored = store.count_results(TENANT)
        if stored < scans:
            raise SystemExit(f"only {stored} of {scans} scans were stored; see 'inferstream up'")
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)


async def routes_of(base: str, headers: dict[str, str], partner: str) -> list[Route]:
    """The routes to drive, with ids and a cursor taken from a first listing."""
    client = Connection(base, headers)
    answer = await client.request("GET", "/v1/results", params={"limit": 50, "order": "desc"})
    await client.close()
    page = json.loads(answer.body)
    first = page["items"][0]
    newest: dict[str, object] = {"limit": 50, "order": "desc"}
    second = {**newest, "cursor": page["next_cursor"]}
    now = datetime.now(UTC).isoformat()
    return [
        Route("GET /healthz (no auth)", "/healthz", {}),
        Route("GET /v1/results (50)", "/v1/results", newest),
        Route("GET /v1/results (50, 2nd page)", "/v1/results", second),
        # Created since now: a window that holds nothing (the newest scans are older).
        Route("GET /v1/results (empty window)", "/v1/results", {**newest, "since": now}),
        Route("GET /v1/scans/{id}", f"/v1/scans/{first['root_id']}", {}),
        Route("GET /v1/apps/eggs/records/{id}", f"/v1/apps/eggs/records/{first['id']}", {}),
        Route("GET /v1/groups/{group}/summary", f"/v1/groups/{first['group']}/summary", {}),
        # As the partner: every record it lists is shared with it through a grant.
        Route("GET /v1/results (50, through a grant)", "/v1/results", newest, partner),
    ]


@dataclass(frozen=True)
class Api:
    """A running API: where it answers, the credential to send, its process."""

    base: str
    headers: dict[str, str]
    pid: int


async def drive(api: Api, route: Route, conns: int, seconds: float) -> Figures:
    """``conns`` closed-loop connections on one route for ``seconds``; the API's CPU."""
    base = api.base
    headers = {"Authorization": f"Bearer {route.token}"} if route.token else api.headers
    clients = [Connection(base, headers) for _ in range(conns)]
    for client in clients:  # connected, and the route's statements compiled, before timing
        await client.request("GET", route.path, params=route.params)
    latencies: list[float] = []
    until = time.monotonic() + seconds

    async def loop(client: Connection) -> None:
        await asyncio.sleep(random.uniform(0, 0.002))
        while time.monotonic() < until:
            began = time.perf_counter()
            answer = await client.request("GET", route.path, params=route.params)
            latencies.append(time.perf_counter() - began)
            if answer.status != 200:
                raise SystemExit(f"{route.name} answered {answer.status}: {answer.body[:200]!r}")

    process = psutil.Process(api.pid)
    before, started = process.cpu_times(), time.monotonic()
    await asyncio.gather(*(loop(client) for client in clients))
    after, elapsed = process.cpu_times(), time.monotonic() - started
    for client in clients:
        await client.close()
    cpu = (after.user - before.user) + (after.system - before.system)
    latencies.sort()
    return Figures(
        per_s=len(latencies) / elapsed,
        cpu_ms=1e3 * cpu / len(latencies),
        kernel_pct=100 * (after.system - before.system) / cpu if cpu else 0.0,
        p50_ms=1e3 * latencies[len(latencies) // 2],
    )


def one_tree(
    src: Path, spec: PipelineSpec, tokens: tuple[str, str], args: argparse.Namespace
) -> dict[tuple[str, int], Figures]:
    """Serve the store from ``src``'s code and drive every route at every ``--conns``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    urls = ["--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs]
    # No rate limit in the way of a closed loop from one credential.
    unlimited = ["--rate", "1e9", "--burst", str(10**9)]
    argv = [sys.executable, "-m", "inferstream", "serve", str(spec.source), *urls,
            "--host", "127.0.0.1", "--port", str(port), *unlimited]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(src), INFERSTREAM_LOG_LEVEL="WARNING")
    serve = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    token, partner = tokens
    api = Api(base, {"Authorization": f"Bearer {token}"}, serve.pid)
    try:
        wait_until(lambda: api_up(base), "the API answering /readyz", [serve], 120)

        async def every_route() -> dict[tuple[str, int], Figures]:
            found = {}
            for route in await routes_of(api.base, api.headers, partner):
                for conns in args.conns:
                    found[(route.name, conns)] = await drive(api, route, conns, args.seconds)
            return found

        return asyncio.run(every_route())
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)


def row(name: str, route: str, conns: int, f: Figures) -> str:
    return (f"| {name} | {route} | {conns} | {f.per_s:.0f} | {f.cpu_ms:.3f} | "
            f"{f.kernel_pct:.0f} | {f.p50_ms:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_against(parser)
    parser.add_argument("--scans", type=int, default=10_000, help="scans stored first")
    parser.add_argument("--fill-rate", type=float, default=1000, help="scans/s while filling")
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 4],
                        help="connections at once, one pass each (default 1 4)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5, help="time on each route")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each tree")
    args = parser.parse_args()
    os.environ.setdefault(JWT_SECRET_ENV, secrets.token_hex(32))
    with tempfile.TemporaryDirectory(prefix="api-routes-") as tmp:
        work = Path(tmp)
        spec = make_spec(work)
        trees = trees_against(args.against, work / "trees")
        tokens = make_credentials(spec, 1, 0)[0][0], partner_token(spec)
        fill(spec, args.scans, args.fill_rate)
        rounds: dict[str, list[dict[tuple[str, int], Figures]]] = {name: [] for name in trees}
        print("\n| round / tree | route | conns | req/s | CPU ms a request | kernel % | p50 ms |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for round_no in range(args.rounds):
            for name, src in trees.items():
                found = one_tree(src, spec, tokens, args)
                rounds[name].append(found)
                for (route, conns), figures in found.items():
                    print(row(f"{round_no + 1} {name}", route, conns, figures), flush=True)
    print(f"\nmedians over {args.rounds} rounds, {args.seconds:g} s a route, "
          f"{args.scans} records stored")  # fmt: skip
    print("\n| tree | route | conns | req/s | CPU ms a request | kernel % | p50 ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, found_rounds in rounds.items():
        for key in found_rounds[0]:
            each = [found[key] for found in found_rounds]
            median = Figures(*(statistics.median(getattr(f, field) for f in each)
                               for field in Figures.__dataclass_fields__))  # fmt: skip
            print(row(name, key[0], key[1], median))


if __name__ == "__main__":
    main()
