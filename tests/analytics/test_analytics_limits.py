"""What one tenant's confined query may take: it is stopped past its time, refused past
its memory, and the connection stays confined and locked all the while."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferstream.analytics.query import AnalyticsQueryError, open_tenant, run

#: Rows DuckDB would take minutes to count: only the timeout ends it.
ENDLESS = "SELECT count(*) FROM range(1000000000000) a WHERE a.range % 7 = 3"


def test_a_query_past_its_time_is_stopped_with_what_to_do(tmp_path: Path) -> None:
    conn = open_tenant(tmp_path, "acme")
    with pytest.raises(AnalyticsQueryError, match=r"ran longer than 0.2 s .* narrow it"):
        run(conn, ENDLESS, timeout_s=0.2)
    # The connection serves the next query.
    assert run(conn, "SELECT 41 + 1", timeout_s=5).rows == [(42,)]
    conn.close()


def test_a_query_past_its_memory_is_refused(tmp_path: Path) -> None:
    conn = open_tenant(tmp_path, "acme", memory_limit="64MB")
    hungry = "SELECT list(range) FROM range(50000000)"  # about 400 MB as one list
    with pytest.raises(AnalyticsQueryError, match="more memory than a saved query may take"):
        run(conn, hungry, timeout_s=60)
    conn.close()


def test_the_limits_cannot_be_lifted_from_sql(tmp_path: Path) -> None:
    conn = open_tenant(tmp_path, "acme")
    for lift in ("SET memory_limit = '20GB'", "SET threads = 8"):
        with pytest.raises(AnalyticsQueryError, match="locked"):
            run(conn, lift)
    assert run(conn, "SELECT current_setting('threads')").rows == [(1,)]
    conn.close()
