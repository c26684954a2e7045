"""Declared attributes of records: reading one out of the JSON column, and its index.

A record keeps every declared attribute in ``records.attributes`` (JSON). Filtering
on one reads it with the *same* expression its index is built on, so the database
uses the index: ``json_extract(attributes, '$."name"')`` on SQLite (typed: numbers
compare as numbers) and ``attributes ->> 'name'`` on PostgreSQL (text: numbers
compare in their JSON spelling, which is Python's ``repr`` of the value). The name is
spelled into the SQL, never bound, because an expression index only matches a
literal; :func:`check_name` admits plain identifiers only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import String, TypeDecorator

from inferstream.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"attribute name {name[:64]!r} must be a plain identifier (letters, digits, _; "
            "at most 63), since it names a column expression and its index"
        )
    return name


class _AttributeParameter(TypeDecorator[Any]):
    """A compared value as the attribute's expression gives it back on each dialect."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        # ->> gives text on PostgreSQL: a number is compared in its JSON spelling.
        if dialect.name == "postgresql" and not isinstance(value, str):
            return json.dumps(value)
        return value

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        bound = self.process_bind_param(value, dialect)
        return (
            str(bound)
            if isinstance(bound, int | float)
            else "'" + str(bound).replace("'", "''") + "'"
        )


class AttributeValue(ColumnElement[Any]):
    """``records.attributes[name]`` spelled as its index is, on each dialect."""

    inherit_cache = True
    type = _AttributeParameter()

    def __init__(self, name: str) -> None:
        self.name = check_name(name)


@compiles(AttributeValue, "sqlite")
def _sqlite(element: AttributeValue, compiler: Any, **kw: Any) -> str:
    return f"json_extract(records.attributes, '$.\"{element.name}\"')"


@compiles(AttributeValue, "postgresql")
def _postgresql(element: AttributeValue, compiler: Any, **kw: Any) -> str:
    return f"(records.attributes ->> '{element.name}')"


def attribute_matches(name: str, value: str | int | float) -> ColumnElement[bool]:
    """``records.attributes[name] == value``, in the form the attribute's index serves."""
    matches: ColumnElement[bool] = AttributeValue(name) == value
    return matches


def create_index(conn: Connection, name: str) -> None:
    """The index that serves filters on attribute ``name`` (made once, then a no-op)."""
    check_name(name)
    index = f"ix_records_attr_{name.lower()}"
    if conn.dialect.name == "postgresql":
        expression = f"(attributes ->> '{name}')"
    else:
        expression = f"json_extract(attributes, '$.\"{name}\"')"
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {index} ON records (tenant, {expression})")
