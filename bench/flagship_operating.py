"""The flagship at its operating point: CPU per scan and latency at moderate rates.

Under moderate load a worker's batches hold one scan or a few, so what a batch costs
besides its scans (reading the bus, each step's fixed work, producing, committing)
decides how busy the cores are, and with them the latency. The ceiling
(``flagship_ceiling.py``) runs batches of 64 and does not see those costs.

For each of ``--rates`` the flagship (``inferstream up`` on the embedded bus and SQLite,
no API, as ``BusPipeline`` in ``flagship_systems.py`` runs it) is fed for ``--seconds``;
then it prints the CPU (user + system) each stage's processes spent per scan fed, their
sum over every process of the pipeline, and the end-to-end latency (each record's
creation to its storing) p50/p99, and how busy the machine was and how much of its CPU
the host held back (steal, on a VM; ``host_cpu.py``). Each scan is counted: the phase
waits until every one is stored. With ``--against REF`` the same rounds run on another
commit's ``src`` too, alternating, each in a fresh pipeline: compare rows of one run
only (this machine's speed moves by 2x between runs an hour apart). Usage::

    .venv/bin/python bench/flagship_operating.py --against HEAD~3 --rates 100 300 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from bus_handoff import tree_of
from flagship_load import ProcMonitor
from flagship_systems import BusPipeline
from sqlalchemy import select

from inferstream.apps.eggs.simulator import ScanPool

try:
    from inferstream.host_cpu import HostCpu
except ImportError:  # an older tree run with --against: its phases show no host figures
    HostCpu = None  # type: ignore[assignment,misc]
from inferstream.store.schema import records

ROOT = Path(__file__).resolve().parent.parent
#: Stages whose CPU is shown on its own; every other process counts in the total only.
STAGES = ("classify", "store")


def run_phases(rates: list[float], seconds: float) -> list[dict[str, float]]:
    """Start the flagship, feed it each rate in turn; each phase's figures."""
    pool = ScanPool.build(256)
    monitor = ProcMonitor()
    monitor.start()
    results = []
    with tempfile.TemporaryDirectory(prefix="flagship-operating-") as work:
        system = BusPipeline(pool, monitor, Path(work))
        system.start()
        store = system.store
        assert store is not None
        try:
            for number, rate in enumerate(rates):
                tenant = f"operating-{number}"
                count = int(rate * seconds)
                before = _cpu_by_stage(monitor.tree(system.name))
                host = HostCpu() if HostCpu is not None else None
                system.offer(tenant, rate, count)
                rows: list[tuple[int, int]] = []
                deadline = time.monotonic() + 120
                while len(rows) < count and time.monotonic() < deadline:
                    time.sleep(0.2)
                    c = records.c
                    query = select(c.created_at_us, c.stored_at_us).where(c.tenant == tenant)
                    with store.engine.connect() as conn:
                        rows = [(int(a), int(b)) for a, b in conn.execute(query)]
                spent = _cpu_by_stage(monitor.tree(system.name))
                latencies = sorted((stored - created) / 1000 for created, stored in rows)
                phase = {"rate": rate, "fed": count, "stored": len(rows)}
                for stage in (*STAGES, "all"):
                    used = spent.get(stage, 0.0) - before.get(stage, 0.0)
                    phase[f"{stage}_us"] = used / count * 1e6
                phase["p50_ms"] = _pct(latencies, 0.5)
                phase["p99_ms"] = _pct(latencies, 0.99)
                shares = host.shares() if host is not None else None  # steal: CPU the VM lacked
                phase["busy_pct"] = 100 * shares.busy if shares else float("nan")
                phase["steal_pct"] = 100 * shares.steal if shares else float("nan")
                results.append(phase)
        finally:
            system.stop()
    return results


def _cpu_by_stage(processes: list[psutil.Process]) -> dict[str, float]:
    """CPU seconds (user + system) of the pipeline's processes, by stage and in all."""
    spent: dict[str, float] = {"all": 0.0}
    for proc in processes:
        try:
            times = proc.cpu_times()
            argv = proc.cmdline()
        except psutil.Error:  # a process that just exited spends nothing more
            continue
        used = times.user + times.system
        spent["all"] += used
        if "--stage" in argv:
            stage = argv[argv.index("--stage") + 1]
            spent[stage] = spent.get(stage, 0.0) + used
    return spent


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[100, 300],
        help="scans/s fed, one phase each (default 100 300)",
    )
    parser.add_argument("--seconds", type=float, default=10, help="feeding time per phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each tree")
    parser.add_argument(
        "--against",
        metavar="REF",
        help="also run another commit's src (e.g. the one before a change)",
    )
    args = parser.parse_args()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="operating-trees-") as tmp:
        trees = {"this tree": ROOT / "src"}
        if args.against:
            trees[args.against] = tree_of(args.against, Path(tmp))
        figures: dict[str, list[list[dict[str, float]]]] = {name: [] for name in trees}
        for round_no in range(args.rounds):
            for name, src in trees.items():
                out = Path(tmp) / "phases.json"
                env = dict(os.environ, PYTHONPATH=str(src))
                child = [sys.executable, __file__, "--child", str(out), str(args.seconds),
                         *map(str, args.rates)]  # fmt: skip
                subprocess.run(child, env=env, check=True, cwd=Path(__file__).parent)
                phases = json.loads(out.read_text())
                figures[name].append(phases)
                for phase in phases:
                    print(f"round {round_no + 1} {name:>10} " + _row(phase), flush=True)
    print(
        f"\nmedians over {args.rounds} rounds, {args.seconds:.0f} s a phase; "
        "CPU in microseconds per scan fed"
    )
    for name, rounds in figures.items():
        for index in range(len(args.rates)):
            med = {k: statistics.median(r[index][k] for r in rounds) for k in rounds[0][index]}
            lost = sum(r[index]["fed"] - r[index]["stored"] for r in rounds)
            print(f"{name:>10} lost {lost:<3} " + _row(med))


def _row(phase: dict[str, float]) -> str:
    cpu = "  ".join(f"{stage} {phase[f'{stage}_us']:6.0f}" for stage in (*STAGES, "all"))
    return (f"{phase['rate']:6.0f}/s  {cpu}  p50 {phase['p50_ms']:6.1f} ms  "
            f"p99 {phase['p99_ms']:6.1f} ms  machine busy {phase['busy_pct']:4.1f} %  "
            f"steal {phase['steal_pct']:4.1f} %")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        out_path, seconds_arg, *rate_args = sys.argv[2:]
        phases = run_phases([float(r) for r in rate_args], float(seconds_arg))
        Path(out_path).write_text(json.dumps(phases))
    else:
        main()
