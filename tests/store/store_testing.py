"""Helpers shared by the store tests: how to reach one schema of the test PostgreSQL."""

from __future__ import annotations

from pg_testing import POSTGRES_URL, schema_url

#: A NOLOGIN role without BYPASSRLS, to see what row-level security lets through
#: (the test user is a superuser, and superusers bypass every policy).
RLS_ROLE = "inferstream_store_rls_test"


def postgres_schema_url(schema: str, **options: str) -> str:
    return schema_url(POSTGRES_URL, schema, **options)
