"""Flagship performance: the eggs pipeline against its ceiling and the usual alternatives.

One command, one run on this machine::

    .venv/bin/python bench/flagship_bench.py [--quick]

1. ceiling: the flagship's steps (decode, preprocess, classify, store) in a tight loop,
   batch 64, in 1 process and in 2 at once (``flagship_ceiling``);
2. peers: Celery + Redis (one task per scan) and a synchronous FastAPI endpoint
   (uvicorn, 2 workers), same scans, same model, same store (``flagship_peers``);
3. the pipeline (``inferstream up``): a backlog of 10x the ceiling's rate for
   ``backlog_s`` seconds, written with the workers stopped and drained by the
   pipeline alone (its throughput without a generator beside it; RSS start/peak/end
   per process); then fed through the bus by the scanner simulator: the highest
   offered rate it keeps up with (rising 10 % a step), latency p50/p99 at 25%, 50% and
   90% of that maximum, at 1000/s and at the Celery peer's 90% point; CPU time per scan
   over all its processes;
4. the pipeline fed through its API (``POST /v1/scans``, raw DICOM, ``http_lite`` client).

Every process's RSS is sampled every 0.5 s throughout. Prints a table with the goal
ratios, writes ``bench/results/flagship.json`` and ``docs/flagship-latency.png``
(``--quick``: ``bench/results/flagship-quick.json`` and ``flagship-latency-quick.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flagship_ceiling import run_ceiling
from flagship_load import ProcMonitor, phase_rows, sample_counts, steady_rate, wait_stored
from flagship_report import plot, table
from flagship_systems import BusPipeline, CeleryPeer, FastApiPeer, HttpPipeline, System

from inferstream.apps.eggs.simulator import ScanPool

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "flagship.json"
PLOT = ROOT / "docs" / "flagship-latency.png"
QUICK_RESULTS = ROOT / "bench" / "results" / "flagship-quick.json"
QUICK_PLOT = ROOT / "bench" / "results" / "flagship-latency-quick.png"
MAX_LOAD = 1.5  # wait for the 1-minute load average to fall below this before starting


@dataclass(frozen=True)
class Plan:
    quick: bool
    pool: int
    ceiling_scans: int
    max_s: float
    rate_s: float
    backlog_s: float
    search_s: float


QUICK = Plan(True, pool=128, ceiling_scans=640, max_s=3, rate_s=1.5, backlog_s=0.3, search_s=1.5)
FULL = Plan(False, pool=512, ceiling_scans=3840, max_s=15, rate_s=10, backlog_s=1.2, search_s=4)


class Bench:
    def __init__(self, plan: Plan, pool: ScanPool, workdir: Path) -> None:
        self.plan = plan
        self.pool = pool
        self.workdir = workdir
        self.monitor = ProcMonitor()
        self.monitor.watch("bench", os.getpid())
        self.monitor.start()

    def _cpu(self, system: System) -> tuple[float, float]:
        return self.monitor.cpu_s(system.name), time.process_time()

    def _costs(self, system: System, before: tuple[float, float], scans: int) -> dict[str, float]:
        cpu, gen = self._cpu(system)
        spent, generator = cpu - before[0], gen - before[1]
        return {
            "cpu_ms_per_scan": spent / max(scans, 1) * 1e3,
            "generator_cpu_ms_per_scan": generator / max(scans, 1) * 1e3,
            "generator_cpu_share": generator / max(spent + generator, 1e-9),
        }

    def max_phase(self, system: System, overload: float | None) -> dict[str, Any]:
        """Offer more than ``system`` takes (closed-loop HTTP when ``overload`` is None)."""
        assert system.store is not None
        tenant, seconds = f"{system.name}-max", self.plan.max_s
        before = self._cpu(system)
        if overload is None:
            target: Any = system.offer_http  # type: ignore[attr-defined]
            args: tuple[Any, ...] = (tenant, None, seconds)
        else:
            target, args = system.offer, (tenant, overload, int(overload * seconds))
        sender = threading.Thread(target=target, args=args)
        started = time.monotonic()
        sender.start()
        samples = sample_counts(system.store, tenant, lambda: not sender.is_alive())
        offered_s = time.monotonic() - started
        sent = args[2] if overload is not None else system.last_http.ok  # type: ignore[attr-defined]
        system.settle()
        stored = wait_stored(system.store, tenant, sent, stall_s=5 if overload else 30)
        rows = phase_rows(system.store, tenant)
        return {
            "label": "max", "offered_per_s": sent / offered_s, "sent": sent, "stored": stored,
            "throughput_per_s": steady_rate(samples), "p50_ms": rows.pct(0.5),
            "p99_ms": rows.pct(0.99), **self._costs(system, before, stored),
        }  # fmt: skip

    def rate_phase(self, system: System, label: str, rate: float) -> dict[str, Any]:
        assert system.store is not None
        tenant = f"{system.name}-{label}-{rate:.0f}".replace("%", "pct").replace(" ", "-")
        count = max(int(rate * self.plan.rate_s), 50)
        before = self._cpu(system)
        started = time.monotonic()
        system.offer(tenant, rate, count)
        offered_s = time.monotonic() - started
        stored = wait_stored(system.store, tenant, count, stall_s=15)
        rows = phase_rows(system.store, tenant)
        point = {
            "label": label, "offered_per_s": rate, "achieved_offer_per_s": count / offered_s,
            "sent": count, "stored": stored, "throughput_per_s": rows.throughput,
            "p50_ms": rows.pct(0.5), "p99_ms": rows.pct(0.99),
            **self._costs(system, before, stored),
        }  # fmt: skip
        print(f"  {system.name:14} {label:>10} offered {rate:7.0f}/s -> {rows.throughput:7.0f}/s"
              f"  p50 {point['p50_ms']:7.1f} ms  p99 {point['p99_ms']:7.1f} ms"
              f"  cpu {point['cpu_ms_per_scan']:.2f} ms/scan")  # fmt: skip
        return point

    def backlog(self, system: BusPipeline, rate: float) -> dict[str, Any]:
        """10x ``rate`` for ``backlog_s`` seconds' worth waiting on the bus, drained by
        the pipeline alone; RSS per process while it drains.

        The workers are stopped while the backlog is written: offered to running workers
        on the same 2 cores, the generator only outpaces them a little and the "backlog"
        stays small. Started again, they drain it with no generator beside them.
        """
        assert system.store is not None
        tenant, count = "pipeline-backlog", int(10 * rate * self.plan.backlog_s)
        system.pause()
        started = time.monotonic()
        system.offer(tenant, 1e6, count)
        emitted_s = time.monotonic() - started
        system.resume()
        # Imports and model loading come first: RSS is tracked once every worker is busy,
        # 2 s after the first result and at least a tenth of the backlog in.
        first = sample_counts(system.store, tenant, lambda: system.store.count_results(tenant) > 0)
        warm = time.monotonic() + 2.0
        sample_counts(system.store, tenant, lambda: time.monotonic() > warm
                      and system.store.count_results(tenant) >= count // 10)  # fmt: skip
        self.monitor.open_window(system.name)
        before, stored_before = self._cpu(system), system.store.count_results(tenant)
        drain = sample_counts(system.store, tenant, _until_count(system, tenant, count))
        costs = self._costs(system, before, drain[-1][1] - stored_before)
        tracks = self.monitor.close_window()
        flat = all(t.peak <= t.start + max(32.0, 0.15 * t.start) for t in tracks)
        return {
            "scans": count, "emitted_per_s": count / emitted_s,
            "backlog_at_end_of_offer": count, "start_s": first[-1][0] - first[0][0],
            "stored": drain[-1][1], "drain_per_s": steady_rate(drain, skip=0.1),
            "rss_flat": flat, "rss_mib": [asdict(t) for t in tracks],
            "cpu_ms_per_scan": costs["cpu_ms_per_scan"],
        }  # fmt: skip

    def fed_max(self, system: BusPipeline, start: float) -> tuple[dict[str, Any], list[Any]]:
        """The highest offered rate the pipeline keeps up with while the generator runs.

        From ``start`` the offered rate rises by 10 % a step (``search_s`` each) while the
        pipeline keeps up: when the offer ends, at most a quarter second's worth of its
        scans is still unstored. Offering far more than it takes measures the generator
        crowding the workers out of the 2 cores, not the pipeline.
        """
        assert system.store is not None
        steps: list[dict[str, Any]] = []
        rate = start
        while True:
            tenant, count = f"pipeline-search-{rate:.0f}", int(rate * self.plan.search_s)
            before = self._cpu(system)
            system.offer(tenant, rate, count)
            behind = count - system.store.count_results(tenant)
            stored = wait_stored(system.store, tenant, count, stall_s=5)
            rows = phase_rows(system.store, tenant)
            step = {
                "label": "max", "offered_per_s": rate, "sent": count, "stored": stored,
                "behind_at_end": behind, "throughput_per_s": rows.throughput,
                "p50_ms": rows.pct(0.5), "p99_ms": rows.pct(0.99),
                **self._costs(system, before, stored),
            }  # fmt: skip
            kept_up = behind <= 0.25 * rate and stored >= count
            print(
                f"  search {rate:7.0f}/s: {behind:6d} behind at the end, "
                f"p99 {step['p99_ms']:7.1f} ms -> {'kept up' if kept_up else 'fell behind'}"
            )
            if not kept_up:
                break
            steps.append(step)
            rate *= 1.1
        if not steps:
            raise SystemExit(
                f"the pipeline did not keep up with {start:.0f}/s; is the machine busy?"
            )
        return steps[-1], steps


def _until_count(system: System, tenant: str, count: int, stall_s: float = 30.0) -> Any:
    assert system.store is not None
    store, state = system.store, {"best": -1, "at": time.monotonic()}

    def done() -> bool:
        stored = store.count_results(tenant)
        if stored > state["best"]:
            state["best"], state["at"] = stored, time.monotonic()
        return stored >= count or time.monotonic() - state["at"] > stall_s

    return done


def run_system(bench: Bench, system: System, overload: float | None,
               rates: list[tuple[str, float]]) -> dict[str, Any]:  # fmt: skip
    print(f"\n{system.name}: starting")
    try:
        system.start()
        top = bench.max_phase(system, overload)
        print(f"  {system.name:14} {'max':>10} offered {top['offered_per_s']:7.0f}/s -> "
              f"{top['throughput_per_s']:7.0f}/s sustained")  # fmt: skip
        own = [
            ("50% own", 0.5 * top["throughput_per_s"]),
            ("90% own", 0.9 * top["throughput_per_s"]),
        ]
        runnable = [(lbl, r) for lbl, r in rates + own if r <= 0.95 * top["throughput_per_s"]]
        points = [bench.rate_phase(system, label, rate) for label, rate in runnable]
        skipped = [
            {"label": lbl, "offered_per_s": r} for lbl, r in rates if (lbl, r) not in runnable
        ]
        result = {"max": top, "points": points, "skipped_rates": skipped}
    finally:
        system.stop()
    result["peak_rss_mib"] = bench.monitor.peak_mib(system.name)
    return result


def wait_for_quiet(quick: bool) -> list[float]:
    """Wait (up to 5 min; not in --quick) for the 1-minute load average to drop."""
    deadline = time.monotonic() + (0 if quick else 300)
    while os.getloadavg()[0] > MAX_LOAD and time.monotonic() < deadline:
        print(f"load average {os.getloadavg()[0]:.2f} > {MAX_LOAD}; waiting for a quiet machine")
        time.sleep(15)
    return list(os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (< 2 min) for development")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    load_at_start = wait_for_quiet(plan.quick)
    started = time.monotonic()
    print(f"load average at start: {load_at_start}; rendering {plan.pool} scans...")
    pool = ScanPool.build(plan.pool)
    out: dict[str, Any] = {"plan": asdict(plan), "load_average_at_start": load_at_start,
                           "cpus": os.cpu_count()}  # fmt: skip
    print("ceiling: steps in a tight loop, 1 process then 2 at once...")
    out["ceiling"] = run_ceiling(pool, plan.ceiling_scans, repeats=1 if plan.quick else 2)
    with tempfile.TemporaryDirectory(prefix="flagship-bench-") as tmp:
        bench = Bench(plan, pool, Path(tmp))
        out["celery"] = run_system(bench, CeleryPeer(pool, bench.monitor, Path(tmp)), 1500, [])
        out["fastapi"] = run_system(bench, FastApiPeer(pool, bench.monitor, Path(tmp)), None, [])
        pipe = BusPipeline(pool, bench.monitor, Path(tmp))
        rates = [("1000/s", 1000.0)]
        celery_90 = next(p for p in out["celery"]["points"] if p["label"] == "90% own")
        rates.append(("celery 90%", celery_90["offered_per_s"]))
        out["pipeline"] = run_pipeline(bench, pipe, rates, out["ceiling"]["all_processes_per_s"])
        out["pipeline_http"] = run_system(bench, HttpPipeline(pool, bench.monitor, Path(tmp)),
                                          None, [])  # fmt: skip
        bench.monitor.stop()
        out["bench_peak_rss_mib"] = bench.monitor.peak_mib("bench")
    out["load_average_at_end"] = list(os.getloadavg())
    out["seconds"] = time.monotonic() - started
    # A --quick run must not overwrite the full run's figures that the docs quote.
    results, picture = (QUICK_RESULTS, QUICK_PLOT) if plan.quick else (RESULTS, PLOT)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(out, indent=2) + "\n")
    plot(out, picture)
    print("\n" + table(out))
    print(f"\nwritten {results.relative_to(ROOT)} and {picture.relative_to(ROOT)} "
          f"in {out['seconds']:.0f} s")  # fmt: skip


def run_pipeline(
    bench: Bench, pipe: BusPipeline, extra: list[tuple[str, float]], ceiling_rate: float
) -> dict[str, Any]:
    """The bus-fed pipeline: its drain rate alone, its fed maximum, then fixed rates."""
    print(f"\n{pipe.name}: starting")
    try:
        pipe.start()
        backlog = bench.backlog(pipe, ceiling_rate)
        print(f"  backlog: {backlog['scans']} scans, drained at {backlog['drain_per_s']:.0f}/s, "
              f"RSS flat: {backlog['rss_flat']}")  # fmt: skip
        top, steps = bench.fed_max(pipe, 0.6 * backlog["drain_per_s"])
        print(f"  {pipe.name:14} {'max':>10} offered {top['offered_per_s']:7.0f}/s -> "
              f"{top['throughput_per_s']:7.0f}/s sustained")  # fmt: skip
        rates = [(f"{q:.0%}", q * top["offered_per_s"]) for q in (0.25, 0.5, 0.9)] + extra
        points = [bench.rate_phase(pipe, label, rate) for label, rate in rates]
    finally:
        pipe.stop()
    return {"max": top, "search": steps, "points": points, "backlog": backlog,
            "peak_rss_mib": bench.monitor.peak_mib(pipe.name)}  # fmt: skip


if __name__ == "__main__":
    main()
