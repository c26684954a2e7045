"""Remote inference benchmark: the ``remote_classify`` step on a v2 model server (MLServer,
REST and gRPC) against the in-process ``classify`` step on the same ONNX model, in the
same run.

Not a test: it prints a table. Each row runs the flagship's classifier over the same
preprocessed scans, ``--batch`` at a time (the worker's micro-batch), and reports scans
per second and the time of one batch (median, p99). The in-process ONNX Runtime step at
each batch size is the baseline of the rows below it. MLServer runs on this machine
(``tests/model_server.py`` builds its virtualenv on first use), so its CPU competes with
the client's: on a real deployment the server has its own machine and, often, a GPU.

    .venv/bin/python bench/remote_bench.py [--scans 2048] [--batch 1 16 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from model_server import model_server

from inferstream.apps.eggs import APP
from inferstream.classify import ClassifyStep, load_model
from inferstream.envelope import Envelope, ModelRole, new_envelope, to_tensor
from inferstream.remote_classify import remote_classify_step
from inferstream.steps import Step, StepContext

MODEL = "egg_sexing"


def scans(n: int) -> list[Envelope]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        env = new_envelope(b"", "application/dicom", key=f"egg-{i}")
        env.payload.tensor.CopyFrom(to_tensor(rng.normal(0, 1, (1, 64, 64)).astype(np.float32)))
        out.append(env)
    return out


def measure(step: Step, envs: Sequence[Envelope], batch: int) -> tuple[float, list[float]]:
    """Scans per second over all of ``envs``, and each batch's seconds."""
    step.process(envs[:batch])  # a warm-up call: connections, first-run allocations
    took = []
    started = time.perf_counter()
    for start in range(0, len(envs), batch):
        t0 = time.perf_counter()
        step.process(envs[start : start + batch])
        took.append(time.perf_counter() - t0)
    return len(envs) / (time.perf_counter() - started), took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=2048, help="scans per row (2048)")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 16, 64], help="micro-batch sizes (1 16 64)"
    )
    args = parser.parse_args()
    envs = scans(args.scans)
    context = StepContext(pipeline="bench", stage="classify", app=APP)
    print(f"remote inference: {args.scans} scans of (1, 64, 64) float32, model {MODEL}")
    print("starting MLServer (its virtualenv is built on first use) ...", flush=True)
    with tempfile.TemporaryDirectory() as folder, model_server(Path(folder), MODEL, "1") as server:
        rows: list[tuple[str, int, float, list[float], float]] = []
        for batch in args.batch:
            local = ClassifyStep(load_model(MODEL), ModelRole.MODEL_ROLE_CHAMPION)
            base, took = measure(local, envs, batch)
            rows.append(("in-process ONNX Runtime", batch, base, took, base))
            for label, url in (("v2 REST (MLServer)", server.rest_url),
                               ("v2 gRPC (MLServer)", server.grpc_url)):  # fmt: skip
                step = remote_classify_step(context, url=url, model=MODEL, max_batch=batch)
                try:
                    rate, took = measure(step, envs, batch)
                finally:
                    step.close()
                rows.append((label, batch, rate, took, base))
    print(f"\n{'step':<26}{'batch':>6}{'scans/s':>10}{'batch p50 ms':>14}"
          f"{'batch p99 ms':>14}{'vs in-process':>15}")  # fmt: skip
    for label, batch, rate, took, base in rows:
        p99 = float(np.percentile(took, 99)) * 1000
        print(f"{label:<26}{batch:>6}{rate:>10.0f}{statistics.median(took) * 1000:>14.2f}"
              f"{p99:>14.2f}{rate / base:>14.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
