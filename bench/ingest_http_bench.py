"""How fast the API takes raw DICOM uploads, one scan per request, with a cheap client.

The flagship bench's async httpx client costs ~8 ms of CPU per request on this
machine, so its HTTP-fed figure measures the client as much as the API. This bench
starts ``inferstream up eggs.yaml --serve`` in a temporary folder and posts scans from
N threads of the standard library's ``http.client`` (keep-alive, ~0.35 ms of CPU per
request), for a fixed time; it prints accepted scans/s, latency and the client's CPU.
Loopback only; stops by itself.

    .venv/bin/python bench/ingest_http_bench.py --threads 16 --seconds 10
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from inferstream.api.accounts import Accounts
from inferstream.api.auth import issue_key
from inferstream.apps.eggs import APP
from inferstream.apps.eggs.simulator import ScanPool, stamp
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.store import ResultsStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(spec: PipelineSpec, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "inferstream", "up", str(spec.source)]
    argv += ["--bus", spec.bus, "--store", spec.store, "--blobs", spec.blobs]
    argv += ["--serve", f"127.0.0.1:{port}"]
    env = dict(os.environ, INFERSTREAM_LOG_LEVEL="WARNING")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the API did not start within 60 s")


@dataclass
class Load:
    port: int
    pool: ScanPool
    lanes: int
    until: float
    latencies: list[float] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def post_loop(load: Load, key: str, lane: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", load.port)
    number = lane
    headers = {"Content-Type": "application/dicom", "X-API-Key": key}
    while time.monotonic() < load.until:
        scan, scanner = load.pool.pick(number, 8)
        body, _, _ = stamp(scan, number, "http", scanner)
        began = time.perf_counter()
        conn.request("POST", "/v1/scans", body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        load.latencies.append(time.perf_counter() - began)
        load.accepted[lane] += answer.status == 202
        number += load.lanes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16, help="client threads (connections)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to post")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-http-") as tmp:
        work = Path(tmp)
        spec = load_pipeline(APP.pipeline_path()).with_urls(
            bus=f"sqlite:///{work}/bus.db", store=f"sqlite:///{work}/results.db",
            blobs=f"file://{work}/blobs",
        )  # fmt: skip
        store = ResultsStore(spec.store)
        accounts = Accounts(store)
        accounts.create_tenant("farm")
        # One key per thread: the API's rate limit is per key (200/s by default).
        keys = [issue_key(accounts, "farm", f"s{i}", "device").secret for i in range(args.threads)]
        pool = ScanPool.build(64)
        port = free_port()
        proc = start(spec, port)
        try:
            time.sleep(3)  # workers import their models
            load = Load(port, pool, args.threads, time.monotonic() + args.seconds)
            load.accepted = [0] * args.threads
            family = psutil.Process(proc.pid).children(recursive=True)
            api = [p for p in family if "serve" in p.cmdline()]
            spent = [_cpu(api), _cpu(family)]
            cpu = time.process_time()
            threads = [
                threading.Thread(target=post_loop, args=(load, keys[i], i))
                for i in range(args.threads)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            cpu = time.process_time() - cpu
            spent = [_cpu(api) - spent[0], _cpu(family) - spent[1]]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            store.close()
    ordered = sorted(load.latencies)
    rate = sum(load.accepted) / args.seconds
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    print(
        f"threads {args.threads}, {args.seconds:.0f} s: {rate:.0f} scans/s accepted (202), "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"client CPU {cpu / max(len(ordered), 1) * 1000:.2f} ms/request"
    )
    per_scan = max(sum(load.accepted), 1) / 1000
    print(
        f"CPU per accepted scan: API {spent[0] / per_scan:.2f} ms, "
        f"API and pipeline {spent[1] / per_scan:.2f} ms (API at {spent[0] / args.seconds:.0%} "
        "of a core)"
    )


if __name__ == "__main__":
    main()
