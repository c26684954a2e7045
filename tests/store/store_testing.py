"""Helpers shared by the store tests: where PostgreSQL is and how to reach one schema."""

from __future__ import annotations

import os
from urllib.parse import quote

POSTGRES_URL = os.environ.get(
    "INFERSTREAM_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

#: A NOLOGIN role without BYPASSRLS, to see what row-level security lets through
#: (the test user is a superuser, and superusers bypass every policy).
RLS_ROLE = "inferstream_store_rls_test"


def postgres_schema_url(schema: str, **options: str) -> str:
    settings = {"search_path": schema, **options}
    joined = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return f"{POSTGRES_URL}?options={quote(joined)}"
