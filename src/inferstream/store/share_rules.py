"""What a sharing grant admits: the grant as a value, its predicate in SQL, its masking.

A grant lets its grantee read the owner's records of one application whose event time
(``created_at_us``) is in ``[since_us, until_us)`` and whose declared attributes meet
every condition, while it is live (not revoked, not expired). The rule is written
three times, on purpose and side by side:

- in migration 0009, as PostgreSQL's row-level-security policy on ``records`` (the
  enforcement: a transaction naming the grantee cannot read anything else);
- here, as a SQLAlchemy predicate the store adds to its WHERE clause (the enforcement
  on SQLite, which has no row-level security; on PostgreSQL it runs beside the policy);
- here, as :meth:`Grant.covers`, which decides how a row already admitted is shown
  (masked attributes, images); a row no grant covers in Python is dropped, so a
  disagreement fails closed.

``tests/store/test_store_sharing.py`` holds the three to the same answers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    false,
    literal,
    or_,
    select,
)
from sqlalchemy import func as sql

from inferstream.store.rows import ResultFilter, ResultRow
from inferstream.store.schema import records, share_conditions, share_grants

Kind = Literal["number", "text"]

#: The record fields that repeat an attribute (the application's subject, group and
#: source); masking the attribute blanks its field too.
COLUMNS = ("subject", "group", "source")


@dataclass(frozen=True, slots=True)
class Condition:
    """One declared attribute held to an inclusive range; ``None`` leaves an end open.

    ``kind`` "number" compares JSON numbers, "text" compares strings by code point;
    a value of the other type (or none) never matches. Equality is ``low == high``.
    """

    attribute: str
    kind: Kind
    low: float | str | None = None
    high: float | str | None = None

    def holds(self, attributes: Mapping[str, Any]) -> bool:
        value = attributes.get(self.attribute)
        if self.kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
        elif not isinstance(value, str):
            return False
        low_ok = self.low is None or value >= self.low  # type: ignore[operator]
        return low_ok and (self.high is None or value <= self.high)  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Grant:
    """One sharing grant; times are microseconds since the epoch (UTC)."""

    id: str
    owner: str
    grantee: str
    app: str
    expires_at_us: int
    created_by: str
    created_at_us: int
    conditions: tuple[Condition, ...] = ()
    since_us: int | None = None
    until_us: int | None = None
    images: bool = True
    masked: tuple[str, ...] = ()
    masked_columns: tuple[str, ...] = ()
    revoked_at_us: int | None = None
    revoked_by: str | None = None

    def live(self, now_us: int) -> bool:
        return self.revoked_at_us is None and now_us < self.expires_at_us

    def covers(self, row: ResultRow, viewer: str, now_us: int) -> bool:
        """Whether this grant lets ``viewer`` read ``row`` at ``now_us``."""
        return (
            self.live(now_us)
            and self.grantee == viewer
            and self.owner == row.tenant
            and self.app == row.app
            and (self.since_us is None or row.created_at_us >= self.since_us)
            and (self.until_us is None or row.created_at_us < self.until_us)
            and all(condition.holds(row.attributes) for condition in self.conditions)
        )


@dataclass(frozen=True, slots=True)
class Seen:
    """A record as one tenant may see it: its own, or another's through grants.

    ``shared_from`` names the owner of a shared record (``None`` for the viewer's own);
    a shared row comes with masked attributes removed, and ``images`` says whether any
    grant covering it lets the viewer read its image.
    """

    row: ResultRow
    shared_from: str | None = None
    images: bool = True


def seen(row: ResultRow, viewer: str, grants: Sequence[Grant], now_us: int) -> Seen | None:
    """``row`` as ``viewer`` may see it, or ``None`` when nothing lets it be seen.

    Several grants may cover one row: what any of them shows is shown (the masks
    intersect, images if any grant allows them).
    """
    if row.tenant == viewer:
        return Seen(row)
    covering = [grant for grant in grants if grant.covers(row, viewer, now_us)]
    if not covering:
        return None
    masked = set.intersection(*(set(grant.masked) for grant in covering))
    blanked = set.intersection(*(set(grant.masked_columns) for grant in covering))
    attributes = {name: value for name, value in row.attributes.items() if name not in masked}
    columns: dict[str, Any] = {column: None for column in blanked}
    withheld = {name: why for name, why in row.withheld.items() if name not in masked}
    shown = dataclasses.replace(row, attributes=attributes, withheld=withheld, **columns)
    return Seen(shown, row.tenant, any(grant.images for grant in covering))


#: Bind parameters of the grant predicates: who reads, at what time, and (with
#: ``only``) through which grants. :func:`share_params` fills them in at execution.
VIEWER, NOW, ONLY = "share_viewer", "share_now_us", "share_only"


def share_params(viewer: str, now_us: int, only: Sequence[str] = ()) -> dict[str, Any]:
    """The values a statement using :func:`covered` or :func:`visible` is executed with."""
    return {VIEWER: viewer, NOW: now_us, ONLY: list(only)}


@functools.cache
def covered(dialect: str, only: bool = False) -> ColumnElement[bool]:
    """``records`` rows a live grant lets the viewer read (the policy of migration 0009);
    with ``only``, a live grant among the ids bound to :data:`ONLY`.

    Built once per dialect with bind parameters (:func:`share_params`): building the
    expression anew took most of a single record's read through the grants.
    """
    g, k = share_grants.c, share_conditions.c
    failing = (
        select(k.grant_id)
        .where(k.grant_id == g.id, ~sql.coalesce(_holds(dialect), false()))
        .correlate_except(share_conditions)
        .exists()
    )
    live = and_(
        g.grantee == bindparam(VIEWER, type_=String()),
        g.owner == records.c.tenant,
        g.app == records.c.app,
        g.revoked_at_us.is_(None),
        g.expires_at_us > bindparam(NOW, type_=BigInteger()),
        or_(g.since_us.is_(None), records.c.created_at_us >= g.since_us),
        or_(g.until_us.is_(None), records.c.created_at_us < g.until_us),
        ~failing,
    )
    if only:
        live = and_(live, g.id.in_(bindparam(ONLY, expanding=True)))
    return exists().where(live)


@functools.cache
def visible(dialect: str) -> ColumnElement[bool]:
    """Rows of ``records`` the viewer may read: its own, and those live grants admit;
    executed with :func:`share_params`."""
    return or_(records.c.tenant == bindparam(VIEWER, type_=String()), covered(dialect))


def unmasking(grants: Sequence[Grant], filters: ResultFilter | None) -> list[Grant]:
    """The grants that show every field ``filters`` filters on. A listing filtered on a
    field reads shared rows through these alone, so neither its rows nor its cursor can
    tell the grantee which records hold a value a grant masks."""
    if filters is None:
        return list(grants)
    attributes = set(filters.attributes)
    columns = {column for column in COLUMNS if getattr(filters, column) is not None}
    return [
        grant
        for grant in grants
        if not attributes & set(grant.masked) and not columns & set(grant.masked_columns)
    ]


def _holds(dialect: str) -> ColumnElement[bool]:
    """The condition row ``share_conditions`` holds for the record (NULL when unknown)."""
    k = share_conditions.c
    value, kind = _attribute(dialect)
    number = case((kind == "number", cast(value, Float)), else_=None)
    text_value = value.collate("C") if dialect == "postgresql" else value
    in_numbers = and_(
        kind == "number",
        or_(k.low_number.is_(None), number >= k.low_number),
        or_(k.high_number.is_(None), number <= k.high_number),
    )
    in_texts = and_(
        kind == "string",
        or_(k.low_text.is_(None), text_value >= k.low_text),
        or_(k.high_text.is_(None), text_value <= k.high_text),
    )
    return case((k.kind == "number", in_numbers), else_=in_texts)


def _attribute(dialect: str) -> tuple[ColumnElement[Any], ColumnElement[str]]:
    """The record's value of the condition's attribute, and its JSON type ("number",
    "string", ...), spelt for ``dialect``."""
    name, document = share_conditions.c.attribute, records.c.attributes
    if dialect == "postgresql":
        return document.op("->>", return_type=String)(name), sql.json_typeof(
            document.op("->")(name)
        )
    path = literal('$."') + name + literal('"')
    sqlite_type = sql.json_type(document, path)
    kind = case((sqlite_type.in_(("integer", "real")), literal("number")),
                (sqlite_type == "text", literal("string")), else_=sqlite_type)  # fmt: skip
    return sql.json_extract(document, path), kind
