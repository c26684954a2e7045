"""The Parquet export to ``s3://bucket/prefix`` (moto's server, reached through the
standard AWS settings), queried with DuckDB through pyarrow's S3 file system, counts
what the store counts, run after run; a missing bucket is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from analytics_testing import DAY0_US, HOUR_US, KnownRun, export_counts, store_counts
from blob_worlds import use_s3
from broker_testing import S3Server

from inferstream.analytics.export import STATE_FILE, export
from inferstream.apps.eggs import APP
from inferstream.cli import main
from inferstream.store import ResultsStore


def _objects(server: S3Server, bucket: str) -> dict[str, Any]:
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint)
    try:
        answer = client.list_objects_v2(Bucket=bucket)
        return {o["Key"]: o for o in answer.get("Contents", ())}
    finally:
        client.close()


def test_an_export_to_s3_counts_what_the_store_counts_run_after_run(
    store: ResultsStore,
    tenants: tuple[str, str],
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_s3(monkeypatch, s3)
    acme, globex = tenants
    known = KnownRun(store)
    first = known.scans(acme, 8, start_us=DAY0_US + 23 * HOUR_US + 55 * 60_000_000, group="T-1")
    known.scans(globex, 5, start_us=DAY0_US, group="T-9")
    known.labels(first, DAY0_US + 30 * HOUR_US)
    known.dead_letters(acme, 2, at_us=DAY0_US + HOUR_US)
    url = f"s3://{s3.new_bucket()}/exports/site-1"
    bucket = url.split("/")[2]

    done = export(store, url, settle_s=0, now=DAY0_US + 48 * HOUR_US)
    assert done.rows["records"] == 13 and done.files > 0
    assert export_counts(url) == store_counts(store)
    keys = _objects(s3, bucket)
    assert f"exports/site-1/{STATE_FILE}" in keys
    days = {k.split("/")[5] for k in keys if k.startswith(f"exports/site-1/tenant={acme}/records/")}
    assert days == {"date=2026-03-10", "date=2026-03-11"}

    # Incremental: only what is new goes out; a run with nothing new writes nothing.
    later = DAY0_US + 49 * HOUR_US
    known.scans(globex, 3, start_us=later, group="T-9")
    store.add_feedback(acme, first[0].subject or "", "male", app="eggs", head="sex", at_us=later)
    again = export(store, url, settle_s=0, now=later + HOUR_US)
    assert (again.rows["records"], again.rows["feedback"]) == (3, 1)
    assert export(store, url, settle_s=0, now=later + HOUR_US).files == 0
    assert export_counts(url) == store_counts(store)
    state = json.loads(_read(s3, bucket, f"exports/site-1/{STATE_FILE}"))
    assert state["pending_us"] is None and state["tenants"][acme]["records"] == later + HOUR_US

    # The command line: query an export on S3.
    sql = "SELECT tenant, count(*) AS n FROM records GROUP BY tenant ORDER BY tenant"
    assert main(["analytics", "query", url, sql, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"tenant": acme, "n": 8},
        {"tenant": globex, "n": 8},
    ]


def _read(server: S3Server, bucket: str, key: str) -> bytes:
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint)
    try:
        with client.get_object(Bucket=bucket, Key=key)["Body"] as body:
            data: bytes = body.read()
        return data
    finally:
        client.close()


def test_the_export_command_names_a_missing_bucket(
    tmp_path: Path,
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_s3(monkeypatch, s3)
    pipeline = str(APP.pipeline_path())
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    command = ["analytics", "export", pipeline, "--store", store_url, "--settle", "0"]
    assert main([*command, "--to", "s3://no-such-export-bucket/x"]) == 2
    assert "bucket 'no-such-export-bucket' does not exist" in capsys.readouterr().err
    assert main(["analytics", "query", "s3://no-such-export-bucket/x", "SELECT 1"]) == 2
    assert "bucket 'no-such-export-bucket' does not exist" in capsys.readouterr().err
    assert main(["analytics", "query", f"s3://{s3.new_bucket()}/typo", "SELECT 1"]) == 2
    assert "holds no export (no export-state.json)" in capsys.readouterr().err
