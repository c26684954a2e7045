"""Migration 0004: a store made by the release before it (results, shadow results,
feedback and scans of the eggs application) is upgraded with no row lost."""

from __future__ import annotations

import json

import pytest
from pg_testing import ensure_role
from sqlalchemy import text
from store_testing import RLS_ROLE, postgres_schema_url

from inferstream.store import ResultFilter, ResultsStore

TENANTS = ("acme", "globex")
SCANS = 120  # per tenant, so a copy in batches and both tenants are exercised


def _hand_to_owner(store: ResultsStore, schema: str) -> None:
    with store.engine.begin() as conn:
        ensure_role(conn, RLS_ROLE)
        conn.execute(text(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO {RLS_ROLE}'))
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}
        ).scalars()
        for table in list(tables):
            conn.execute(text(f'ALTER TABLE "{schema}".{table} OWNER TO {RLS_ROLE}'))


def _old_result(tenant: str, n: int) -> dict[str, object]:
    return {
        "id": f"{tenant}-scan-{n:04d}", "tenant": tenant, "egg_id": f"EGG-{n:06d}",
        "tray": f"TRAY-{n % 7:04d}", "scanner": None if n % 5 == 0 else f"SCANNER-0{n % 3}",
        "label": ("female", "male", "not_developing")[n % 3], "confidence": 0.5 + n % 50 / 100,
        "scores": json.dumps({"female": 0.5, "male": 0.3, "not_developing": 0.2}),
        "model_name": "egg_sexing", "model_version": "1.0.0",
        "created_at_us": 1_000_000 + n, "ingested_at_us": 1_000_500 + n,
        "stored_at_us": 2_000_000 + n, "latency_ms": 1.5,
        "lineage": json.dumps([{"stage": "classify", "at_us": 1_500_000, "worker": "w"}]),
        "trace_id": f"trace-{n}", "status": "processed",
    }  # fmt: skip


def _insert(store: ResultsStore, table: str, rows: list[dict[str, object]]) -> None:
    columns = list(rows[0])
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    )
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # row-level security: name each tenant
            for tenant in TENANTS:
                conn.execute(
                    text("SELECT set_config('inferstream.tenant', :t, true)"), {"t": tenant}
                )
                conn.execute(text(sql), [row for row in rows if row["tenant"] == tenant])
        else:
            conn.execute(text(sql), rows)


def _seed_release_0003(store: ResultsStore) -> list[dict[str, object]]:
    results = [_old_result(tenant, n) for tenant in TENANTS for n in range(SCANS)]
    _insert(store, "results", results)
    shadows = [{**row, "model_version": "2.0.0-rc1", "label": "male"} for row in results[::4]]
    _insert(store, "shadow_results", shadows)
    feedback = [
        {"tenant": row["tenant"], "egg_id": row["egg_id"], "label": "female", "source": "hatch",
         "at_us": 9}
        for row in results[::3]
    ]  # fmt: skip
    _insert(store, "feedback", feedback)
    scans = [
        {"tenant": row["tenant"], "id": row["id"], "content_type": "application/dicom",
         "size": 33000, "blob_sha256": "ab" * 32, "egg_id": row["egg_id"], "tray": row["tray"],
         "scanner": row["scanner"], "source": "edge", "trace_id": row["trace_id"],
         "received_at_us": row["ingested_at_us"]}
        for row in results
    ]  # fmt: skip
    _insert(store, "scans", scans)
    return results


def test_a_store_of_the_previous_release_keeps_every_row(
    store_url: str, request: pytest.FixtureRequest
) -> None:
    with ResultsStore(store_url, migrate=False) as store:
        store.migrate("0003")
        old = _seed_release_0003(store)
        if store.engine.dialect.name == "postgresql":
            # As deployed: the tables' owner migrates, a plain role bound by the FORCEd
            # row-level security (the test's superuser would see every row regardless).
            schema = request.getfixturevalue("pg_schema")
            _hand_to_owner(store, schema)
            with ResultsStore(postgres_schema_url(schema, role=RLS_ROLE), migrate=False) as owner:
                owner.migrate()
        store.migrate()  # to head: 0004 and whatever follows

        for tenant in TENANTS:
            mine = [row for row in old if row["tenant"] == tenant]
            assert store.count_results(tenant) == len(mine)
            page = store.list_results(tenant, limit=1000)
            by_id = {row.id: row for row in page.items}
            assert set(by_id) == {row["id"] for row in mine}  # none lost, none doubled
            for row in mine:
                new = by_id[str(row["id"])]
                assert (new.subject, new.group, new.source) == (
                    row["egg_id"],
                    row["tray"],
                    row["scanner"],
                )
                assert (new.app, new.head, new.root_id, new.parent_id) == (
                    "eggs",
                    "sex",
                    row["id"],
                    None,
                )
                assert (new.label, new.model_version, new.stored_at_us) == (
                    row["label"],
                    row["model_version"],
                    row["stored_at_us"],
                )
                assert new.attributes.get("egg_id") == row["egg_id"]
                assert "scanner" not in new.attributes or row["scanner"]
            assert store.count_results(tenant, ResultFilter(group="TRAY-0003")) == sum(
                1 for row in mine if row["tray"] == "TRAY-0003"
            )

        # Champions and shadows are predictions now; feedback keeps scoring them.
        first = str(old[0]["id"])
        roles = [(a.role, a.model_version) for a in store.list_predictions("acme", first)]
        assert roles == [("champion", "1.0.0"), ("shadow", "2.0.0-rc1")]
        figures = {
            (a.model_version, a.role): a.labelled for a in store.accuracy_by_model_version("acme")
        }
        assert figures == {
            ("1.0.0", "champion"): len(range(0, SCANS, 3)),
            ("2.0.0-rc1", "shadow"): len(range(0, SCANS, 12)),
        }
        feedback = store.get_feedback("globex", "EGG-000003", app="eggs", head="sex")
        assert feedback is not None and (feedback.label, feedback.source) == ("female", "hatch")
        with store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT set_config('inferstream.tenant', 'acme', true)"))
            columns = conn.execute(
                text("SELECT subject, group_key, device FROM scans WHERE id = :i"), {"i": first}
            ).one()
        assert tuple(columns) == (old[0]["egg_id"], old[0]["tray"], old[0]["scanner"])
