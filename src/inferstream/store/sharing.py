"""Sharing grants: make, list and revoke them; read records through them.

An owner tenant grants another tenant read access to a slice of its records
(:mod:`inferstream.store.share_rules` says which rows a grant admits and how they are
shown). Grants are rows of the store, so a revocation or an expiry is in force for the
next transaction that reads. Every read here runs in a transaction naming the viewer:
on PostgreSQL row-level security admits the viewer's own rows and the rows a live
grant covers and nothing else, whatever the WHERE clause says; on SQLite the same
predicate is in the WHERE clause. Writes are untouched: they remain the owner's alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, select, update

from inferstream.application import AppSpec
from inferstream.envelope import now_us
from inferstream.errors import InvalidInput
from inferstream.store import queries, schema
from inferstream.store.attributes import check_name
from inferstream.store.rows import (
    GroupSummary,
    Order,
    Page,
    PredictionRow,
    ResultFilter,
    ResultRow,
)
from inferstream.store.share_rules import (
    COLUMNS,
    Condition,
    Grant,
    Seen,
    covered,
    seen,
    share_params,
    unmasking,
    visible,
)
from inferstream.store.store import ResultsStore, summarise

__all__ = [
    "Condition",
    "Grant",
    "GrantError",
    "GrantNotFound",
    "Seen",
    "SharedSummary",
    "Sharing",
    "Tally",
]


class GrantError(InvalidInput):
    """A grant that cannot be made as asked (unknown attribute, past expiry, ...)."""


class GrantNotFound(GrantError):
    """No such grant of this owner."""


class Sharing:
    """The grants in one results store, and the reads that honour them."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self._dialect = store.engine.dialect.name

    # -- grants ---------------------------------------------------------------

    def grant(
        self,
        owner: str,
        grantee: str,
        app: AppSpec,
        *,
        expires_at_us: int,
        created_by: str,
        conditions: Sequence[Condition] = (),
        since_us: int | None = None,
        until_us: int | None = None,
        images: bool = True,
        masked: Iterable[str] = (),
    ) -> Grant:
        """Let ``grantee`` read ``owner``'s records of ``app`` that meet the conditions,
        until ``expires_at_us``; masked attributes are never shown to it."""
        hidden = tuple(sorted(set(masked)))
        columns = {app.subject: "subject", app.group: "group", app.source: "source"}
        made = Grant(
            id=f"g-{secrets.token_hex(8)}", owner=owner, grantee=grantee, app=app.name,
            expires_at_us=expires_at_us, created_by=created_by, created_at_us=now_us(),
            conditions=tuple(conditions), since_us=since_us, until_us=until_us,
            images=images, masked=hidden,
            masked_columns=tuple(sorted(columns[name] for name in hidden if name in columns)),
        )  # fmt: skip
        _check(made, app)
        with self.store.tenant_transaction(owner, "record a sharing grant in") as conn:
            conn.execute(schema.share_grants.insert(), [_grant_params(made)])
            if made.conditions:
                rows = [_condition_params(made, condition) for condition in made.conditions]
                conn.execute(schema.share_conditions.insert(), rows)
        return made

    def grants(self, tenant: str) -> list[Grant]:
        """Every grant ``tenant`` made or received, live or not, oldest first."""
        g = schema.share_grants.c
        stmt = select(schema.share_grants).where((g.owner == tenant) | (g.grantee == tenant))
        with self.store.tenant_transaction(tenant, "list sharing grants in") as conn:
            return _load(conn, stmt.order_by(g.created_at_us, g.id))

    def revoke(self, owner: str, grant_id: str, *, actor: str) -> Grant:
        """End a grant of ``owner``'s now: the grantee's next read no longer sees its rows."""
        g = schema.share_grants.c
        stamp = now_us()
        stmt = (
            update(schema.share_grants)
            .where(g.id == grant_id, g.owner == owner, g.revoked_at_us.is_(None))
            .values(revoked_at_us=stamp, revoked_by=actor)
        )
        with self.store.tenant_transaction(owner, "revoke a sharing grant in") as conn:
            conn.execute(stmt)
            found = _load(
                conn, select(schema.share_grants).where(g.id == grant_id, g.owner == owner)
            )
        if not found:
            raise GrantNotFound(f"no grant {grant_id[:64]!r} of tenant {owner!r}; list them first")
        return found[0]

    # -- reads through grants -----------------------------------------------------

    def list_visible(
        self,
        viewer: str,
        filters: ResultFilter | None = None,
        cursor: str | None = None,
        limit: int = 100,
        order: Order = "asc",
    ) -> Page[Seen]:
        """One page of the records ``viewer`` may read, its own and those shared with
        it, ordered by (stored_at_us, id); shared ones masked and marked with their owner."""
        self.store.sensitive.check_filter(filters)
        at = now_us()
        with self.store.tenant_transaction(viewer, "list records shared with a tenant in") as conn:
            grants = unmasking(self._live(conn, viewer, at), filters)

            def page_of(tenant: str, shared: bool) -> Select[Any]:
                terms = queries.result_conditions(tenant, filters)
                if shared:
                    terms.append(covered(self._dialect, only=True))
                small = not shared and self.store.small_window(conn, viewer, filters)
                return queries.keyset_page(schema.records, terms, queries.RECORD_ORDER,
                                           cursor=cursor, limit=limit, order=order,
                                           sort_apart=small)  # fmt: skip

            # A page of each tenant's rows (the viewer's own, then each sharing owner's
            # that a grant covers), each through its tenant-first indexes in the page's
            # order, merged into one: rows of several tenants in one WHERE (an OR) could
            # use none of those indexes and read every record of every tenant.
            owners = sorted({grant.owner for grant in grants})
            pages = [page_of(viewer, False), *(page_of(owner, True) for owner in owners)]
            stmt = queries.merged_pages(pages, queries.RECORD_ORDER, limit=limit, order=order)
            params = share_params(viewer, at, [grant.id for grant in grants])
            found = conn.execute(stmt, params).mappings().all()
        rows = self.store.sensitive.rows(found)
        next_cursor = None
        if len(rows) > limit:
            del rows[limit:]
            next_cursor = queries.encode_cursor(rows[-1].stored_at_us, rows[-1].id)
        shown = (seen(row, viewer, grants, at) for row in rows)
        kept = [item for item in shown if item is not None and _unmasked(item, filters)]
        return Page(kept, next_cursor)

    def get_visible(self, viewer: str, record_id: str) -> Seen | None:
        """The record ``record_id`` as ``viewer`` may see it (its own first), or None."""
        at = now_us()
        r = schema.records.c
        stmt = select(schema.records).where(r.id == record_id, visible(self._dialect))
        with self.store.tenant_transaction(viewer, "read a shared record from") as conn:
            found = conn.execute(stmt, share_params(viewer, at)).mappings().all()
            shared = any(r["tenant"] != viewer for r in found)
            grants = self._live(conn, viewer, at) if shared else []
        rows = self.store.sensitive.rows(found)
        rows.sort(key=lambda row: row.tenant != viewer)
        shown = (seen(row, viewer, grants, at) for row in rows)
        return next((item for item in shown if item is not None), None)

    def group_summary(self, viewer: str, group: str, ratio_label: str = "") -> SharedSummary:
        """One group's summary over every record ``viewer`` may read, and per owner.

        The viewer's own records are summed by the database; shared ones are read row
        by row and pass :func:`seen` first, so a row the SQL admitted that no grant
        covers in Python, or whose group the grant masks, is not counted.
        """
        at = now_us()
        with self.store.tenant_transaction(viewer, "summarise a group in") as conn:
            own = [Tally(*row) for row in conn.execute(queries.summary_by_label(viewer, group))]
            grants = self._live(conn, viewer, at)
            shared = self._shared_tallies(conn, viewer, group, grants, at) if grants else {}
        parts: list[tuple[str | None, GroupSummary]] = [
            (None, summarise(viewer, group, own, ratio_label))
        ]
        for owner in sorted(shared):
            parts.append((owner, summarise(owner, group, shared[owner], ratio_label)))
        every = merge_tallies([*own, *(tally for t in shared.values() for tally in t)])
        return SharedSummary(summarise(viewer, group, every, ratio_label), tuple(parts))

    def _shared_tallies(
        self, conn: Connection, viewer: str, group: str, grants: Sequence[Grant], at: int
    ) -> dict[str, list[Tally]]:
        """Per owner, the per-label tallies of its records of ``group`` shared with ``viewer``."""
        r = schema.records.c
        wanted = ResultFilter(group=group)
        stmt = select(schema.records).where(
            r.tenant != viewer, r.group_key == group, covered(self._dialect)
        )
        by_owner: dict[str, list[ResultRow]] = {}
        # Counting needs no sensitive value: rows are judged as stored, unopened (a
        # condition the SQL could not match on a sealed value fails here too: closed).
        found = conn.execute(stmt.execution_options(yield_per=1000), share_params(viewer, at))
        for mapping in found.mappings():
            item = seen(ResultRow.from_mapping(mapping), viewer, grants, at)
            if item is not None and item.shared_from is not None and _unmasked(item, wanted):
                by_owner.setdefault(item.shared_from, []).append(item.row)
        return {owner: tally(rows) for owner, rows in by_owner.items()}

    def predictions_of(self, viewer: str, record: Seen) -> list[PredictionRow]:
        """Every prediction of a record ``viewer`` sees (its own, or shared with it)."""
        if record.shared_from is None:
            return self.store.list_predictions(viewer, record.row.id)
        p, r = schema.predictions.c, schema.records.c
        at = now_us()
        readable = (
            select(r.id)
            .where(r.tenant == p.tenant, r.id == p.record_id, covered(self._dialect))
            .exists()
        )
        stmt = (
            select(schema.predictions)
            .where(p.tenant == record.shared_from, p.record_id == record.row.id, readable)
            .order_by(p.head, p.role, p.model_name, p.model_version)
        )
        with self.store.tenant_transaction(viewer, "read shared predictions from") as conn:
            found = conn.execute(stmt, share_params(viewer, at)).mappings()
            return [PredictionRow.from_mapping(row) for row in found]

    def _live(self, conn: Connection, viewer: str, at: int) -> list[Grant]:
        g = schema.share_grants.c
        stmt = select(schema.share_grants).where(
            g.grantee == viewer, g.revoked_at_us.is_(None), g.expires_at_us > at
        )
        return _load(conn, stmt)


@dataclass(frozen=True, slots=True)
class Tally:
    """One label's count, confidence sum and first/last store time (a group's summary row)."""

    label: str
    count: int
    confidence_sum: float
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class SharedSummary:
    """A group's summary over every record a tenant may read (``total``), and the same
    for each owner (``parts``: ``None`` for the tenant's own, then each sharing owner)."""

    total: GroupSummary
    parts: tuple[tuple[str | None, GroupSummary], ...]


def tally(rows: Iterable[ResultRow]) -> list[Tally]:
    """The per-label tallies of ``rows``."""
    return merge_tallies(
        Tally(row.label, 1, row.confidence, row.stored_at_us, row.stored_at_us) for row in rows
    )


def merge_tallies(tallies: Iterable[Tally]) -> list[Tally]:
    """Tallies of the same label added into one."""
    merged: dict[str, Tally] = {}
    for t in tallies:
        m = merged.get(t.label)
        merged[t.label] = t if m is None else Tally(
            t.label, int(m.count) + int(t.count), float(m.confidence_sum) + float(t.confidence_sum),
            min(int(m.first), int(t.first)), max(int(m.last), int(t.last)),
        )  # fmt: skip
    return list(merged.values())


def _unmasked(item: Seen, filters: ResultFilter | None) -> bool:
    """Whether a shared row still shows everything the listing filtered on: filtering on
    a masked attribute must not tell the grantee which rows hold a value."""
    if item.shared_from is None or filters is None:
        return True
    row = item.row
    named = [row.attributes.get(name) for name in filters.attributes]
    named += [getattr(row, column) for column in COLUMNS if getattr(filters, column) is not None]
    return all(value is not None for value in named)


def _check(grant: Grant, app: AppSpec) -> None:
    if not grant.grantee or grant.grantee == grant.owner:
        raise GrantError(
            f"a grant needs another tenant than its owner {grant.owner!r} to share with"
        )
    if grant.expires_at_us <= grant.created_at_us:
        raise GrantError("the grant's expiry is in the past; give a time to come")
    since_us, until_us = grant.since_us, grant.until_us
    if since_us is not None and until_us is not None and since_us >= until_us:
        raise GrantError("the grant's date range is empty: since must come before until")
    conditions, masked = grant.conditions, grant.masked
    kinds = {a.name: ("number" if a.kind in ("int", "float") else "text") for a in app.attributes}
    for name in [c.attribute for c in conditions] + list(masked):
        if name not in kinds:
            raise GrantError(
                f"{name[:64]!r} is no attribute of {app.name!r}; use one of {', '.join(kinds)}"
            )
        check_name(name)
    _refuse_sensitive(conditions, app)
    for condition in conditions:
        bounds = [bound for bound in (condition.low, condition.high) if bound is not None]
        wanted = (int, float) if condition.kind == "number" else (str,)
        if not bounds or not all(isinstance(b, wanted) and not isinstance(b, bool) for b in bounds):
            raise GrantError(
                f"the condition on {condition.attribute!r} needs a {condition.kind} bound or two"
            )
        if condition.kind != kinds[condition.attribute]:
            raise GrantError(
                f"{condition.attribute!r} of {app.name!r} is a {kinds[condition.attribute]}; "
                f"the condition compares it as a {condition.kind}"
            )
    if len({c.attribute for c in conditions}) != len(conditions):
        raise GrantError("give one condition per attribute (a range covers both ends)")


def _refuse_sensitive(conditions: Sequence[Condition], app: AppSpec) -> None:
    sealed = sorted(app.sensitive_attributes.intersection(c.attribute for c in conditions))
    if sealed:
        raise GrantError(
            f"{', '.join(sealed)} of {app.name!r} is sensitive (stored encrypted), so a grant "
            "cannot select records by it; select by another attribute (masking it is fine)"
        )


def _grant_params(grant: Grant) -> dict[str, Any]:
    names = ("id", "owner", "grantee", "app", "since_us", "until_us", "images", "expires_at_us",
             "created_by", "created_at_us", "revoked_at_us", "revoked_by")  # fmt: skip
    params = {name: getattr(grant, name) for name in names}
    params["masked"] = {"attributes": list(grant.masked), "columns": list(grant.masked_columns)}
    return params


def _condition_params(grant: Grant, condition: Condition) -> dict[str, Any]:
    number = condition.kind == "number"
    return {
        "grant_id": grant.id, "attribute": condition.attribute, "owner": grant.owner,
        "grantee": grant.grantee, "kind": condition.kind,
        "low_number": condition.low if number else None,
        "high_number": condition.high if number else None,
        "low_text": None if number else condition.low,
        "high_text": None if number else condition.high,
    }  # fmt: skip


def _load(conn: Connection, stmt: Any) -> list[Grant]:
    rows = list(conn.execute(stmt).mappings())
    if not rows:
        return []
    k = schema.share_conditions.c
    ids = [row["id"] for row in rows]
    found = conn.execute(select(schema.share_conditions).where(k.grant_id.in_(ids))).mappings()
    conditions: dict[str, list[Condition]] = {}
    for row in found:
        conditions.setdefault(row["grant_id"], []).append(_condition(row))
    return [_grant(row, conditions.get(row["id"], [])) for row in rows]


def _condition(row: Mapping[Any, Any]) -> Condition:
    if row["kind"] == "number":
        return Condition(row["attribute"], "number", row["low_number"], row["high_number"])
    return Condition(row["attribute"], "text", row["low_text"], row["high_text"])


def _grant(row: Mapping[Any, Any], conditions: list[Condition]) -> Grant:
    masked = row["masked"]
    return Grant(
        id=row["id"], owner=row["owner"], grantee=row["grantee"], app=row["app"],
        expires_at_us=row["expires_at_us"], created_by=row["created_by"],
        created_at_us=row["created_at_us"],
        conditions=tuple(sorted(conditions, key=lambda c: c.attribute)),
        since_us=row["since_us"], until_us=row["until_us"], images=bool(row["images"]),
        masked=tuple(masked["attributes"]), masked_columns=tuple(masked["columns"]),
        revoked_at_us=row["revoked_at_us"], revoked_by=row["revoked_by"],
    )  # fmt: skip
