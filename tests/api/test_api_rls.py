"""PostgreSQL row-level security on the API's tables (users, api_keys, scans).

The test user is a superuser (which bypasses every policy), so the check runs as a
plain role that owns the tables: FORCE makes the policy bind even the owner.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from inferstream.api.accounts import Accounts, ScanRecord
from inferstream.api.auth import issue_key
from inferstream.store import ResultsStore
from inferstream.store.schema import API_TENANT_TABLES

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ROLE = "inferstream_api_rls_test"


def _url(schema: str, **options: str) -> str:
    settings = {"search_path": schema, **options}
    joined = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return f"{POSTGRES_URL}?options={quote(joined)}"


@pytest.fixture
def owned_schema() -> Iterator[str]:
    schema = f"apirls_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(
            text(
                f"DO $$ BEGIN CREATE ROLE {ROLE} NOLOGIN; "
                "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            )
        )
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO {ROLE}'))
    try:
        with ResultsStore(_url(schema)) as store, store.engine.begin() as conn:
            for table in API_TENANT_TABLES:
                conn.execute(text(f"ALTER TABLE {table} OWNER TO {ROLE}"))
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _scan(tenant: str, ident: str) -> ScanRecord:
    return ScanRecord(tenant, ident, "application/dicom", 1, "ab", None, None, None, "t", "x", 1)


@pytest.mark.postgres
def test_api_tables_show_one_tenant_per_transaction(owned_schema: str) -> None:
    with ResultsStore(_url(owned_schema, role=ROLE), migrate=False) as store:
        accounts = Accounts(store)
        for tenant in ("acme", "globex"):
            accounts.create_user(tenant, "alice", "hash", "viewer")
            issue_key(accounts, tenant, "k", "device")
            accounts.record_scans([_scan(tenant, f"{tenant}-1")])
        assert accounts.find_scan("acme", "globex-1") is None
        assert accounts.find_scan("acme", "acme-1") is not None
        with store.engine.begin() as conn:
            conn.execute(text("SELECT set_config('inferstream.tenant', 'acme', true)"))
            for table in API_TENANT_TABLES:
                seen = set(conn.execute(text(f"SELECT DISTINCT tenant FROM {table}")).scalars())
                assert seen == {"acme"}, table
        with store.engine.begin() as conn:  # no tenant named: nothing at all
            for table in API_TENANT_TABLES:
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0
