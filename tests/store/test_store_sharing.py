"""Sharing grants in the store, on SQLite and PostgreSQL: which records a grantee reads.

A hatchery (the owner) shares records of one application with a lab (the grantee);
a third tenant is never granted anything. Every case asserts by id the exact set the
lab reads (listing, paging, one record, predictions), so a row too many fails as
surely as a row too few. On PostgreSQL the policy is checked on its own too: raw SQL
as an unprivileged role naming the lab reads exactly the same rows and cannot write
the hatchery's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_testing import ensure_role
from sqlalchemy import Engine, create_engine, event, select, text, update
from sqlalchemy.exc import ProgrammingError
from store_testing import RLS_ROLE, postgres_schema_url

from inferstream.application import AppSpec, Attribute
from inferstream.envelope import now_us
from inferstream.store import ResultFilter, ResultRow, ResultsStore
from inferstream.store.queries import decode_cursor
from inferstream.store.schema import SHARING_TABLES, TENANT_TABLES, records, share_grants
from inferstream.store.share_rules import covered, share_params
from inferstream.store.sharing import Condition, Grant, GrantError, GrantNotFound, Sharing

RowFactory = Callable[..., ResultRow]
DAY_US = 86_400_000_000
START_US = 1_700_000_000_000_000

TRAYS = AppSpec(
    name="trays", title="Trays", package=__name__, subject="egg_id", group="tray",
    attributes=(Attribute("egg_id", filterable=True), Attribute("tray", "int", filterable=True),
                Attribute("site"), Attribute("weight", "float")),
)  # fmt: skip


@pytest.fixture
def parties() -> tuple[str, str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"hatchery-{suffix}", f"lab-{suffix}", f"other-{suffix}"


def _seed(store: ResultsStore, make_row: RowFactory, parties: tuple[str, str, str]) -> None:
    """The hatchery: trays 5..27 over 12 days, two sites; one record of another app;
    the lab and the third tenant: one record each."""
    hatchery, lab, other = parties
    rows = []
    for n in range(12):
        tray, site = 5 + 2 * n, ("north", "south")[n % 2]
        attributes = {"egg_id": f"E{n}", "tray": tray, "site": site, "weight": 50.0 + n}
        rows.append(
            make_row(
                hatchery,
                f"h{n}",
                START_US + n * DAY_US + 1,
                app="trays",
                subject=f"E{n}",
                group=str(tray),
                attributes=attributes,
                created_at_us=START_US + n * DAY_US,
            )
        )
    rows.append(make_row(hatchery, "h-eggs", START_US + 99, app="eggs"))
    rows.append(make_row(lab, "l0", START_US + 5, app="trays", attributes={"tray": 11}))
    rows.append(make_row(other, "o0", START_US + 6, app="trays", attributes={"tray": 11}))
    store.upsert_results(rows)


def _hatchery_ids(*numbers: int) -> set[str]:
    return {f"h{n}" for n in numbers}


#: grant keyword arguments -> the hatchery's records the lab then reads (besides its own)
CASES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "none": ({}, set()),
    "app": ({"conditions": ()}, _hatchery_ids(*range(12))),
    "tray_range": (
        {"conditions": (Condition("tray", "number", 10, 20),)},
        _hatchery_ids(3, 4, 5, 6, 7),  # trays 11, 13, 15, 17, 19
    ),
    "site_equals": (
        {"conditions": (Condition("site", "text", "north", "north"),)},
        _hatchery_ids(0, 2, 4, 6, 8, 10),
    ),
    "date_range": (
        {"since_us": START_US + 2 * DAY_US, "until_us": START_US + 5 * DAY_US},
        _hatchery_ids(2, 3, 4),
    ),
    "no_images": ({"images": False}, _hatchery_ids(*range(12))),
    "masked": ({"masked": ("site", "egg_id")}, _hatchery_ids(*range(12))),
    "two_conditions": (
        {
            "conditions": (
                Condition("tray", "number", 10, None),
                Condition("weight", "number", None, 55.0),
            )
        },
        _hatchery_ids(3, 4, 5),  # tray >= 10 and weight <= 55
    ),
}


def _grant(sharing: Sharing, parties: tuple[str, str, str], **options: Any) -> Grant:
    hatchery, lab, _ = parties
    options.setdefault("expires_at_us", now_us() + DAY_US)
    return sharing.grant(hatchery, lab, TRAYS, created_by="alice", **options)


def _listed(sharing: Sharing, viewer: str, **filters: Any) -> list[str]:
    """Every id the viewer lists, page by page (pages of 2 to exercise the cursor)."""
    ids, cursor = [], None
    while True:
        page = sharing.list_visible(viewer, ResultFilter(**filters), cursor, limit=2)
        ids += [seen.row.id for seen in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_records_of_several_owners_come_in_one_store_order_page_by_page(
    store_url: str, make_row: RowFactory, parties: tuple[str, str, str], order: Any
) -> None:
    """The lab's own records and those two owners share, merged: every page in store
    order across the three tenants, each record once."""
    hatchery, lab, other = parties
    with ResultsStore(store_url) as store:
        _seed(store, make_row, parties)

        # More of the lab's and the third tenant's, stored between the hatchery's.
        def more(tenant: str, prefix: str, count: int, after_us: int) -> list[ResultRow]:
            return [make_row(tenant, f"{prefix}{n}", START_US + n * DAY_US + after_us, app="trays")
                    for n in range(1, count + 1)]  # fmt: skip

        store.upsert_results(more(lab, "l", 5, 7) + more(other, "o", 3, 3))
        sharing = Sharing(store)
        _grant(sharing, parties)
        sharing.grant(other, lab, TRAYS, created_by="olga", expires_at_us=now_us() + DAY_US)
        ids, cursor = [], None
        while True:
            page = sharing.list_visible(lab, ResultFilter(app="trays"), cursor, 3, order)
            ids += [(seen.row.stored_at_us, seen.row.id, seen.shared_from) for seen in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    owners = {"h": hatchery, "o": other, "l": None}
    assert ids == sorted(ids, reverse=order == "desc")
    assert {ident for _, ident, _ in ids} == (
        {f"h{n}" for n in range(12)} | {f"l{n}" for n in range(6)} | {f"o{n}" for n in range(4)}
    )
    assert len(ids) == 22
    assert all(owner == owners[ident[0]] for _, ident, owner in ids)


def test_a_grantee_lists_each_tenant_through_its_own_index_on_sqlite(
    tmp_path: Path, make_row: RowFactory, parties: tuple[str, str, str]
) -> None:
    """SQLite's plan for a listing through grants: each tenant's records read through
    the tenant-first index of the page's order, no walk over every tenant's records."""
    lab = parties[1]
    with ResultsStore(f"sqlite:///{tmp_path / 'results.db'}") as store:
        _seed(store, make_row, parties)
        sharing = Sharing(store)
        _grant(sharing, parties)
        listed: list[tuple[str, Any]] = []

        def keep(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if "LIMIT" in statement:  # the listing, not the grants it looks up first
                listed.append((statement, params))

        event.listen(store.engine, "before_cursor_execute", keep)
        assert len(sharing.list_visible(lab, None, None, 5, "desc").items) == 5
        with store.engine.connect() as conn:
            sql, params = listed[0]
            plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)]
    scans = [step for step in plan if "records" in step and "share" not in step]
    assert scans and all("USING INDEX ix_records_tenant_stored_at_us_id" in s for s in scans), plan


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_lab_reads_exactly_what_the_grant_covers(
    store_url: str, make_row: RowFactory, parties: tuple[str, str, str], case: str
) -> None:
    hatchery, lab, other = parties
    options, expected = CASES[case]
    with ResultsStore(store_url) as store:
        _seed(store, make_row, parties)
        sharing = Sharing(store)
        if case != "none":
            _grant(sharing, parties, **options)
        listed = _listed(sharing, lab)
        assert len(listed) == len(set(listed))  # no record twice across pages
        assert set(listed) == expected | {"l0"}
        assert set(_listed(sharing, lab, app="trays")) == expected | {"l0"}
        every = {f"h{n}" for n in range(12)} | {"h-eggs", "o0"}
        got = {ident for ident in every if sharing.get_visible(lab, ident) is not None}
        assert got == expected
        # The owner and the third tenant are untouched by the grant.
        assert set(_listed(sharing, other)) == {"o0"}
        assert len(_listed(sharing, hatchery)) == 13
        for ident in expected:
            seen = sharing.get_visible(lab, ident)
            assert seen is not None and seen.shared_from == hatchery
            assert seen.images is (case != "no_images")
            predictions = sharing.predictions_of(lab, seen)
            assert [(p.tenant, p.record_id) for p in predictions] == [(hatchery, ident)]
            if case == "masked":
                assert set(seen.row.attributes) == {"tray", "weight"}
                assert seen.row.subject is None and seen.row.group is not None
        if case == "masked":  # filtering on a masked attribute tells nothing
            assert _listed(sharing, lab, subject="E3") == []
            assert _listed(sharing, lab, attributes={"site": "north"}) == []
            assert _listed(sharing, lab, attributes={"tray": 11}) == ["l0", "h3"]


def test_revocation_and_expiry_take_effect_on_the_next_read(
    store_url: str, make_row: RowFactory, parties: tuple[str, str, str]
) -> None:
    hatchery, lab, _ = parties
    with ResultsStore(store_url) as store:
        _seed(store, make_row, parties)
        sharing = Sharing(store)
        first = _grant(sharing, parties, conditions=(Condition("tray", "number", 5, 9),))
        second = _grant(sharing, parties, conditions=(Condition("tray", "number", 25, 30),))
        assert set(_listed(sharing, lab)) == _hatchery_ids(0, 1, 2, 10, 11) | {"l0"}
        revoked = sharing.revoke(hatchery, first.id, actor="alice")
        assert revoked.revoked_at_us is not None and revoked.revoked_by == "alice"
        assert set(_listed(sharing, lab)) == _hatchery_ids(10, 11) | {"l0"}
        assert sharing.get_visible(lab, "h0") is None
        # Expiry: the grant's time moved to the past (the store's own clock judges it).
        with store.engine.begin() as conn:
            g = share_grants.c
            conn.execute(update(share_grants).where(g.id == second.id).values(expires_at_us=1))
        assert set(_listed(sharing, lab)) == {"l0"}
        assert sharing.get_visible(lab, "h11") is None
        assert [g.id for g in sharing.grants(lab)] == [first.id, second.id]
        with pytest.raises(GrantNotFound):
            sharing.revoke(lab, second.id, actor="mallory")  # only the owner revokes


def test_overlapping_grants_show_what_either_shows(
    store_url: str, make_row: RowFactory, parties: tuple[str, str, str]
) -> None:
    _, lab, _ = parties
    with ResultsStore(store_url) as store:
        _seed(store, make_row, parties)
        sharing = Sharing(store)
        _grant(sharing, parties, masked=("site",), images=False)
        _grant(sharing, parties, conditions=(Condition("tray", "number", 5, 7),))
        shown = {item.row.id: item for item in sharing.list_visible(lab, limit=100).items}
        assert "site" in shown["h0"].row.attributes and shown["h0"].images
        assert "site" not in shown["h2"].row.attributes and not shown["h2"].images


def test_a_filter_on_a_masked_field_tells_nothing_not_even_through_the_cursor(
    store_url: str, make_row: RowFactory, parties: tuple[str, str, str]
) -> None:
    """A page of one, filtered on a masked subject or group, once named the masked
    record in its cursor though it showed no row (a reviewer's reproduction)."""
    _, lab, _ = parties
    with ResultsStore(store_url) as store:
        _seed(store, make_row, parties)
        sharing = Sharing(store)
        # The lab's own record holding the values it guesses, stored before the hatchery's.
        probe = {"egg_id": "E3", "tray": 11}
        store.upsert_results([make_row(lab, "l-probe", START_US + 7, app="trays", subject="E3",
                                       group="11", attributes=probe)])  # fmt: skip
        _grant(sharing, parties, masked=("egg_id", "tray"))
        for filters in ({"subject": "E3"}, {"group": "11"}, {"attributes": {"tray": 11}}):
            page = sharing.list_visible(lab, ResultFilter(**filters), limit=1, order="desc")
            assert [item.row.id for item in page.items] == ["l-probe"], filters
            assert page.next_cursor is None or "h3" not in decode_cursor(page.next_cursor)
            assert all(row_id.startswith("l") for row_id in _listed(sharing, lab, **filters))
        # A second grant that shows the tray: filtering on it reads through that one.
        _grant(sharing, parties, conditions=(Condition("tray", "number", 10, 12),))
        assert set(_listed(sharing, lab, group="11")) == {"h3", "l-probe"}
        assert set(_listed(sharing, lab, attributes={"tray": 11})) == {"h3", "l0", "l-probe"}


def test_a_group_summary_adds_up_what_the_grants_show_and_splits_it_per_owner(
    store_url: str, make_row: RowFactory, parties: tuple[str, str, str]
) -> None:
    """Two owners share records of group G with the lab; a third shares them with the
    group masked (so none counts in G); a fourth shares nothing. Figures are exact."""
    hatchery, lab, other = parties
    farm, stranger = f"farm-{lab}", f"stranger-{lab}"

    def rows(tenant: str, count: int, label: str, confidence: float, tray: int) -> list[ResultRow]:
        return [
            make_row(tenant, f"{tenant}-{n}", START_US + n, app="trays", group="G", label=label,
                     confidence=confidence, attributes={"tray": tray})
            for n in range(count)
        ]  # fmt: skip

    with ResultsStore(store_url) as store:
        store.upsert_results(
            rows(lab, 2, "female", 0.9, 1) + rows(hatchery, 3, "male", 0.6, 11)
            + rows(other, 1, "female", 0.3, 11)
            + rows(farm, 2, "male", 0.5, 11) + rows(stranger, 2, "male", 0.5, 11)
            + [make_row(hatchery, "outside", START_US, app="trays", group="G",
                        attributes={"tray": 30})]
        )  # fmt: skip
        sharing = Sharing(store)
        expiry = now_us() + DAY_US
        tray_10_20 = (Condition("tray", "number", 10, 20),)
        first = sharing.grant(hatchery, lab, TRAYS, expires_at_us=expiry, created_by="a",
                              conditions=tray_10_20)  # fmt: skip
        sharing.grant(other, lab, TRAYS, expires_at_us=expiry, created_by="a")
        sharing.grant(farm, lab, TRAYS, expires_at_us=expiry, created_by="a", masked=("tray",))
        summary = sharing.group_summary(lab, "G", "female")
        assert (summary.total.count, summary.total.counts) == (6, {"female": 3, "male": 3})
        assert summary.total.ratio == 0.5
        assert summary.total.mean_confidence == pytest.approx((2 * 0.9 + 3 * 0.6 + 0.3) / 6)
        parts = [(owner, part.count, part.counts) for owner, part in summary.parts]
        assert parts == [(None, 2, {"female": 2}), (hatchery, 3, {"male": 3}),
                         (other, 1, {"female": 1})]  # fmt: skip
        # The owners' own summaries are untouched; a tenant with no grant sees its own.
        assert sharing.group_summary(hatchery, "G").total.count == 4
        assert [o for o, _ in sharing.group_summary(stranger, "G").parts] == [None]
        sharing.revoke(hatchery, first.id, actor="a")
        after = sharing.group_summary(lab, "G", "female")
        assert [(o, p.count) for o, p in after.parts] == [(None, 2), (other, 1)]
        assert after.total.count == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conditions": (Condition("colour", "text", "a", "b"),)}, "no attribute"),
        ({"conditions": (Condition("tray", "text", "a", "b"),)}, "is a number"),
        ({"conditions": (Condition("tray", "number", None, None),)}, "bound"),
        ({"masked": ("secret",)}, "no attribute"),
        ({"since_us": 5, "until_us": 5}, "empty"),
    ],
)
def test_a_grant_that_cannot_hold_is_refused(
    store_url: str, parties: tuple[str, str, str], options: dict[str, Any], message: str
) -> None:
    with ResultsStore(store_url) as store:
        sharing = Sharing(store)
        with pytest.raises(GrantError, match=message):
            _grant(sharing, parties, **options)
        hatchery, _, _ = parties
        with pytest.raises(GrantError, match="another tenant"):
            sharing.grant(hatchery, hatchery, TRAYS, expires_at_us=now_us() + 1, created_by="a")
        with pytest.raises(GrantError, match="past"):
            _grant(sharing, parties, expires_at_us=now_us() - 1)
        assert sharing.grants(hatchery) == []


def test_the_sql_predicate_and_the_python_rule_agree(
    store_url: str, make_row: RowFactory, parties: tuple[str, str, str]
) -> None:
    """The WHERE clause (SQLite's enforcement) and ``Grant.covers`` (masking) admit the
    same rows for every case; a disagreement would drop or mask rows silently."""
    _, lab, _ = parties
    with ResultsStore(store_url) as store:
        _seed(store, make_row, parties)
        sharing = Sharing(store)
        rows = store.list_results(parties[0], limit=100).items
        for options, expected in CASES.values():
            with store.engine.begin() as conn:
                conn.execute(share_grants.delete())
            grant = _grant(sharing, parties, **options) if options or expected else None
            at = now_us()
            admitted = select(records.c.id).where(covered(store.engine.dialect.name))
            with store.engine.connect() as conn:
                by_sql = set(conn.execute(admitted, share_params(lab, at)).scalars())
            by_python = {r.id for r in rows if grant is not None and grant.covers(r, lab, at)}
            assert by_sql == by_python == expected


# -- PostgreSQL: the policy on its own ------------------------------------------------


@pytest.fixture
def as_role(pg_schema: str) -> Iterator[Engine]:
    with ResultsStore(postgres_schema_url(pg_schema)) as store, store.engine.begin() as conn:
        ensure_role(conn, RLS_ROLE)
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {RLS_ROLE}'))
        for table in (*TENANT_TABLES, *SHARING_TABLES):
            conn.execute(text(f"ALTER TABLE {table} OWNER TO {RLS_ROLE}"))
    engine = create_engine(postgres_schema_url(pg_schema, role=RLS_ROLE))
    yield engine
    engine.dispose()


def _as(conn: Any, tenant: str) -> None:
    conn.execute(text("SELECT set_config('inferstream.tenant', :t, true)"), {"t": tenant})


def test_postgres_policy_alone_admits_the_grant_and_refuses_writes(
    pg_schema: str, as_role: Engine, make_row: RowFactory, parties: tuple[str, str, str]
) -> None:
    hatchery, lab, other = parties
    url = postgres_schema_url(pg_schema, role=RLS_ROLE)
    with ResultsStore(url, migrate=False) as store:
        _seed(store, make_row, parties)
        sharing = Sharing(store)
        grant = _grant(sharing, parties, conditions=(Condition("tray", "number", 10, 20),))
        assert set(_listed(sharing, lab)) == _hatchery_ids(3, 4, 5, 6, 7) | {"l0"}
    with as_role.begin() as conn:
        _as(conn, lab)
        # No WHERE on the tenant at all: the policy alone decides.
        assert set(conn.execute(text("SELECT id FROM records")).scalars()) == (
            _hatchery_ids(3, 4, 5, 6, 7) | {"l0"}
        )
        shared = conn.execute(text("SELECT DISTINCT record_id FROM predictions WHERE tenant = :t"),
                              {"t": hatchery})  # fmt: skip
        assert set(shared.scalars()) == _hatchery_ids(3, 4, 5, 6, 7)
        for statement in ("UPDATE records SET label = 'x' WHERE tenant = :t",
                          "DELETE FROM records WHERE tenant = :t",
                          "DELETE FROM predictions WHERE tenant = :t"):  # fmt: skip
            assert conn.execute(text(statement), {"t": hatchery}).rowcount == 0
        assert conn.execute(text("UPDATE share_grants SET expires_at_us = 9e15")).rowcount == 0
    with as_role.begin() as conn:
        _as(conn, hatchery)  # a tenant's own rows pass tenant_isolation before the grants
        plan = "\n".join(conn.execute(text("EXPLAIN SELECT * FROM records")).scalars())
        assert plan.index("current_setting") < plan.index("share_covers"), plan
    with as_role.begin() as conn:
        _as(conn, other)
        assert set(conn.execute(text("SELECT id FROM records")).scalars()) == {"o0"}
        assert conn.execute(text("SELECT count(*) FROM share_grants")).scalar_one() == 0
    with as_role.begin() as conn:
        _as(conn, lab)  # the grantee reads its grant, and cannot touch it
        assert conn.execute(text("SELECT id FROM share_grants")).scalars().all() == [grant.id]
        moved = conn.execute(text("UPDATE share_grants SET grantee = :o WHERE id = :g"),
                             {"o": other, "g": grant.id})  # fmt: skip
        assert moved.rowcount == 0
        assert conn.execute(text("DELETE FROM share_grants")).rowcount == 0
    with pytest.raises(ProgrammingError, match="row-level security"), as_role.begin() as conn:
        _as(conn, lab)
        conn.execute(
            text("INSERT INTO share_grants (id, owner, grantee, app, images, masked, "
                 "expires_at_us, created_by, created_at_us) VALUES "
                 "('g-forged', :h, :l, 'trays', true, '{}', 9e15, 'x', 1)"),
            {"h": hatchery, "l": lab},
        )  # fmt: skip
    with ResultsStore(url, migrate=False) as store:
        Sharing(store).revoke(hatchery, grant.id, actor="alice")
    with as_role.begin() as conn:
        _as(conn, lab)
        assert set(conn.execute(text("SELECT id FROM records")).scalars()) == {"l0"}
