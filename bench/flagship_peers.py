"""The peers of the flagship benchmark: the same egg-scan work, done the usual ways.

Both peers run :func:`handle_scan` per scan: decode the DICOM (the flagship's own
decoder), preprocess it, classify it with the shipped ONNX model (loaded once per
process, the serving session options) and upsert one record (with its champion
prediction) into SQLite through the flagship's :class:`~inferstream.store.ResultsStore`.
What differs is the plumbing:

- ``celery_app`` / ``classify_scan``: Celery with the local Redis as broker, one task
  per scan, the DICOM bytes as the task argument (pickle serializer, so the bytes are
  not base64-inflated), a prefork worker with concurrency 2, no result backend;
- ``api``: a synchronous FastAPI endpoint ``POST /scan`` (raw ``application/dicom``
  body), served by uvicorn with 2 workers; FastAPI runs it in its thread pool.

Started by ``bench/flagship_bench.py``; the store URL and Redis URL come from the
environment (``FLAGSHIP_PEER_STORE``, ``FLAGSHIP_PEER_BROKER``).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Annotated

from celery import Celery
from fastapi import Body, FastAPI, Header, Response

from inferstream.apps.eggs import APP
from inferstream.apps.eggs.dicom import decode
from inferstream.apps.eggs.preprocess import preprocess_batch
from inferstream.classify import Model, load_model
from inferstream.envelope import now_us
from inferstream.store import ResultRow, ResultsStore

BROKER = os.environ.get("FLAGSHIP_PEER_BROKER", "redis://127.0.0.1:6379/5")


@cache
def _model() -> Model:
    return load_model("egg_sexing")


@cache
def _store() -> ResultsStore:
    # The bench created and migrated the database; workers only write to it.
    return ResultsStore(os.environ["FLAGSHIP_PEER_STORE"], migrate=False)


def handle_scan(dicom: bytes, scan_id: str, tenant: str, created_us: int) -> str:
    """Decode, preprocess, classify and store one scan; return its label."""
    scan = decode(dicom)
    labels, probabilities = _model().predict(preprocess_batch([scan.pixels]))
    scores = {
        name: round(float(p), 6)
        for name, p in zip(_model().info.labels, probabilities[0], strict=True)
    }
    stored = now_us()
    row = ResultRow(
        id=scan_id,
        tenant=tenant,
        label=labels[0],
        confidence=max(scores.values()),
        scores=scores,
        model_name=_model().info.name,
        model_version=_model().info.version,
        created_at_us=created_us,
        ingested_at_us=created_us,
        stored_at_us=stored,
        latency_ms=(stored - created_us) / 1000,
        app=APP.name,
        head=APP.heads[0].name,
        subject=scan.egg_id,
        group=scan.tray,
        source=scan.scanner,
        # Typed, as the flagship's sink keeps the declared attributes.
        attributes={**scan.attributes(), "incubation_day": scan.incubation_day},
        lineage=[],
        trace_id="",
    )
    _store().upsert_results([row])
    return labels[0]


celery_app = Celery("flagship_peers", broker=BROKER)
celery_app.conf.update(
    task_serializer="pickle",
    accept_content=["pickle"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@celery_app.task(name="classify_scan")  # type: ignore[untyped-decorator]
def classify_scan(dicom: bytes, scan_id: str, tenant: str, created_us: int) -> None:
    handle_scan(dicom, scan_id, tenant, created_us)


api = FastAPI()


@api.post("/scan")
def post_scan(
    dicom: Annotated[bytes, Body(media_type="application/dicom")],
    x_scan_id: Annotated[str, Header()],
    x_tenant: Annotated[str, Header()],
    x_created_us: Annotated[int, Header()],
) -> Response:
    label = handle_scan(dicom, x_scan_id, x_tenant, x_created_us)
    return Response(content=label, media_type="text/plain")
