"""Tracing cost: one stage worker's throughput with tracing off, on (spans made and
dropped), on with export over OTLP/HTTP to a receiver on this machine, and that with
one trace in ten sampled; optionally the same worker from another source tree (the
release before tracing) beside them.

Not a test: it prints a table. Each measurement runs in a fresh process: a
``passthrough`` stage (so the worker's own costs are all there is) drains a topic of
small envelopes on the embedded bus, from its start until its group has committed
every offset. Modes alternate round by round; the table shows each mode's median and
best run (CPU: user and system time of the whole process, exporter thread included).

    git archive HEAD src | tar -x -C /tmp/before    # the tree to compare with, if any
    .venv/bin/python bench/tracing_bench.py [--messages 20000] [--rounds 3] \\
        [--before /tmp/before/src]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODES = ("off", "spans", "otlp", "sampled")


def measure(mode: str, messages: int, batch: int, folder: Path) -> dict[str, Any]:
    """One worker draining ``messages`` envelopes: seconds, messages/s, CPU µs each."""
    from inferstream.builtin_steps import Passthrough
    from inferstream.bus import Record, open_bus
    from inferstream.envelope import new_envelope
    from inferstream.routing import Router
    from inferstream.worker import StageWorker

    bus = open_bus(f"sqlite:///{folder / 'bus.db'}")
    for topic in ("in", "in.dlq", "out"):
        bus.create_topic(topic, 4)
    for start in range(0, messages, 1000):
        envs = [new_envelope(os.urandom(200), "application/octet-stream", key=f"k{i % 64}")
                for i in range(start, min(start + 1000, messages))]  # fmt: skip
        bus.produce("in", [Record(e.partition_key.encode(), e.SerializeToString()) for e in envs])
    options: dict[str, Any] = {}
    tracing = None
    if mode != "before":
        from inferstream.tracing import NO_TRACING
        from inferstream.tracing_config import open_tracing

        tracing = open_tracing("bench") if mode in ("otlp", "sampled") else NO_TRACING
        if mode == "spans":
            from opentelemetry.sdk.trace.export import SpanExportResult

            from inferstream.tracing_otel import OtelTracing

            class Drop:
                def export(self, spans: object) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

                def shutdown(self) -> None:
                    pass

                def force_flush(self, timeout_millis: int = 0) -> bool:
                    return True

            tracing = OtelTracing(Drop(), service="bench")  # type: ignore[arg-type]
        options["tracing"] = tracing
    worker = StageWorker(
        bus, pipeline="bench", stage="pass", inputs=["in"], router=Router(outputs=("out",)),
        steps=[Passthrough()], max_batch=batch, max_wait_s=0.01, **options,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    started, cpu = time.monotonic(), time.process_time()
    thread.start()
    while sum(p.lag for p in bus.partitions("in", "bench.pass")) > 0:
        time.sleep(0.01)
    seconds, cpu_s = time.monotonic() - started, time.process_time() - cpu
    stop.set()
    thread.join()
    if tracing is not None:
        tracing.close()
    bus.close()
    return {"mode": mode, "seconds": seconds, "rate": messages / seconds,
            "cpu_us": cpu_s / messages * 1e6}  # fmt: skip


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and keeps nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _run(mode: str, args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if mode in ("otlp", "sampled"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    if mode == "sampled":  # one trace in ten kept, as a busy deployment would
        env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    if mode == "before":
        env["PYTHONPATH"] = args.before
    with tempfile.TemporaryDirectory(prefix="tracing-bench-") as folder:
        argv = [sys.executable, __file__, "--one", mode, "--messages", str(args.messages),
                "--batch", str(args.batch), "--folder", folder]  # fmt: skip
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64, help="the worker's max batch (64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", metavar="SRC", help="a source tree to time as 'before'")
    parser.add_argument("--one", choices=(*MODES, "before"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.messages, args.batch, Path(args.folder))))
        return
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    modes = (*(("before",) if args.before else ()), *MODES)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            runs[mode].append(_run(mode, args, endpoint))
    sink.shutdown()
    print(f"{args.messages} messages, batches of {args.batch}, {args.rounds} runs each")
    print(f"{'mode':<8} {'messages/s median':>18} {'best':>7}   CPU µs/message median  best")
    for mode in modes:
        rates, cpus = [r["rate"] for r in runs[mode]], [r["cpu_us"] for r in runs[mode]]
        print(f"{mode:<8} {statistics.median(rates):>18,.0f} {max(rates):>7,.0f}   "
              f"{statistics.median(cpus):>21.1f} {min(cpus):>5.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
