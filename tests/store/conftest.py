"""Fixtures for the results store: every test runs on SQLite and on PostgreSQL.

Each PostgreSQL test gets its own schema (selected through ``search_path`` in the
URL) that is dropped afterwards, so test runs sharing the database never meet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg_testing import POSTGRES_URL, fresh_schema
from store_testing import postgres_schema_url

from inferstream.store import ResultRow


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped with everything in it after the test."""
    with fresh_schema(POSTGRES_URL, "store") as schema:
        yield schema


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The top conftest's ``store_url``, but on ``pg_schema``: tests that hand the
    tables to a role ask for the schema's name too."""
    if request.param == "postgres":
        schema: str = request.getfixturevalue("pg_schema")
        return postgres_schema_url(schema)
    return f"sqlite:///{tmp_path / 'results.db'}"


RowFactory = Callable[..., ResultRow]


@pytest.fixture
def make_row() -> RowFactory:
    """Result rows with sensible defaults; override any field by keyword."""

    def make(tenant: str, ident: str, stored_at_us: int = 1_000_000, **fields: object) -> ResultRow:
        values: dict[str, object] = {
            "id": ident,
            "tenant": tenant,
            "label": "female",
            "confidence": 0.9,
            "scores": {"female": 0.9, "male": 0.07, "not_developing": 0.03},
            "model_name": "egg_sexing",
            "model_version": "1.0.0",
            "created_at_us": stored_at_us - 50_000,
            "ingested_at_us": stored_at_us - 40_000,
            "stored_at_us": stored_at_us,
            "latency_ms": 50.0,
            "subject": f"EGG-{ident}",
            "group": "TRAY-0001",
            "source": "SCANNER-01",
            "app": "eggs",
            "head": "sex",
            "lineage": ({"stage": "classify", "at_us": stored_at_us - 10_000, "worker": "w"},),
            "trace_id": "trace",
        }
        values.update(fields)
        return ResultRow(**values)  # type: ignore[arg-type]

    return make
