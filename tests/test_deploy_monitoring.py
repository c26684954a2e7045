"""The Grafana dashboard and the operating alert rules: every metric they query is one
the code defines, every dashboard query is PromQL that Prometheus parses, and the alerts
fire on series that should make them and on no others (``promtool test rules``)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "inferstream"
DASHBOARD = ROOT / "deploy" / "grafana" / "inferstream.json"
RULES = sorted((ROOT / "deploy" / "prometheus").glob("*.rules.yml"))
QUANTILE = re.compile(r"histogram_quantile\(([\d.]+)")

#: prometheus_client's constructors -> the suffixes of the series each exposes.
SERIES = {
    "Counter": ("_total", "_created"),
    "CounterMetricFamily": ("_total",),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("", "_sum", "_count", "_created"),
}


def _defined_in_code() -> set[str]:
    """Every series the package exports: each metric made with a literal name."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else None
            called = node.func.id if isinstance(node.func, ast.Name) else called
            name = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            if called in SERIES and isinstance(name, str):
                names |= {name.removesuffix("_total") + suffix for suffix in SERIES[called]}
    return names


def _rule_groups() -> Iterator[dict[str, Any]]:
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rule_groups() if "record" in rule}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _dashboard_queries() -> list[str]:
    board = _dashboard()
    queries = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def _metrics_in(expr: str) -> set[str]:
    """The inferstream metrics a PromQL expression reads (string literals left out)."""
    return set(re.findall(r"\binferstream[_:][\w:]*", re.sub(r'"[^"]*"', '""', expr)))


def _promtool() -> str:
    promtool = shutil.which("promtool")
    assert promtool is not None, "install promtool: apt-get install -y prometheus"
    return promtool


def test_every_metric_the_dashboard_and_the_rules_query_is_one_the_code_defines() -> None:
    defined = _defined_in_code()
    # The extraction found the metrics it must (a regression in it would pass all).
    assert {"inferstream_consumer_lag", "inferstream_dead_letters_total",
            "inferstream_api_request_seconds_bucket"} <= defined  # fmt: skip
    queries = _dashboard_queries() + [rule["expr"] for rule in _rule_groups()]
    queried = set().union(*map(_metrics_in, queries))
    assert "inferstream_consumer_lag" in queried
    assert sorted(queried - defined - _recorded()) == []


def test_the_dashboard_draws_lag_dead_letters_errors_latency_and_throughput() -> None:
    queries = _dashboard_queries()
    read = set().union(*map(_metrics_in, queries))
    assert {
        "inferstream_consumer_lag",
        "inferstream_dead_letters_total",
        "inferstream_messages_failed_total",
        "inferstream_messages_out_total",
        "inferstream_message_age_seconds_bucket",
        "inferstream_api_requests_total",
    } <= read
    age = [query for query in queries if "inferstream_message_age_seconds_bucket" in query]
    quantiles = {quantile for query in age for quantile in re.findall(QUANTILE, query)}
    assert quantiles == {"0.5", "0.99"}


def test_the_dashboard_is_one_grafana_reads() -> None:
    board = _dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "pipeline"} <= variables
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_every_dashboard_query_is_promql_prometheus_parses(tmp_path: Path) -> None:
    """Each query, its Grafana variables given values, checked by promtool as a rule."""
    values = {"$__rate_interval": "5m", "$pipeline": ".*"}
    rules = []
    for at, written in enumerate(_dashboard_queries()):
        query = written
        for variable, value in values.items():
            query = query.replace(variable, value)
        if query.startswith("label_values("):  # Grafana's, not PromQL: its metric alone
            query = query.removeprefix("label_values(").partition(",")[0]
        rules.append({"record": f"dashboard:query_{at}", "expr": query})
    assert "$" not in json.dumps(rules)
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_there_are_alerts_on_lag_dead_letters_error_rate_and_latency() -> None:
    alerts = {rule["alert"]: rule["expr"] for rule in _rule_groups() if "alert" in rule}
    assert {
        "InferstreamLagGrowing",
        "InferstreamStageBehind",
        "InferstreamDeadLetters",
        "InferstreamErrorRateHigh",
        "InferstreamLatencyHigh",
    } <= alerts.keys()
    assert "inferstream:consumer_lag:stage" in alerts["InferstreamLagGrowing"]
    assert "inferstream_dead_letters_total" in alerts["InferstreamDeadLetters"]


@pytest.mark.parametrize("rules", RULES, ids=lambda path: path.name)
def test_the_rules_are_valid(rules: Path) -> None:
    checked = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_operating_alerts_fire_only_when_they_should() -> None:
    tested = subprocess.run(
        [_promtool(), "test", "rules", "alerts_rules_test.yml"],
        cwd=ROOT / "tests" / "prometheus", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
