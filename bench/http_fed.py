"""HTTP-fed flagship against its peers, in one run: the goal lines of issue 21.

- **single-scan requests**: the pipeline (``inferstream up --serve``, raw DICOM to
  ``POST /v1/scans``, one scan per request, 32 keep-alive connections) against the
  synchronous FastAPI peer of ``flagship_peers`` (uvicorn with one worker per core,
  decode + preprocess + classify + upsert in the request, 64 connections); goal >= 1.2x;
- **batched requests**: the same pipeline fed ``EnvelopeBatch`` bodies of 64 scans (as
  edge agents send) against the same pipeline fed through its bus by the scanner
  simulator (batches of up to 64 scans); goal >= 0.8x.

Each phase offers as much as its system takes for ``--seconds`` (closed loop over HTTP;
over the bus, more than the pipeline keeps up with) and counts the scans stored, by id,
in the system's results table: the rate is scans stored over the span from the first
scan's creation to the last one's storing, so a backlog left when the offer ends is
drained inside the figure. CPU per scan is every process of the system (and not the load
generator) over the phase. Systems run one at a time and ``--rounds`` alternate them,
so the ratios compare neighbours in time on a machine whose speed drifts.

    .venv/bin/python bench/http_fed.py [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flagship_load import HttpStats, ProcMonitor, http_load, phase_rows, wait_stored
from flagship_systems import BusPipeline, FastApiPeer, HttpPipeline, System

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.simulator import ScanPool
from inferstream.edge import wire
from inferstream.envelope import EnvelopeBatch, new_envelope, new_id

BATCH = 64


@dataclass
class Figure:
    phase: str
    offered: int
    stored: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    http: HttpStats | None = None


class BatchedPipeline(HttpPipeline):
    """The pipeline fed ``EnvelopeBatch`` bodies of :data:`BATCH` scans (an edge agent's)."""

    #: Connections of the batched phase (single-scan requests keep HttpPipeline's 32).
    batch_connections = 4

    def offer_batches(self, tenant: str, seconds: float) -> HttpStats:
        self._wait_api()
        keys, tag = self._keys(tenant), new_id()[:4]

        def request(number: int, created: int) -> tuple[bytes, dict[str, str]]:
            batch = EnvelopeBatch()
            for i in range(number * BATCH, (number + 1) * BATCH):
                data, egg_id, _ = self.scan(i, tag)
                env = new_envelope(data, "application/dicom", envelope_id=f"{tag}-{egg_id}",
                                   created_at_us=created)  # fmt: skip
                batch.envelopes.append(wire(env, APP))
            headers = {"content-type": "application/x-protobuf",
                       "x-api-key": keys[number % len(keys)]}  # fmt: skip
            return batch.SerializeToString(), headers

        return http_load(f"http://{self.serve}/v1/scans", request, rate=None,
                         seconds=seconds, connections=self.batch_connections)  # fmt: skip


def measure(
    system: System, monitor: ProcMonitor, phase: str, offer: Callable[[str], HttpStats | int]
) -> Figure:
    """Run ``offer(tenant)``, wait for what it got in to be stored, and read the rows."""
    assert system.store is not None
    tenant = f"{phase}-{new_id()[:6]}".replace(" ", "-")
    cpu = monitor.cpu_s(system.name)
    answer = offer(tenant)
    http = answer if isinstance(answer, HttpStats) else None
    offered = answer.ok * (BATCH if phase.startswith("batched") else 1) if http else int(answer)
    stored = wait_stored(system.store, tenant, offered)
    cpu = monitor.cpu_s(system.name) - cpu
    rows = phase_rows(system.store, tenant)
    return Figure(phase, offered, stored, rows.throughput, rows.pct(0.5), rows.pct(0.99),
                  cpu / max(stored, 1) * 1000, http)  # fmt: skip


def one_scan_requests(
    system: FastApiPeer | HttpPipeline, seconds: float
) -> Callable[[str], HttpStats]:
    """An offer of one-scan requests, as many as ``system`` answers for ``seconds``."""

    def offer(tenant: str) -> HttpStats:
        system.offer_http(tenant, None, seconds)
        assert system.last_http is not None
        return system.last_http

    return offer


def fastapi_round(pool: ScanPool, monitor: ProcMonitor, work: Path, seconds: float) -> Figure:
    peer = FastApiPeer(pool, monitor, work)
    peer.start()
    try:
        return measure(peer, monitor, "fastapi single", one_scan_requests(peer, seconds))
    finally:
        peer.stop()


def pipeline_round(
    pool: ScanPool, monitor: ProcMonitor, work: Path, seconds: float, bus_rate: float
) -> list[Figure]:
    pipeline = BatchedPipeline(pool, monitor, work)
    pipeline.start()
    try:

        def bus(tenant: str) -> int:
            count = int(bus_rate * seconds)
            BusPipeline.offer(pipeline, tenant, bus_rate, count)
            return count

        figures = [
            measure(pipeline, monitor, "pipeline single", one_scan_requests(pipeline, seconds))
        ]
        figures.append(measure(pipeline, monitor, "batched",
                               lambda tenant: pipeline.offer_batches(tenant, seconds)))  # fmt: skip
        figures.append(measure(pipeline, monitor, "pipeline bus", bus))
        return figures
    finally:
        pipeline.stop()


def show(figure: Figure) -> None:
    http = figure.http
    errors = f", {http.errors} failed: {http.first_error[:80]}" if http and http.errors else ""
    lost = (
        f", {figure.offered - figure.stored} NOT STORED" if figure.stored < figure.offered else ""
    )
    print(f"  {figure.phase:16s} {figure.rate:7.0f} scans/s stored  p50 {figure.p50_ms:7.1f} ms"
          f"  p99 {figure.p99_ms:7.1f} ms  CPU {figure.cpu_ms:5.2f} ms/scan"
          f"  ({figure.stored}/{figure.offered} stored{lost}{errors})", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the systems")
    parser.add_argument("--bus-rate", type=float, default=2000.0,
                        help="scans/s offered over the bus (above what the pipeline keeps up "
                        "with; default 2000)")  # fmt: skip
    args = parser.parse_args()
    monitor = ProcMonitor()
    monitor.start()
    pool = ScanPool.build(128)
    by_phase: dict[str, list[Figure]] = {}
    with tempfile.TemporaryDirectory(prefix="http-fed-") as tmp:
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}", flush=True)
            work = Path(tmp) / f"round-{number}"
            work.mkdir()
            figures = [fastapi_round(pool, monitor, work, args.seconds)]
            show(figures[0])
            for figure in pipeline_round(pool, monitor, work, args.seconds, args.bus_rate):
                show(figure)
                figures.append(figure)
            if figures[-1].rate > 0.9 * args.bus_rate:
                print("  the bus offer was not above what the pipeline takes: raise --bus-rate")
            for figure in figures:
                by_phase.setdefault(figure.phase, []).append(figure)
    print("\ngoal                                  per round                    target")
    pairs = (("single-scan: pipeline / FastAPI peer", "pipeline single", "fastapi single", 1.2),
             ("batched / bus-fed", "batched", "pipeline bus", 0.8))  # fmt: skip
    for label, top, bottom, target in pairs:
        ratios = [a.rate / b.rate for a, b in zip(by_phase[top], by_phase[bottom], strict=True)]
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"{label:37s} {shown:28s} >= {target} (median {statistics.median(ratios):.2f})")
    lost = sum(f.offered - f.stored for fs in by_phase.values() for f in fs)
    print(f"scans accepted but not stored: {lost}")
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("INFERSTREAM_LOG_LEVEL", "WARNING")
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
