"""Overload fairness: does one tenant sending ten times its share raise another tenant's
latency? The flagship under ``inferstream up --serve``, fed over HTTP by two tenants.

    .venv/bin/python bench/fairness_bench.py              # share 100 scans/s, 30 s a phase

Three phases, each with fresh tenants, in one run (so the ratios hold on a noisy host):

1. **alone**: the fair tenant sends its share; nobody else (the baseline);
2. **flood honouring Retry-After, quotas on** (``--tenant-rate SHARE``): the same, while
   the heavy tenant offers ten times the share from clients that wait what a 429's
   Retry-After says and then send the same scan again (as the edge agent does);
3. **flood ignoring 429s, quotas on**: the heavy tenant's clients go on at ten times the
   share whatever they hear (refused scans dropped by the client);
4. **flood, no quotas**: that flood with the API taking everything.

Each phase starts after 5 s of unmeasured traffic (the workers' first batches). For the
fair tenant: end-to-end latency (accepted -> stored) p50/p99 from its records,
its failed requests, and its p99 against the baseline's; for the heavy one, what it got
stored. Single-scan ``POST /v1/scans`` with raw DICOM, as a scanner sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flagship_load import HttpStats, http_load, phase_rows, wait_stored
from flagship_systems import free_port, http_status
from http_lite import Connection

from inferstream.api.accounts import Accounts
from inferstream.api.auth import issue_key
from inferstream.apps.eggs import APP
from inferstream.apps.eggs.simulator import ScanPool, stamp
from inferstream.store import ResultsStore

CONNECTIONS = 16


class Pipeline:
    """``inferstream up --serve`` on a folder of its own, restartable with other options."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.urls = ["--bus", f"sqlite:///{folder / 'bus.db'}",
                     "--store", f"sqlite:///{folder / 'results.db'}",
                     "--blobs", f"file://{folder / 'blobs'}"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.serve = ""

    def start(self, tenant_rate: float | None) -> None:
        self.serve = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "inferstream", "up", str(APP.pipeline_path()), *self.urls,
                "--serve", self.serve]  # fmt: skip
        argv += ["--tenant-rate", str(tenant_rate)] if tenant_rate else []
        with (self.folder / "up.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if http_status(f"http://{self.serve}/readyz") == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise SystemExit(f"the pipeline did not start; see {self.folder / 'up.log'}")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=120)


@dataclass
class Phase:
    """One phase's senders: each tenant's scans at a rate, for ``seconds``."""

    pipe: Pipeline
    pool: ScanPool
    seconds: float
    stats: dict[str, HttpStats] = field(default_factory=dict)

    def send(self, tenant: str, keys: list[str], rate: float) -> threading.Thread:
        def request(number: int, _created: int) -> tuple[bytes, dict[str, str]]:
            scan, scanner = self.pool.pick(number, 8)
            data, _, _ = stamp(scan, number, tenant, scanner)
            key = keys[number % len(keys)]
            return data, {"content-type": "application/dicom", "x-api-key": key}

        def run() -> None:
            url = f"http://{self.pipe.serve}/v1/scans"
            self.stats[tenant] = http_load(url, request, rate=rate, seconds=self.seconds,
                                           connections=CONNECTIONS)  # fmt: skip

        thread = threading.Thread(target=run, name=tenant)
        thread.start()
        return thread

    def send_politely(self, tenant: str, keys: list[str], rate: float) -> threading.Thread:
        """``rate`` scans/s offered as edge agents offer them: a client told 429 waits
        what Retry-After says, then sends the same scan again (nothing dropped)."""

        def run() -> None:
            self.stats[tenant] = asyncio.run(self._polite(tenant, keys, rate))

        thread = threading.Thread(target=run, name=tenant)
        thread.start()
        return thread

    async def _polite(self, tenant: str, keys: list[str], rate: float) -> HttpStats:
        stats, url = HttpStats(), f"http://{self.pipe.serve}"
        lanes = CONNECTIONS
        started = time.monotonic()

        async def lane(index: int) -> None:
            conn, number = Connection(url), index
            while time.monotonic() - started < self.seconds:
                due = started + number / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                scan, scanner = self.pool.pick(number, 8)
                data, _, _ = stamp(scan, number, tenant, scanner)
                headers = {"content-type": "application/dicom", "x-api-key": keys[index % 8]}
                answer = await conn.request("POST", "/v1/scans", body=data, headers=headers)
                if answer.status == 429:
                    stats.errors += 1  # refused for now; the same scan again, later
                    await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
                    continue
                stats.ok += answer.status < 300
                number += lanes
            await conn.close()

        await asyncio.gather(*(lane(i) for i in range(lanes)))
        stats.sent = stats.ok + stats.errors
        return stats


def phase(load: Phase, store: ResultsStore, name: str, share: float, *, flood: str
          ) -> dict[str, float]:  # fmt: skip
    """One phase; ``flood`` is "" (none), "blind" (429s ignored) or "polite" (waited)."""
    accounts = Accounts(store)
    fair, heavy = f"fair-{name}", f"heavy-{name}"
    keys = {}
    for tenant in (fair, heavy):
        accounts.create_tenant(tenant)
        keys[tenant] = [issue_key(accounts, tenant, f"k{i}", "device").secret for i in range(8)]
    senders = [load.send(fair, keys[fair], share)]
    if flood == "blind":
        senders.append(load.send(heavy, keys[heavy], 10 * share))
    elif flood == "polite":
        senders.append(load.send_politely(heavy, keys[heavy], 10 * share))
    for sender in senders:
        sender.join()
    stats = load.stats
    wait_stored(store, fair, stats[fair].ok)
    if flood:
        wait_stored(store, heavy, stats[heavy].ok)
    rows = phase_rows(store, fair)
    return {"p50": rows.pct(0.5), "p99": rows.pct(0.99), "stored": rows.count,
            "failed": stats[fair].errors,
            "heavy_ok": stats[heavy].ok if flood else 0,
            "heavy_refused": stats[heavy].errors if flood else 0}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--share", type=float, default=100.0, help="scans/s per tenant (100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of a phase (30)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fairness-"))
    pipe = Pipeline(folder)
    results = {}
    pool = ScanPool.build(64, seed=7)
    plan = (("alone", args.share, ""),
            ("flood honouring Retry-After, quotas on", args.share, "polite"),
            ("flood ignoring 429s, quotas on", args.share, "blind"),
            ("flood, no quotas", None, "blind"))  # fmt: skip
    for index, (name, quota, flood) in enumerate(plan):
        print(f"phase {name}: {args.seconds:g} s ...", flush=True)
        pipe.start(quota)
        store = ResultsStore(f"sqlite:///{folder / 'results.db'}")
        try:
            # Unmeasured first: the workers' first batches (model loads, caches) would
            # otherwise fall in the first phase's tail.
            phase(Phase(pipe, pool, 5.0), store, f"warm{index}", args.share, flood="")
            load = Phase(pipe, pool, args.seconds)
            results[name] = phase(load, store, f"p{index}", args.share, flood=flood)
        finally:
            store.close()
            pipe.stop()
    base = results["alone"]["p99"]
    print(f"\nshare {args.share:g} scans/s per tenant; the heavy tenant offers ten times that\n")
    print(
        "| phase | fair p50 ms | fair p99 ms | p99 vs alone | fair failed | heavy stored "
        "| heavy refused |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p99'] / base:.2f}x | "
              f"{r['failed']:.0f} | {r['heavy_ok']:.0f} | {r['heavy_refused']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
