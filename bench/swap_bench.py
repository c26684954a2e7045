"""Throughput while a model alias moves, against steady state, in the same run.

One stage on the embedded bus classifies ready-made scan tensors with
``egg_sexing@champion`` (batches of 64, the registry asked every 0.2 s). The input is
filled first; the stage drains the first half with the alias still (steady), then the
second half while another thread moves the alias between two versions every
``--every`` seconds (each move: a load in the background, a switch between batches).
Printed: scans/s for each half, their ratio, the number of switches, and the longest
gap between two consecutive batches in each half (a swap must not stall the stage)::

    .venv/bin/python bench/swap_bench.py [--scans 20000] [--every 0.5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from inferstream.application import find_model
from inferstream.blobs import open_blob_store
from inferstream.bus import Record, open_bus
from inferstream.envelope import new_envelope, to_tensor
from inferstream.pipeline import load_pipeline
from inferstream.registry import ModelRegistry
from inferstream.runner import ensure_topics, make_worker
from inferstream.store import ResultsStore

FLOW = """
name: swap
bus: sqlite:///{tmp}/bus.db
store: sqlite:///{tmp}/results.db
blobs: file://{tmp}/blobs
topics:
  scans: 2
stages:
  - name: score
    input: scans
    output: scored
    steps: [{{step: classify, model: egg_sexing@champion, refresh_s: 0.2}}]
    batch: {{max_size: 64, max_wait_ms: 5}}
"""


def registry_with_two_versions(spec: object) -> ModelRegistry:
    folder = find_model("egg_sexing")
    assert folder is not None
    graph = (folder / "egg_sexing.onnx").read_bytes()
    info = json.loads((folder / "egg_sexing.json").read_text())
    registry = ModelRegistry(ResultsStore(spec.store), open_blob_store(spec.blobs))  # type: ignore[attr-defined]
    for version in ("1.0.0", "1.0.1"):
        registry.register(graph, {**info, "version": version}, actor="bench")
    registry.set_alias("egg_sexing", "champion", "1.0.0", actor="bench", reason="start")
    return registry


def fill(bus: object, scans: int) -> None:
    rng = np.random.default_rng(1)
    tensors = [to_tensor(rng.random((1, 64, 64), dtype=np.float32)) for _ in range(256)]
    for start in range(0, scans, 1000):
        records = []
        for i in range(start, min(start + 1000, scans)):
            env = new_envelope(b"", "application/x-tensor", key=f"tray-{i % 16}")
            env.payload.tensor.CopyFrom(tensors[i % len(tensors)])
            records.append(Record(key=env.partition_key.encode(), value=env.SerializeToString()))
        bus.produce("scans", records)  # type: ignore[attr-defined]


def committed(bus: object, group: str) -> int:
    return sum(p.committed or 0 for p in bus.partitions("scans", group))  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=20_000, help="scans in all (default 20000)")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between alias moves")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "swap.yaml"
        path.write_text(FLOW.format(tmp=tmp))
        spec = load_pipeline(path)
        registry = registry_with_two_versions(spec)
        bus = open_bus(spec.bus)
        ensure_topics(bus, spec)
        fill(bus, args.scans)
        worker = make_worker(spec, "score", bus)
        gaps: dict[str, float] = {"steady": 0.0, "swapping": 0.0}
        phase = ["steady"]
        last = [time.monotonic()]
        original = worker._begin_batch

        def timed(messages: object) -> None:  # the time between two batches' starts
            now = time.monotonic()
            gaps[phase[0]] = max(gaps[phase[0]], now - last[0])
            last[0] = now
            original(messages)  # type: ignore[arg-type]

        worker._begin_batch = timed  # type: ignore[method-assign]
        stop, moving = threading.Event(), threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)

        def mover() -> None:
            versions = ["1.0.1", "1.0.0"]
            n = 0
            while not moving.wait(args.every):
                registry.set_alias("egg_sexing", "champion", versions[n % 2], actor="bench",
                                   reason="swap bench")  # fmt: skip
                n += 1

        half = args.scans // 2
        started = time.monotonic()
        thread.start()
        while committed(bus, worker.group) < half:
            time.sleep(0.01)
        steady_s = time.monotonic() - started
        steady_n = committed(bus, worker.group)
        phase[0] = "swapping"
        swapper = threading.Thread(target=mover, daemon=True)
        swapper.start()
        started = time.monotonic()
        while committed(bus, worker.group) < args.scans:
            time.sleep(0.01)
        swap_s = time.monotonic() - started
        moving.set()
        stop.set()
        thread.join()
        switches = len(registry.switches("egg_sexing"))
        registry.store.close()
        bus.close()
    steady = steady_n / steady_s
    swapping = (args.scans - steady_n) / swap_s
    for name, rate in (("steady", steady), ("swapping", swapping)):
        print(f"{name + ':':<10}{rate:8.0f} scans/s  longest gap between batches "
              f"{gaps[name] * 1e3:6.1f} ms")  # fmt: skip
    print(f"{switches} switches (the alias moved every {args.every} s while swapping)")
    print(f"swapping / steady: {swapping / steady:.2f}")


if __name__ == "__main__":
    main()
