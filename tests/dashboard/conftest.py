"""Fixtures for the live dashboard tests: stores with two tenants and a row factory.

The store is on SQLite and on PostgreSQL in turn (``store_url`` from the top conftest).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

import pytest

from inferstream.envelope import now_us
from inferstream.store import ResultRow

RowFactory = Callable[..., ResultRow]


@pytest.fixture
def make_row() -> RowFactory:
    """Records stored "now" unless told otherwise, each made from a scan of its own
    (``{tenant}-scan-{n}``) under an id of its own (``{tenant}-record-{n}``)."""
    counter = itertools.count()

    def make(tenant: str, **fields: object) -> ResultRow:
        n = next(counter)
        stored = int(fields.pop("stored_at_us", now_us() - 1_500_000))  # type: ignore[call-overload]
        values: dict[str, object] = {
            "id": f"{tenant}-record-{n}",
            "root_id": f"{tenant}-scan-{n}",
            "parent_id": f"{tenant}-scan-{n}",
            "tenant": tenant,
            "app": "eggs",
            "head": "sex",
            "label": "female",
            "confidence": 0.9,
            "scores": {"female": 0.9, "male": 0.05, "not_developing": 0.05},
            "model_name": "egg_sexing",
            "model_version": "1.0.0",
            "created_at_us": stored - 20_000,
            "ingested_at_us": stored - 15_000,
            "stored_at_us": stored,
            "latency_ms": 20.0,
            "subject": f"EGG-{n:06d}",
            "group": "TRAY-0001",
            "source": "SCANNER-01",
            "lineage": [{"stage": "classify", "at_us": stored - 5_000}],
            "trace_id": uuid.uuid4().hex,
        }
        values.update(fields)
        return ResultRow(**values)  # type: ignore[arg-type]

    return make
