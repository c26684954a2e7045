"""``inferstream analytics``: export the store to Parquet, query it with DuckDB, and
write a tenant's daily report (``docs/analytics.md``)."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferstream.analytics.query import QueryResult

FORMATS = ("table", "csv", "json")


def cmd_export(args: argparse.Namespace) -> int:
    from inferstream.analytics.export import export
    from inferstream.pipeline import load_pipeline
    from inferstream.store import ResultsStore

    spec = load_pipeline(args.pipeline).with_urls(store=args.store)
    with ResultsStore(spec.store) as store:
        done = export(store, _where(args.to), tenants=args.tenant, settle_s=args.settle)
    print(f"{args.to}: {done.summary()}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from inferstream.analytics.query import open_export, run

    conn = open_export(_where(args.folder))
    try:
        result = run(conn, args.sql)
    finally:
        conn.close()
    print_result(result, args.format)
    return 0


def _where(place: str) -> Path | str:
    """An export's place as given: ``s3://bucket/prefix`` as is, else a folder."""
    return place if place.startswith("s3://") else Path(place)


def cmd_report(args: argparse.Namespace) -> int:
    from inferstream.analytics.report import write_report
    from inferstream.pipeline import load_pipeline
    from inferstream.store import ResultsStore

    spec = load_pipeline(args.pipeline).with_urls(store=args.store)
    day = dt.date.fromisoformat(args.day)
    with ResultsStore(spec.store) as store:
        path = write_report(store, Path(args.to), args.tenant, day)
    print(f"{path}: the daily report of {args.tenant} for {day}")
    return 0


def print_result(result: QueryResult, form: str) -> None:
    if form == "json":
        rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
        print(json.dumps(rows, default=str, indent=1))
    elif form == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        print(_table(result))


def _table(result: QueryResult) -> str:
    cells = [result.columns, *([_cell(v) for v in row] for row in result.rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(result.columns))]
    lines = [
        "  ".join(value.ljust(w) for value, w in zip(row, widths, strict=True)) for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"({len(result.rows)} rows)")
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)


def add_analytics_commands(sub: Any) -> None:
    """``inferstream analytics export|query|report``."""
    parser = sub.add_parser(
        "analytics",
        help="Export results to Parquet, query them with DuckDB, write daily reports.",
        description="Analytics over the results store (docs/analytics.md).",
    )
    commands = parser.add_subparsers(dest="analytics_command", required=True, metavar="ACTION")
    export = commands.add_parser(
        "export",
        help="Write what is new in the store as Parquet (tenant=/table/app=/date=), "
        "incrementally; safe to stop and run again.",
    )
    export.set_defaults(handler=cmd_export)
    export.add_argument("pipeline", help="pipeline YAML file (its store is exported)")
    export.add_argument("--store", help="results store URL, overrides the file")
    export.add_argument(
        "--to", required=True, metavar="DIR",
        help="the export folder, or s3://bucket/prefix (endpoint and credentials from the "
        "standard AWS settings: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE...)",
    )  # fmt: skip
    export.add_argument(
        "--tenant", action="append", default=[],
        help="export this tenant (repeat; default: every tenant the store shows)",
    )  # fmt: skip
    export.add_argument(
        "--settle", type=float, default=300.0, metavar="S",
        help="export rows stored at least S seconds ago, so none still being committed "
        "is skipped (300)",
    )  # fmt: skip
    query = commands.add_parser(
        "query",
        help="Run SQL with DuckDB over an export: views records, predictions, feedback, "
        "feedback_history, dead_letters.",
    )
    query.set_defaults(handler=cmd_query)
    query.add_argument("folder", metavar="DIR", help="the export folder, or s3://bucket/prefix")
    query.add_argument("sql", help="the query")
    query.add_argument("--format", choices=FORMATS, default="table", help="output (table)")
    report = commands.add_parser(
        "report", help="Write one tenant's daily report (HTML with plots) for a day."
    )
    report.set_defaults(handler=cmd_report)
    report.add_argument("pipeline", help="pipeline YAML file (its store is read)")
    report.add_argument("--store", help="results store URL, overrides the file")
    report.add_argument("--tenant", required=True, help="the tenant")
    report.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the day (UTC)")
    report.add_argument(
        "--to", required=True, metavar="DIR",
        help="the export folder; the report goes to DIR/reports/<tenant>/<day>.html",
    )  # fmt: skip
