"""Does a dashboard logging in stall the pipeline? (issue 21)

The flagship (``inferstream up --serve``, embedded bus, SQLite) is fed at a steady
``--rate`` for ``--seconds``; at ``--connect-at`` seconds ``--clients`` dashboard clients
log in and subscribe to the live feed (``/v1/live``, the WebSocket the dashboard reads;
the first snapshot makes the API fold the last minute of results), and stay until the
end. Scans are grouped by when they were created: before the login (the baseline of
the same run), the first ``--window`` seconds after it, and the rest. For each group
it prints the end-to-end latency p50/p99/max, and the API's CPU in each period; and the
frames the bus's log took a scan and how often it started over (``wal_frames.py``).
Usage::

    .venv/bin/python bench/dashboard_load.py --rate 500 --seconds 40 --connect-at 20
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
from flagship_load import ProcMonitor
from flagship_systems import BusPipeline, free_port, http_status
from sqlalchemy import select
from wal_frames import LogFrames, bus_file
from websockets.sync.client import connect

from inferstream.api.accounts import Accounts
from inferstream.api.auth import hash_password
from inferstream.apps.eggs.simulator import ScanPool
from inferstream.store import ResultsStore
from inferstream.store.schema import records

TENANT = "dash-load"


def _viewer(store: ResultsStore) -> tuple[str, str]:
    accounts = Accounts(store)
    if not accounts.tenant_exists(TENANT):
        accounts.create_tenant(TENANT)
    password = secrets.token_urlsafe(12)
    accounts.create_user(TENANT, "viewer", hash_password(password), "viewer")
    return f"{TENANT}/viewer", password


def _token(base: str, username: str, password: str) -> str:
    form = urllib.parse.urlencode({"username": username, "password": password}).encode()
    with urllib.request.urlopen(f"{base}/auth/token", data=form, timeout=10) as answer:
        return str(json.loads(answer.read())["access_token"])


def _watch(base: str, token: str, stop: threading.Event, seen: list[float]) -> None:
    """One dashboard client: subscribe, then read snapshots until ``stop``."""
    url = base.replace("http://", "ws://") + "/v1/live"
    with connect(url, open_timeout=10) as socket:
        socket.send(json.dumps({"token": token}))
        while not stop.is_set():
            try:
                socket.recv(timeout=1.0)
            except TimeoutError:
                continue
            seen.append(time.monotonic())


def _answers(url: str) -> bool:
    try:
        return http_status(url) == 200
    except OSError:
        return False


def _api_process(pipe: BusPipeline) -> psutil.Process | None:
    """The ``serve`` child of ``inferstream up`` (the API and the live hub)."""
    for child in psutil.Process(pipe.procs[-1].pid).children(recursive=True):
        try:
            if "serve" in child.cmdline():
                return child
        except psutil.Error:
            continue
    return None


def _cpu_s(proc: psutil.Process | None) -> float:
    if proc is None:
        return float("nan")
    times = proc.cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True)
class Row:
    """One stored scan: its creation, end-to-end latency and where that time went."""

    created_us: int
    ms: float
    #: Creation to the end of the classify stage's batch (queueing on scans.raw included).
    classified_ms: float
    #: From there to the row's storing (scans.predicted, the store stage's batch).
    stored_ms: float


def _latencies(store: ResultsStore) -> list[Row]:
    c = records.c
    stmt = select(c.created_at_us, c.latency_ms, c.stored_at_us, c.lineage).where(
        c.tenant == TENANT
    )
    rows = []
    with store.engine.connect() as conn:
        for created, ms, stored, lineage in conn.execute(stmt):
            steps = json.loads(lineage) if isinstance(lineage, str) else lineage
            done = int(steps[0]["at_us"]) if steps else int(stored)
            rows.append(Row(int(created), float(ms), (done - created) / 1000,
                            (stored - done) / 1000))  # fmt: skip
    return rows


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _report(rows: list[Row], cuts_us: tuple[int, int], cpu: list[float]) -> None:
    login_us, settled_us = cuts_us
    groups = {
        "before the login (baseline)": [r for r in rows if r.created_us < login_us],
        "first window after it": [r for r in rows if login_us <= r.created_us < settled_us],
        "the rest, connected": [r for r in rows if r.created_us >= settled_us],
    }
    print(f"{'scans created':30} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'API CPU %':>9}  {'classified p50/p99':>18}  {'then stored p50/p99':>19}")  # fmt: skip
    for (name, group), share in zip(groups.items(), cpu, strict=True):
        values = [r.ms for r in group]
        top = max(values) if values else float("nan")
        parts = "  ".join(
            f"{_pct(v, 0.5):8.1f} /{_pct(v, 0.99):8.1f}"
            for v in ([r.classified_ms for r in group], [r.stored_ms for r in group])
        )
        print(f"{name:30} {len(values):6d} {_pct(values, 0.5):8.1f} {_pct(values, 0.99):8.1f} "
              f"{top:8.1f} {share:9.0f}  {parts}")  # fmt: skip
    _worst_seconds(rows)


def _worst_seconds(rows: list[Row], show: int = 5) -> None:
    """The seconds (by creation) with the slowest scans: a tail made of a few stalls shows
    as a few bad seconds, one spread evenly as many alike."""
    if not rows:
        return
    start = min(r.created_us for r in rows)
    by_second: dict[int, list[Row]] = {}
    for row in rows:
        by_second.setdefault((row.created_us - start) // 1_000_000, []).append(row)
    worst = sorted(by_second.items(), key=lambda kv: -max(r.ms for r in kv[1]))[:show]
    p99 = _pct([r.ms for r in rows], 0.99)
    over = sum(1 for r in rows if r.ms > p99)
    seconds = sum(1 for group in by_second.values() if any(r.ms > p99 for r in group))
    print(f"the {over} scans over the p99 ({p99:.1f} ms) were created in {seconds} of "
          f"{len(by_second)} seconds; the worst seconds:")  # fmt: skip
    for second, group in sorted(worst):
        slow = max(group, key=lambda r: r.ms)
        print(
            f"  s {second:3d}: max {slow.ms:7.1f} ms (classified {slow.classified_ms:6.1f}, "
            f"then stored {slow.stored_ms:6.1f}), p50 {_pct([r.ms for r in group], 0.5):6.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="scans a second (500)")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to feed (40)")
    parser.add_argument("--connect-at", type=float, default=20.0,
                        help="seconds into the feed when the clients log in (20)")  # fmt: skip
    parser.add_argument("--window", type=float, default=5.0,
                        help="seconds after the login counted apart (5)")  # fmt: skip
    parser.add_argument("--clients", type=int, default=1, help="dashboard clients (1)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}; building the scan pool...")
    pool = ScanPool.build(512)
    monitor = ProcMonitor()
    monitor.start()
    with tempfile.TemporaryDirectory(prefix="dashboard-load-") as tmp:
        pipe = BusPipeline(pool, monitor, Path(tmp))
        pipe.serve = f"127.0.0.1:{free_port()}"
        base = f"http://{pipe.serve}"
        pipe.start()
        try:
            deadline = time.monotonic() + 60
            while not _answers(f"{base}/healthz"):
                if time.monotonic() > deadline:
                    log = (Path(tmp) / f"{pipe.name}.log").read_text()[-2000:]
                    raise SystemExit(f"the API did not answer at {base}; log:\n{log}")
                time.sleep(0.2)
            assert pipe.store is not None
            username, password = _viewer(pipe.store)
            token = _token(base, username, password)
            api = _api_process(pipe)
            count = int(args.rate * args.seconds)
            feeder = threading.Thread(target=pipe.offer, args=(TENANT, args.rate, count))
            print(f"feeding {count} scans at {args.rate:.0f}/s; "
                  f"{args.clients} client(s) log in at {args.connect_at:.0f} s")  # fmt: skip
            start_s = time.monotonic()
            cpu_marks = [_cpu_s(api)]
            frames = LogFrames(bus_file(pipe.spec.bus)).start()
            feeder.start()
            time.sleep(args.connect_at)
            login_us = time.time_ns() // 1000
            cpu_marks.append(_cpu_s(api))
            stop = threading.Event()
            seen: list[float] = []
            clients = [threading.Thread(target=_watch, args=(base, token, stop, seen))
                       for _ in range(args.clients)]  # fmt: skip
            for client in clients:
                client.start()
            time.sleep(args.window)
            cpu_marks.append(_cpu_s(api))
            feeder.join()
            fed_s = time.monotonic() - start_s
            frames.stop()
            cpu_marks.append(_cpu_s(api))
            deadline = time.monotonic() + 60
            while pipe.store.count_results(TENANT) < count and time.monotonic() < deadline:
                time.sleep(0.2)
            stop.set()
            for client in clients:
                client.join(timeout=10)
            rows = _latencies(pipe.store)
        finally:
            pipe.stop()
            monitor.stop()
    spans = [args.connect_at, args.window, fed_s - args.connect_at - args.window]
    cpu = [100 * (b - a) / s for a, b, s in zip(cpu_marks[:-1], cpu_marks[1:], spans, strict=True)]
    print(f"stored {len(rows)} of {count}; {len(seen)} snapshots received; the bus's log: "
          f"{frames.frames / max(len(rows), 1):.2f} frames a scan, {frames.restarts} restarts "
          f"(one every {fed_s / max(frames.restarts, 1):.1f} s)")  # fmt: skip
    _report(rows, (login_us, login_us + int(args.window * 1e6)), cpu)


if __name__ == "__main__":
    main()
