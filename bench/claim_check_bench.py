"""Claim-checked scans read from S3: the flagship's decode step fetching a batch's blobs
one after another (as before ``batch_payloads``) against fetching them together, in the
same run.

Not a test: it prints a table. The S3 server is moto's (this machine), reached directly
and through a TCP proxy that holds each chunk ``--delay-ms`` (a network between the
worker and its bucket: real S3 answers a small GET in some milliseconds, moto here in
under one plus its own CPU). Each round decodes every scan ``--batch`` at a time, both
ways taking turns batch by batch; the figures are medians over ``--rounds``.

    .venv/bin/python bench/claim_check_bench.py [--scans 512] [--batch 64] [--delay-ms 0 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from broker_testing import s3_server
from tcp_proxy import TcpProxy

from inferstream.apps.eggs.dicom import decode_dicom_step
from inferstream.apps.eggs.dicomgen import to_dicom_bytes
from inferstream.apps.eggs.phantom import make_specs, render_batch
from inferstream.blobs import check_in, open_blob_store
from inferstream.envelope import Envelope, new_envelope
from inferstream.steps import StepContext

TENANT = "farm"


def claim_checked(store: object, n: int) -> list[Envelope]:
    """``n`` DICOM scans (64 distinct, sent again under new ids), each in the bucket."""
    specs = make_specs(64, seed=5)
    dicoms = [to_dicom_bytes(px, spec) for px, spec in zip(render_batch(specs), specs, strict=True)]
    envs = []
    for i in range(n):
        env = new_envelope(dicoms[i % len(dicoms)], "application/dicom", tenant=TENANT)
        envs.append(check_in(env, store, threshold=0))  # type: ignore[arg-type]
    return envs


def one_round(envs: Sequence[Envelope], batch: int, store: object) -> dict[str, float]:
    """Scans per second decoding ``envs``, fetched one by one and together, batch by
    batch in turns."""
    step = decode_dicom_step(StepContext("bench", "decode", blobs=store))  # type: ignore[arg-type]
    parallel = store.parallel_reads  # type: ignore[attr-defined]
    took = {"one by one": 0.0, "together": 0.0}
    for start in range(0, len(envs), batch):
        chunk = envs[start : start + batch]
        for way, width in (("one by one", 1), ("together", parallel)):
            store.parallel_reads = width  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            outcomes = step.process(chunk)
            took[way] += time.perf_counter() - t0
            assert all(isinstance(o, Envelope) for o in outcomes), outcomes
    store.parallel_reads = parallel  # type: ignore[attr-defined]
    return {way: len(envs) / seconds for way, seconds in took.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=512, help="per round")
    parser.add_argument("--batch", type=int, default=64, help="the worker's micro-batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[0.0, 5.0],
                        help="the proxy's hold per chunk; 0 is the server directly")  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, s3_server(Path(tmp) / "moto.log") as server:
        os.environ.update(server.env)
        bucket = server.new_bucket()
        envs = claim_checked(open_blob_store(f"s3://{bucket}/bench"), args.scans)
        print(f"{args.scans} claim-checked scans, batch {args.batch}, {args.rounds} rounds; "
              f"1-minute load {os.getloadavg()[0]:.2f}")  # fmt: skip
        print("| network hold | one by one, scans/s | together, scans/s | together / one by one |")
        print("| ---: | ---: | ---: | ---: |")
        for delay in args.delay_ms:
            with TcpProxy(urlsplit(server.endpoint).port or 80) as proxy:
                proxy.delay_s = delay / 1000
                through = f"http://{proxy.address}" if delay else server.endpoint
                os.environ["AWS_ENDPOINT_URL"] = through
                store = open_blob_store(f"s3://{bucket}/bench")
                rounds = [one_round(envs, args.batch, store) for _ in range(args.rounds)]
            one = statistics.median(r["one by one"] for r in rounds)
            together = statistics.median(r["together"] for r in rounds)
            print(f"| {delay:g} ms | {one:,.0f} | {together:,.0f} | {together / one:.2f}x |")
        print(f"1-minute load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
