"""Audit cost: API ingest requests/s and the API's CPU per request, audit off and on.

Not a test: it prints a table. Each run starts the eggs API (no stage workers: only the
API's own work is measured) under uvicorn in a fresh process, on its own SQLite bus and
store, with the audit off or on (``ApiSettings.audit``), then POSTs ``--requests``
raw DICOM scans to ``/v1/scans`` from ``--clients`` keep-alive connections in a closed
loop (each client sends its next scan as soon as the answer is in). Modes take turns
round by round; the table shows each mode's median and best (CPU: the API process's
user and system time, the audit writer's thread included, per request). At the end of
an ``on`` run the store's audit log must hold one entry per request and verify.

    .venv/bin/python bench/audit_bench.py [--requests 3000] [--clients 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from http_lite import Connection

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "api"))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

MODES = ("off", "on")
TENANT = "bench"
DICOM = {"Content-Type": "application/dicom"}


def _serve(folder: str, audit: bool, port: int) -> None:
    import dataclasses

    import uvicorn

    from inferstream.api import ApiSettings, create_app
    from inferstream.api.ops import UVICORN_OPTIONS
    from inferstream.apps.eggs import APP
    from inferstream.pipeline import load_pipeline

    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{folder}/bus.db", store=f"sqlite:///{folder}/results.db",
        blobs=f"file://{folder}/blobs",
    )  # fmt: skip
    settings = ApiSettings(spec, "scans.raw", "b" * 40, rate_per_s=1e6, burst=10**6)
    settings = dataclasses.replace(settings, audit=audit, audit_key="k" * 32)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, **UVICORN_OPTIONS)


def _key(folder: str) -> str:
    from inferstream.api.accounts import Accounts
    from inferstream.api.auth import issue_key
    from inferstream.store import ResultsStore

    store = ResultsStore(f"sqlite:///{folder}/results.db")
    accounts = Accounts(store)
    accounts.create_tenant(TENANT)
    secret = issue_key(accounts, TENANT, "scanner", "device").secret
    store.close()
    return secret


async def _drive(base: str, key: str, scans: list[bytes], total: int, clients: int) -> int:
    left = iter(range(total))
    failed = 0

    async def client() -> None:
        nonlocal failed
        conn = Connection(base, {"X-API-Key": key})
        for n in left:
            answer = await conn.request("POST", "/v1/scans", body=scans[n % len(scans)],
                                        headers=DICOM)  # fmt: skip
            failed += answer.status != 202
        await conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return failed


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def measure(mode: str, args: argparse.Namespace, scans: list[bytes]) -> dict[str, Any]:
    from broker_testing import free_port

    with tempfile.TemporaryDirectory(prefix="audit-bench-") as folder:
        key = _key(folder)
        port = free_port()
        server = multiprocessing.Process(target=_serve, args=(folder, mode == "on", port))
        server.start()
        base = f"http://127.0.0.1:{port}"
        while not _up(base):
            time.sleep(0.1)
        proc = psutil.Process(server.pid)
        cpu_before, started = sum(proc.cpu_times()[:2]), time.monotonic()
        failed = asyncio.run(_drive(base, key, scans, args.requests, args.clients))
        seconds = time.monotonic() - started
        cpu = sum(proc.cpu_times()[:2]) - cpu_before
        server.terminate()  # SIGTERM: uvicorn shuts down, the writer flushes
        server.join()
        entries = _check(folder, mode)
    return {"rate": args.requests / seconds, "cpu_us": cpu / args.requests * 1e6,
            "failed": failed, "entries": entries}  # fmt: skip


def _check(folder: str, mode: str) -> int:
    from inferstream.store import ResultsStore
    from inferstream.store.audit import AuditLog

    store = ResultsStore(f"sqlite:///{folder}/results.db")
    audit = AuditLog(store, b"k" * 32)
    result = audit.verify(TENANT)
    store.close()
    assert result.ok, result
    return result.entries


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from api_testing import dicom_bytes

    scans = [dicom_bytes(seed=n) for n in range(32)]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            runs[mode].append(measure(mode, args, scans))
    print(f"{args.requests} POST /v1/scans, {args.clients} clients, {args.rounds} runs each")
    print(f"{'audit':<6} {'requests/s median':>18} {'best':>7}   CPU µs/request median  "
          "best  failed  entries")  # fmt: skip
    for mode in MODES:
        rates, cpus = [r["rate"] for r in runs[mode]], [r["cpu_us"] for r in runs[mode]]
        failed = sum(r["failed"] for r in runs[mode])
        entries = {r["entries"] for r in runs[mode]}
        print(f"{mode:<6} {statistics.median(rates):>18,.0f} {max(rates):>7,.0f}   "
              f"{statistics.median(cpus):>21,.0f} {min(cpus):>5,.0f}  {failed:>6}  "
              f"{sorted(entries)}")  # fmt: skip


if __name__ == "__main__":
    main()
