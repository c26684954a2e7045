"""PostgreSQL for the tests: where the server is, and a private schema per test.

A test's schema is selected through ``search_path`` in the URL and dropped with
everything in it afterwards, so test runs sharing the database never meet. This
module sits at the top of ``tests/`` so that every folder's tests can import it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from sqlalchemy import Connection, create_engine, text

POSTGRES_URL = os.environ.get(
    "INFERSTREAM_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def schema_url(server_url: str, schema: str, **options: str) -> str:
    """``server_url`` with ``search_path`` set to ``schema``, and any other setting
    given (``role=...``), in the connection's ``options``."""
    settings = {"search_path": schema, **options}
    joined = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return f"{server_url}?options={quote(joined)}"


@contextmanager
def fresh_schema(server_url: str, prefix: str) -> Iterator[str]:
    """The name of a new schema ``<prefix>_<random>``, dropped with everything in it
    afterwards (for tests that grant on it by name)."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield schema
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@contextmanager
def private_schema(server_url: str, prefix: str, **options: str) -> Iterator[str]:
    """The URL of a new schema ``<prefix>_<random>`` (with the settings ``options``
    names), dropped with everything in it afterwards."""
    with fresh_schema(server_url, prefix) as schema:
        yield schema_url(server_url, schema, **options)


def ensure_role(conn: Connection, role: str) -> None:
    """Create the NOLOGIN ``role`` unless it exists (concurrent runs may race to it)."""
    conn.execute(
        text(
            f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
    )
