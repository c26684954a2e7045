"""PostgreSQL row-level security on the API's tables (users, api_keys, scans).

The test user is a superuser (which bypasses every policy), so the check runs as a
plain role that owns the tables: FORCE makes the policy bind even the owner.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_testing import POSTGRES_URL, ensure_role, fresh_schema, schema_url
from sqlalchemy import text

from inferstream.api.accounts import Accounts, ScanRecord
from inferstream.api.auth import issue_key
from inferstream.store import ResultsStore
from inferstream.store.schema import API_TENANT_TABLES

ROLE = "inferstream_api_rls_test"


def _url(schema: str, **options: str) -> str:
    return schema_url(POSTGRES_URL, schema, **options)


@pytest.fixture
def owned_schema() -> Iterator[str]:
    with fresh_schema(POSTGRES_URL, "apirls") as schema:
        with ResultsStore(_url(schema)) as store, store.engine.begin() as conn:
            ensure_role(conn, ROLE)
            conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO {ROLE}'))
            for table in API_TENANT_TABLES:
                conn.execute(text(f"ALTER TABLE {table} OWNER TO {ROLE}"))
        yield schema


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
