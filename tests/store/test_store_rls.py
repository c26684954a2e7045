"""Row-level security on PostgreSQL: a tenant's transaction cannot see other tenants' rows.

The test user is a superuser, which bypasses every policy, so the checks run as
a plain role that *owns* the tables: owners bypass RLS too unless it is FORCEd,
so this also proves the FORCE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg_testing import ensure_role
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError
from store_testing import RLS_ROLE, postgres_schema_url

import inferstream
from inferstream.store import DeadLetterRow, ResultRow, ResultsStore
from inferstream.store.schema import TENANT_TABLES

RowFactory = Callable[..., ResultRow]


@pytest.fixture
def owned_schema(pg_schema: str) -> Iterator[str]:
    """A migrated schema whose tenant tables belong to the unprivileged test role."""
    with ResultsStore(postgres_schema_url(pg_schema)) as store, store.engine.begin() as conn:
        ensure_role(conn, RLS_ROLE)
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {RLS_ROLE}'))
        for table in TENANT_TABLES:
            conn.execute(text(f"ALTER TABLE {table} OWNER TO {RLS_ROLE}"))
    yield pg_schema


@pytest.fixture
def as_role(owned_schema: str) -> Iterator[Engine]:
    engine = create_engine(postgres_schema_url(owned_schema, role=RLS_ROLE))
    yield engine
    engine.dispose()


def _tenants_visible(conn: Connection) -> dict[str, set[str]]:
    return {
        table: set(conn.execute(text(f"SELECT DISTINCT tenant FROM {table}")).scalars())
        for table in TENANT_TABLES
    }


def _seed(store: ResultsStore, make_row: RowFactory, tenant: str) -> None:
    letter = DeadLetterRow("d1", tenant, "decode", "InvalidInput", "bad", 1, "scans.raw", 0, 1, 1)
    row = make_row(tenant, "s1")
    shadow = dataclasses.replace(row.champion(), role="shadow", model_version="2.0.0")
    store.write_batch(results=[row], predictions=[row.champion(), shadow], dead_letters=[letter])
    store.add_feedback(tenant, "EGG-s1", "female", app="eggs", head="sex")


def test_store_works_under_rls_and_sees_only_its_tenant(
    owned_schema: str, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    url = postgres_schema_url(owned_schema, role=RLS_ROLE)
    with ResultsStore(url, migrate=False) as store:
        # One batch, two tenants: the store must switch the setting between them.
        store.upsert_results([make_row(acme, "a1"), make_row(globex, "g1"), make_row(acme, "a2")])
        for tenant in tenants:
            _seed(store, make_row, tenant)
        assert store.count_results(acme) == 3 and store.count_results(globex) == 2
        assert store.get_result(acme, "g1") is None
        assert [m.labelled for m in store.accuracy_by_model_version(acme)] == [1, 1]


def test_raw_sql_with_one_tenant_set_cannot_see_another(
    owned_schema: str, as_role: Engine, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    with ResultsStore(postgres_schema_url(owned_schema), migrate=False) as admin:
        for tenant in tenants:
            _seed(admin, make_row, tenant)
        with admin.engine.connect() as conn:
            # The superuser sees both tenants: the rows are really there.
            assert _tenants_visible(conn)["records"] == {acme, globex}
            forced = conn.execute(
                text("SELECT relname, relforcerowsecurity FROM pg_class WHERE relname = ANY(:t)"),
                {"t": list(TENANT_TABLES)},
            ).all()
            assert dict(forced) == dict.fromkeys(TENANT_TABLES, True)

    with as_role.begin() as conn:
        conn.execute(text("SELECT set_config('inferstream.tenant', :t, true)"), {"t": acme})
        assert _tenants_visible(conn) == {key: {acme} for key in TENANT_TABLES}
        leaked = conn.execute(text("SELECT count(*) FROM records WHERE tenant = :t"), {"t": globex})
        assert leaked.scalar_one() == 0
    with as_role.begin() as conn:
        # No tenant named: nothing at all is visible.
        assert _tenants_visible(conn) == {key: set() for key in TENANT_TABLES}


def test_writing_another_tenants_row_is_refused(
    as_role: Engine, make_row: RowFactory, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    with pytest.raises(ProgrammingError, match="row-level security"), as_role.begin() as conn:
        conn.execute(text("SELECT set_config('inferstream.tenant', :t, true)"), {"t": acme})
        conn.execute(
            text(
                "INSERT INTO feedback (tenant, app, subject, head, label, source, at_us) "
                "VALUES (:t, 'eggs', 'E', 'sex', 'male', 'x', 1)"
            ),
            {"t": globex},
        )


def test_only_the_tenancy_module_names_the_tenant() -> None:
    """The row-level-security setting is made in one module; every reader goes through
    the store's tenant transactions (migrations write policies, not settings)."""
    package = Path(inferstream.__file__).parent
    setters = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "set_config('inferstream.tenant'" in path.read_text() and "migrations" not in path.parts
    )
    assert setters == ["store/tenancy.py"]


def test_the_model_registry_shows_a_tenant_the_deployments_models_and_its_own(
    pg_schema: str, tmp_path: Path, tenants: tuple[str, str]
) -> None:
    from test_registry import relabelled, shipped

    from inferstream.blobs import LocalBlobStore
    from inferstream.registry import ModelRegistry, RegistryError
    from inferstream.store.schema import AUDIT_TABLES, REGISTRY_TABLES

    acme, globex = tenants
    with ResultsStore(postgres_schema_url(pg_schema)) as admin, admin.engine.begin() as conn:
        ensure_role(conn, RLS_ROLE)
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {RLS_ROLE}'))
        # The registry writes each change into the audit log too.
        for table in (*REGISTRY_TABLES, *AUDIT_TABLES):
            conn.execute(text(f"ALTER TABLE {table} OWNER TO {RLS_ROLE}"))
    url = postgres_schema_url(pg_schema, role=RLS_ROLE)
    with ResultsStore(url, migrate=False) as store:
        registry = ModelRegistry(store, LocalBlobStore(tmp_path / "blobs"))
        registry.register(*shipped(), actor="ops")
        registry.register(*relabelled("2.0.0-acme"), actor="alice", tenant=acme)
        assert {v.version for v in registry.versions(tenant=acme)} == {"1.0.0", "2.0.0-acme"}
        assert {v.version for v in registry.versions(tenant=globex)} == {"1.0.0"}
        with pytest.raises(RegistryError, match=r"no version '2\.0\.0-acme'"):
            registry.set_alias("egg_sexing", "x", "2.0.0-acme", actor="g", reason="r",
                               tenant=globex)  # fmt: skip
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('inferstream.tenant', :t, true)"), {"t": globex})
            owners = conn.execute(text("SELECT DISTINCT owner FROM model_versions")).scalars()
            assert set(owners) == {""}
        with pytest.raises(ProgrammingError, match="row-level security"), engine.begin() as conn:
            conn.execute(text("SELECT set_config('inferstream.tenant', :t, true)"), {"t": globex})
            conn.execute(
                text(
                    "INSERT INTO model_aliases (owner, name, alias, version, set_at_us, set_by)"
                    " VALUES ('', 'egg_sexing', 'champion', '1.0.0', 1, 'g')"
                )
            )
    finally:
        engine.dispose()
