"""Saved analytical queries of a tenant, and their results cached until the export moves.

Kept in the export folder (``DIR/saved-queries/<tenant>.json``), not in the store's
schema: they are about the export, travel with it, and need no migration. A result is
cached per process under the query's text and the tenant's export position (its
watermarks in ``export-state.json``), so it is recomputed only after an export run
has added that tenant's rows, or when the query changes.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferstream.analytics.export import ExportState
from inferstream.analytics.query import (
    TENANT_TIMEOUT_S,
    QueryResult,
    check_select,
    open_tenant,
    run,
)
from inferstream.envelope import now_us

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: Rows an answer carries at most (``truncated`` says when there were more).
MAX_ROWS = 10_000


@dataclass(frozen=True)
class Answer:
    result: QueryResult
    truncated: bool
    cached: bool
    computed_at_us: int
    export_through_us: int


class SavedQueries:
    """One export folder's saved queries, with an in-process result cache."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[tuple[str, str], tuple[str, int, Answer]] = {}
        self._lock = threading.Lock()

    def list(self, tenant: str) -> dict[str, dict[str, Any]]:
        return self._read(tenant)

    def get(self, tenant: str, name: str) -> dict[str, Any] | None:
        return self._read(tenant).get(name)

    def save(self, tenant: str, name: str, sql: str, by: str) -> dict[str, Any]:
        """Check ``sql`` (one SELECT that runs in the tenant's confinement) and keep it."""
        check_select(sql)
        self._compute(tenant, sql)  # refused here, not on the first reader's request
        entry = {"sql": sql, "saved_by": by, "saved_at_us": now_us()}
        with self._file_lock(tenant):
            queries = self._read(tenant)
            queries[name] = entry
            self._write(tenant, queries)
        return entry

    def delete(self, tenant: str, name: str) -> bool:
        with self._file_lock(tenant):
            queries = self._read(tenant)
            found = queries.pop(name, None) is not None
            self._write(tenant, queries)
        return found

    def answer(self, tenant: str, sql: str) -> Answer:
        """The query's result: from the cache while the tenant's export has not moved."""
        through = self.export_position(tenant)
        with self._lock:
            hit = self._cache.get((tenant, sql))
        if hit is not None and hit[1] == through:
            cached = hit[2]
            return Answer(cached.result, cached.truncated, True, cached.computed_at_us, through)
        answer = self._compute(tenant, sql)
        with self._lock:
            self._cache[(tenant, sql)] = (sql, through, answer)
        return answer

    def export_position(self, tenant: str) -> int:
        """How far the tenant's export has got (its newest watermark; -1: nothing yet)."""
        state = ExportState.load(self.folder)
        return max(state.tenants.get(tenant, {}).values(), default=-1)

    def _compute(self, tenant: str, sql: str) -> Answer:
        conn = open_tenant(self.folder, tenant)
        try:
            result = run(conn, sql, max_rows=MAX_ROWS + 1, timeout_s=TENANT_TIMEOUT_S)
        finally:
            conn.close()
        rows = result.rows[:MAX_ROWS]
        truncated = len(result.rows) > MAX_ROWS
        through = self.export_position(tenant)
        return Answer(QueryResult(result.columns, rows), truncated, False, now_us(), through)

    def _path(self, tenant: str) -> Path:
        return self.folder / "saved-queries" / f"{tenant}.json"

    def _read(self, tenant: str) -> dict[str, dict[str, Any]]:
        try:
            loaded: dict[str, dict[str, Any]] = json.loads(self._path(tenant).read_text())
        except FileNotFoundError:
            return {}
        return loaded

    def _write(self, tenant: str, queries: dict[str, dict[str, Any]]) -> None:
        path = self._path(tenant)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(queries, indent=1, sort_keys=True))
        os.replace(temporary, path)

    @contextmanager
    def _file_lock(self, tenant: str) -> Iterator[None]:
        """One writer at a time across the API's processes."""
        path = self._path(tenant).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
