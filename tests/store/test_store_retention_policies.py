"""Stored retention policies on both stores: set, read, replace, list and clear them,
audited; row-level security keeps each tenant to its own on PostgreSQL; housekeeping
expires only the tenants with a policy, only what is older, and caps the topics."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg_testing import ensure_role
from sqlalchemy import Engine, Table, create_engine, insert, select, text
from sqlalchemy.exc import ProgrammingError
from store_testing import RLS_ROLE, postgres_schema_url

from inferstream.api.accounts import Accounts
from inferstream.apps.eggs import APP
from inferstream.bus import Record, RetentionPolicy, open_bus
from inferstream.envelope import now_us
from inferstream.errors import ConfigError
from inferstream.pipeline import PipelineSpec, load_pipeline
from inferstream.runner import (
    TOPIC_FLOOR_ENV,
    ensure_topics,
    housekeep,
    tenant_topic_cap,
    topic_retention,
)
from inferstream.store import RejectedWrite, ResultRow, ResultsStore
from inferstream.store.audit import AuditLog
from inferstream.store.erasure import Requester
from inferstream.store.retention import (
    CLEAR_ACTION,
    DAY_US,
    SET_ACTION,
    BadKeepDays,
    KeepPolicy,
    clear_policy,
    get_policy,
    list_policies,
    set_policy,
)
from inferstream.store.schema import AUDIT_TABLES, predictions, records, retention_policies

RowFactory = Callable[..., ResultRow]
WHO = Requester("cli:ops", "cli", "operator")


def _known(store: ResultsStore, *tenants: str) -> None:
    for tenant in tenants:
        Accounts(store).create_tenant(tenant)


def test_a_policy_is_set_read_replaced_listed_cleared_and_checked(
    store: ResultsStore, tenants: tuple[str, str]
) -> None:
    acme, globex = tenants
    _known(store, acme, globex)
    audit = AuditLog(store)
    assert get_policy(store, acme) is None and list_policies(store) == []

    first = set_policy(audit, acme, 30, WHO)
    assert (first.tenant, first.keep_days, first.set_by) == (acme, 30, "cli:ops")
    assert get_policy(store, acme) == first and get_policy(store, globex) is None
    second = set_policy(audit, acme, 7, WHO)
    assert get_policy(store, acme) == second and second.set_at_us >= first.set_at_us
    other = set_policy(audit, globex, 90, WHO)
    assert list_policies(store) == [second, other]

    assert clear_policy(audit, acme, WHO) == second
    assert get_policy(store, acme) is None and list_policies(store) == [other]
    assert clear_policy(audit, acme, WHO) is None  # nothing left: no entry either
    entries = [(s.entry.action, json.loads(s.entry.target)) for s in audit.entries(acme)]
    assert entries == [
        (SET_ACTION, {"keep_days": 30}), (SET_ACTION, {"keep_days": 7}),
        (CLEAR_ACTION, {"keep_days": 7}),
    ]  # fmt: skip
    assert audit.verify(acme).ok and len(list(audit.entries(globex))) == 1

    for days in (0, -1, 36501, True, 1.5):
        with pytest.raises(BadKeepDays, match="from 1 to 36500"):
            set_policy(audit, acme, days, WHO)
    row = {"tenant": acme, "keep_days": 0, "set_by": "x", "set_at_us": 1}
    refused = pytest.raises(RejectedWrite, match="ck_retention_policies_keep_days")
    with refused, store.tenant_transaction(acme, "write") as conn:
        conn.execute(insert(retention_policies), [row])
    assert get_policy(store, acme) is None


def test_the_cutoff_is_keep_days_before_the_moment() -> None:
    policy = KeepPolicy("acme", 3, "x", 0)
    assert policy.cutoff_us(10 * DAY_US) == 7 * DAY_US


# -- row-level security -----------------------------------------------------------


@pytest.fixture
def as_role(pg_schema: str) -> Iterator[tuple[ResultsStore, Engine]]:
    """A store and a raw engine as a role that owns the policy, tenant and audit tables,
    so row-level security binds it (FORCE)."""
    with ResultsStore(postgres_schema_url(pg_schema)) as admin, admin.engine.begin() as conn:
        ensure_role(conn, RLS_ROLE)
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {RLS_ROLE}'))
        for table in ("retention_policies", "tenants", *AUDIT_TABLES):
            conn.execute(text(f"ALTER TABLE {table} OWNER TO {RLS_ROLE}"))
    url = postgres_schema_url(pg_schema, role=RLS_ROLE)
    store, engine = ResultsStore(url, migrate=False), create_engine(url)
    yield store, engine
    engine.dispose()
    store.close()


def test_a_tenant_reads_and_writes_only_its_own_policy_on_postgresql(
    as_role: tuple[ResultsStore, Engine], tenants: tuple[str, str]
) -> None:
    store, engine = as_role
    acme, globex = tenants
    _known(store, acme, globex)
    audit = AuditLog(store)
    set_policy(audit, acme, 30, WHO)
    set_policy(audit, globex, 90, WHO)
    # Housekeeping finds both through the tenants table, each in its own transaction.
    assert [(p.tenant, p.keep_days) for p in list_policies(store)] == [(acme, 30), (globex, 90)]
    name = text("SELECT set_config('inferstream.tenant', :t, true)")
    with engine.begin() as conn:
        conn.execute(name, {"t": acme})
        seen = conn.execute(text("SELECT tenant FROM retention_policies")).scalars().all()
        assert seen == [acme]
        changed = conn.execute(
            text("UPDATE retention_policies SET keep_days = 1 WHERE tenant = :t"), {"t": globex}
        )
        assert changed.rowcount == 0
        gone = conn.execute(text("DELETE FROM retention_policies WHERE tenant = :t"), {"t": globex})
        assert gone.rowcount == 0
    with pytest.raises(ProgrammingError, match="row-level security"), engine.begin() as conn:
        conn.execute(name, {"t": acme})
        conn.execute(
            text("INSERT INTO retention_policies VALUES (:t, 1, 'x', 1)"), {"t": f"{globex}-2"}
        )
    with engine.begin() as conn:  # no tenant named: nothing
        assert conn.execute(text("SELECT count(*) FROM retention_policies")).scalar_one() == 0
        forced = (
            "SELECT relforcerowsecurity FROM pg_class WHERE oid = 'retention_policies'::regclass"
        )
        assert conn.execute(text(forced)).scalar_one() is True
    found = get_policy(store, globex)
    assert found is not None and (found.tenant, found.keep_days) == (globex, 90)


# -- housekeeping -------------------------------------------------------------------


@pytest.fixture
def spec(store_url: str, tmp_path: Path) -> PipelineSpec:
    return load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}", store=store_url, blobs=f"file://{tmp_path / 'b'}"
    )


def _ids(store: ResultsStore, table: Table, tenant: str) -> set[str]:
    column = table.c.record_id if table is predictions else table.c.id
    with store.tenant_transaction(tenant, "read") as conn:
        return set(conn.execute(select(column).where(table.c.tenant == tenant)).scalars())


def test_housekeeping_expires_only_tenants_with_a_policy_and_only_older_rows(
    spec: PipelineSpec,
    make_row: RowFactory,
    tenants: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOPIC_FLOOR_ENV, "24")  # below the 2-day policy: the policy caps
    acme, globex = tenants
    now = now_us()
    with ResultsStore(spec.store) as store:
        _known(store, acme, globex)
        for tenant in tenants:
            store.upsert_results([make_row(tenant, "old", stored_at_us=now - 3 * DAY_US),
                                  make_row(tenant, "new", stored_at_us=now - DAY_US)])  # fmt: skip
        set_policy(AuditLog(store), acme, 2, WHO)
        before = {t: _ids(store, records, t) for t in tenants}
    assert before == {acme: {"old", "new"}, globex: {"old", "new"}}
    bus = open_bus(spec.bus)
    try:
        ensure_topics(bus, spec)
        old_ms = (now - 3 * DAY_US) // 1000
        bus.produce("scans.raw.dlq", [Record(b"k", b"old", old_ms), Record(b"k", b"new")])

        done = housekeep(spec)

        assert done[0] == f"retention: {acme} expired 2 rows and 0 blobs older than 2 days"
        assert not any(globex in line for line in done)
        assert done[1] == (
            "topic retention dropped 1 messages (none kept over 2 days: the shortest "
            "tenant retention)"
        )
        # No retention of its own in the file: the tenant's policy dropped the old one.
        assert sum(p.high - p.low for p in bus.partitions("scans.raw.dlq")) == 1
    finally:
        bus.close()
    with ResultsStore(spec.store) as store:
        assert {t: _ids(store, records, t) for t in tenants} == {
            acme: {"new"}, globex: {"old", "new"}
        }  # fmt: skip
        assert _ids(store, predictions, acme) == {"new"}
        actions = [(s.entry.action, s.entry.actor) for s in AuditLog(store).entries(acme)]
        assert actions == [(SET_ACTION, "cli:ops"), ("expire records", "housekeeping")]
    assert housekeep(spec)[0].startswith("topic retention dropped 0 messages")  # all done


def test_topics_keep_nothing_longer_than_the_shortest_policy() -> None:
    spec = load_pipeline(APP.pipeline_path())
    existing = ["scans.raw", "scans.raw.dlq", "another.pipeline"]
    assert topic_retention(spec, existing) == spec.retention
    day = 86_400.0
    capped = topic_retention(spec, existing, longest_s=2 * day)
    assert capped == {
        "scans.raw": RetentionPolicy(max_age_s=day),  # its own day is shorter
        "scans.predicted": RetentionPolicy(max_age_s=day),
        "scans.raw.dlq": RetentionPolicy(max_age_s=2 * day),  # kept forever before
    }
    shorter = topic_retention(spec, existing, longest_s=3600.0)
    assert {p.max_age_s for p in shorter.values()} == {3600.0}


def test_housekeeping_does_not_make_a_store_that_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "none" / "results.db"
    spec = load_pipeline(APP.pipeline_path()).with_urls(
        bus=f"sqlite:///{tmp_path / 'bus.db'}", store=f"sqlite:///{missing}"
    )
    bus = open_bus(spec.bus)
    try:
        ensure_topics(bus, spec)
    finally:
        bus.close()
    assert housekeep(spec) == ["topic retention dropped 0 messages"]
    assert not missing.parent.exists()


def test_a_tenants_policy_caps_the_topics_no_lower_than_the_floor() -> None:
    day = 86_400.0
    assert tenant_topic_cap(None, {}) is None  # no policy: the file's retention alone
    assert tenant_topic_cap(day, {}) == 7 * day  # a one-day policy: a week, by default
    assert tenant_topic_cap(30 * day, {}) == 30 * day
    assert tenant_topic_cap(day, {TOPIC_FLOOR_ENV: "0"}) == day
    assert tenant_topic_cap(day, {TOPIC_FLOOR_ENV: "48"}) == 2 * day
    for bad in ("-1", "a week", "nan", "inf"):
        with pytest.raises(ConfigError, match=TOPIC_FLOOR_ENV):
            tenant_topic_cap(day, {TOPIC_FLOOR_ENV: bad})
