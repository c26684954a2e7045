"""The imageops apply stage against its own step ceiling, measured in the same run.

Ceiling: the ``apply_actions`` step called directly in this process on the same images
and plans (decode, operations, encode, each output written to the blob store), in
micro-batches of the pipeline's size, no bus, no store: the most the step allows on
one core. Pipeline: the same images, put on the ingest topic as the API puts them
(claim check, the job's attributes), through ``imageops.yaml`` on the chosen bus and
SQLite with every stage a thread of this process (one apply replica, like the
ceiling); timed from the first image produced to (a) the apply stage's group having
committed them all, and (b) the last output record stored. Every output is then
counted by id (0 lost, 0 doubled)::

    .venv/bin/python bench/imageops_bench.py [--images 48] [--bus kafka://host:port]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from inferstream.apps.imageops import APP
from inferstream.apps.imageops.images import SIZES, encoded
from inferstream.apps.imageops.operations import parse_actions, parse_document
from inferstream.apps.imageops.steps import ApplyActions
from inferstream.blobs import LocalBlobStore, check_in, payload_bytes
from inferstream.bus import Bus, Record, open_bus
from inferstream.envelope import Envelope, derive_id, new_envelope, new_id
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.store import ResultFilter, ResultsStore
from inferstream.testing import pipeline_threads

#: The plans images take in turn: the users' form and the richer ones.
PLANS = (
    {"operations": [["resize", "200x300"], ["split", True], ["blur", "gaussian"]], "output": "jpg"},
    {"operations": [["split", "2x3"], ["blur", "median", 2], ["resize", "100x100"]],
     "output": "png"},
    {"operations": [["blur", "bilateral"], ["resize", "256x256"]], "output": "webp"},
)  # fmt: skip
TENANT = "bench"


def envelopes(count: int, blobs: LocalBlobStore) -> list[Envelope]:
    """``count`` images of the three sizes, each with a plan, as the API ingests them."""
    made = []
    job = new_id()
    for n in range(count):
        width, height = SIZES[n % len(SIZES)]
        data = encoded(width, height, n, "jpg" if n % 2 else "png")
        plan = parse_document(PLANS[n % len(PLANS)])
        kind = "image/jpeg" if n % 2 else "image/png"
        attributes = {"job": job, "file": f"{n}.png", "file_index": str(n), "width": str(width),
                      "height": str(height), "actions": plan.to_json(),
                      "blob_sha256": blobs.put(data, TENANT).sha256}  # fmt: skip
        env = new_envelope(data, kind, tenant=TENANT, attributes=attributes,
                           envelope_id=f"{job}.{n}")  # fmt: skip
        made.append(check_in(env, blobs, threshold=256 * 1024))
    return made


def ceiling(inputs: list[Envelope], blobs: LocalBlobStore, batch: int) -> tuple[float, int]:
    """Seconds and outputs for the step alone."""
    step = ApplyActions(blobs, 24.0)
    step.process(inputs[:1])  # warm-up (OpenCV's first calls)
    started = time.perf_counter()
    outputs = 0
    for i in range(0, len(inputs), batch):
        for outcome in step.process(inputs[i : i + batch]):
            assert isinstance(outcome, list), outcome
            outputs += len(outcome)
    return time.perf_counter() - started, outputs


def pipeline(spec: PipelineSpec, inputs: list[Envelope]) -> tuple[float, float, int]:
    """Seconds until the apply stage committed every image and until every output was
    stored, and how many outputs were stored; every one checked by id."""
    topic = next(iter(spec.topics))
    apply_group = spec.stage("apply").group(spec.name)
    bus, store = open_bus(spec.bus), ResultsStore(spec.store)
    try:
        with pipeline_threads(spec, replicas=1):
            warm = envelopes(1, LocalBlobStore(Path(spec.blobs.removeprefix("file://"))))
            bus.produce(topic, [Record(e.id.encode(), e.SerializeToString()) for e in warm])
            warm_job = ResultFilter(group=warm[0].attributes["job"])
            _wait(lambda: store.count_results(TENANT, warm_job) > 0)
            before = _committed(bus, topic, apply_group)
            started = time.perf_counter()
            bus.produce(topic, [Record(e.id.encode(), e.SerializeToString()) for e in inputs])
            _wait(lambda: _committed(bus, topic, apply_group) >= before + len(inputs))
            applied = time.perf_counter() - started
            job = ResultFilter(app=APP.name, group=inputs[0].attributes["job"])
            expected = _expected_ids(inputs)
            _wait(lambda: store.count_results(TENANT, job) >= len(expected))
            stored = time.perf_counter() - started
        rows = store.list_results(TENANT, job, limit=1000).items
        ids = [row.id for row in rows]
        assert set(ids) == expected and len(ids) == len(expected), "lost or doubled outputs"
        return applied, stored, len(ids)
    finally:
        bus.close()
        store.close()


def _expected_ids(inputs: list[Envelope]) -> set[str]:
    ids = set()
    for env in inputs:
        plan = parse_actions(env.attributes["actions"])
        tiles = plan.output_sizes(int(env.attributes["width"]), int(env.attributes["height"]))
        ids |= {derive_id(env.id, "apply", tile) for tile in range(len(tiles))}
    return ids


def _committed(bus: Bus, topic: str, group: str) -> int:
    return sum(p.committed or 0 for p in bus.partitions(topic, group))


def _wait(condition: Callable[[], bool], timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the pipeline did not finish in time")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--bus", help="bus URL (default: an embedded log in a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imageops-bench-") as folder:
        work = Path(folder)
        spec = load_pipeline(APP.pipeline_path()).with_urls(
            bus=args.bus or f"sqlite:///{work / 'bus.db'}",
            store=f"sqlite:///{work / 'results.db'}", blobs=f"file://{work / 'blobs'}",
        )  # fmt: skip
        blobs = LocalBlobStore(work / "blobs")
        inputs = envelopes(args.images, blobs)
        batch = spec.stage("apply").batch.max_size
        # The ceiling writes its outputs apart, so the pipeline's writes are new writes too.
        apart = LocalBlobStore(work / "ceiling-blobs")
        for env in inputs:
            apart.put(payload_bytes(env, blobs), TENANT)
        seconds, outputs = ceiling(inputs, apart, batch)
        applied, stored, made = pipeline(spec, inputs)
    images = len(inputs)
    print(f"{images} images ({', '.join(f'{w}x{h}' for w, h in SIZES)}), {outputs} outputs, "
          f"apply batch {batch}, bus {args.bus or 'embedded'}")  # fmt: skip
    print(f"{'':32} {'seconds':>8} {'images/s':>9} {'outputs/s':>10}")
    for label, secs, count in (
        ("ceiling (the step alone)", seconds, outputs),
        ("pipeline: apply stage committed", applied, made),
        ("pipeline: every output stored", stored, made),
    ):
        print(f"{label:32} {secs:8.2f} {images / secs:9.1f} {count / secs:10.1f}")
    print(f"apply stage / ceiling: {seconds / applied:.2f}; end to end / ceiling: "
          f"{seconds / stored:.2f}; 0 lost, 0 doubled ({made} outputs by id)")  # fmt: skip


if __name__ == "__main__":
    main()
