"""The dashboard and the alert rules: in sync with their builder, valid to promtool, fed by a real run.

The live tests run the small pipeline of tests/stages pushing to a real Pushgateway that a real
Prometheus scrapes (tests/fixtures/prometheus_server.py), then ask Prometheus every query of every
panel the way Grafana would, and check that every metric name a query uses is one that the run
pushed or that the operator's code exports.
"""

from __future__ import annotations

import copy
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import egt_operator.metrics  # noqa: F401  (registers the operator's metrics in REGISTRY)
from egt.dashboards.build import (
    ALERT_RULES_PATH,
    DASHBOARD_PATH,
    REGENERATE,
    RUN_VARIABLE_QUERY,
    alert_rules,
    dashboard,
    panel_targets,
    render_alert_rules,
    render_dashboard,
)
from egt.runner import run_local
from tests.fixtures.prometheus_server import PrometheusServer
from tests.stages.conftest import SMALL_RUN, make_run

REPO = Path(__file__).resolve().parents[2]
ALERT_TESTS = Path(__file__).with_name("alert-rules-test.yaml")
DOCS = REPO / "docs" / "dashboards.md"
RUN_NAME = "dashboard"
SCRAPED_TIMEOUT_S = 30.0

# PromQL tokens: strings, label matchers, ranges and subqueries, numbers and durations, identifiers.
TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|\{[^}]*\}|\[[^\]]*\]|\d[\w.]*|[A-Za-z_:][\w:]*|\S')
IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")
KEYWORDS = {"and", "or", "unless", "bool", "offset"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions or aggregations
    (followed by ``(``, ``by`` or ``without``), keywords, or label names (of ``{…}`` matchers and of
    ``by``/``on``/… lists)."""
    tokens = TOKENS.findall(expr)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in LABEL_LISTS and following == "(":
            index = tokens.index(")", index)
        elif (
            IDENTIFIER.fullmatch(token) and token not in KEYWORDS and following not in ("(", "by", "without")
        ):
            names.add(token)
        index += 1
    return names


def grafana_expr(expr: str) -> str:
    """A panel's query as Grafana sends it for the test run (``$run`` is the only variable used)."""
    concrete = expr.replace("$run", RUN_NAME)
    assert "$" not in concrete, f"a Grafana variable the test does not substitute: {expr}"
    return concrete


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in alert_rules()["groups"] for rule in group["rules"]]


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)


def test_checked_in_files_match_the_builder():
    for path, built in ((DASHBOARD_PATH, render_dashboard()), (ALERT_RULES_PATH, render_alert_rules())):
        assert path.exists() and path.read_text() == built, (
            f"{path.relative_to(REPO)} differs from egt/dashboards/build.py: run `{REGENERATE}`"
        )


def test_alert_rules_pass_promtool_check(promtool):
    result = promtool_run(promtool, "check", "rules", str(ALERT_RULES_PATH))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests(promtool):
    """tests/metrics/alert-rules-test.yaml: each alert fires when it should and not otherwise."""
    result = promtool_run(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_promql_passes_promtool(promtool, tmp_path):
    """promtool has no query checker, so every panel query goes in as a recording rule."""
    rules = [
        {"record": f"egt_dashboard:panel_{spec['id']}_{query['refId']}", "expr": grafana_expr(query["expr"])}
        for spec, query in panel_targets(dashboard())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    result = promtool_run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_metric_names_skips_functions_keywords_and_labels():
    expr = (
        'sum by (le) (rate(egt_a_bucket{job="egt", stage=~"rl|sft"}[5m])) / on (job) group_left (run) '
        "egt_b offset 5m > bool 0.5 unless max_over_time(avg_over_time(egt:c[15m])[3h:1m]) and time() > 1e3"
    )
    assert metric_names(expr) == {"egt_a_bucket", "egt_b", "egt:c"}


def test_docs_describe_every_panel_and_alert():
    text = DOCS.read_text()
    titles = [p["title"] for p in dashboard()["panels"] if p["type"] != "row"]
    alerts = [rule["alert"] for group in alert_rules()["groups"] for rule in group["rules"]]
    missing = [name for name in titles + alerts if name not in text]
    assert not missing, f"docs/dashboards.md does not describe {missing}"


@pytest.fixture(scope="module")
def live_run(pushgateway: str, prometheus_server: PrometheusServer, tmp_path_factory) -> float:
    """Run the small pipeline, pushing to the Pushgateway, until Prometheus has scraped its last push.

    Returns when the run started, the start of the range Grafana would query.
    """
    folder = tmp_path_factory.mktemp("dashboard-run")
    doc = copy.deepcopy(SMALL_RUN)
    doc["metadata"]["name"] = RUN_NAME
    doc["spec"]["metrics"] = {"pushgateway": pushgateway}
    started = time.time()
    run_local(make_run(doc, str(folder / "store")), folder / "work", progress=False, echo=lambda *_: None)
    last_push = f'push_time_seconds{{job="egt", run="{RUN_NAME}", stage="evaluate"}}'
    deadline = time.monotonic() + SCRAPED_TIMEOUT_S
    while not prometheus_server.query(last_push):
        assert time.monotonic() < deadline, (
            f"Prometheus has not scraped {last_push} after {SCRAPED_TIMEOUT_S}s"
        )
        time.sleep(0.5)
    return started


@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_real_run(live_run: float, prometheus_server: PrometheusServer):
    empty = []
    now = time.time()
    for spec, query in panel_targets(dashboard()):
        expr = grafana_expr(query["expr"])
        if query["instant"]:
            result = prometheus_server.query(expr)
        else:
            result = prometheus_server.query_range(expr, live_run, now, "1s")
        if not result:
            empty.append(f"{spec['title']} [{query['refId']}]: {expr}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


@pytest.mark.slow
def test_run_variable_lists_the_run(live_run: float, prometheus_server: PrometheusServer):
    match = re.fullmatch(r"label_values\((?P<selector>.+), (?P<label>\w+)\)", RUN_VARIABLE_QUERY)
    assert match, RUN_VARIABLE_QUERY
    values = prometheus_server.api(f"label/{match['label']}/values", **{"match[]": match["selector"]})
    assert RUN_NAME in values


def operator_metric_names() -> set[str]:
    """The names the operator serves on /metrics, from its own registry (labelled metrics have no
    samples until first set, so names come from the families and their types' suffixes)."""
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("egt_operator_")
        for suffix in suffixes.get(family.type, ("",))
    }


@pytest.mark.slow
def test_queries_use_only_exported_metric_names(live_run: float, prometheus_server: PrometheusServer):
    pushed = set(prometheus_server.api("label/__name__/values", **{"match[]": f'{{run="{RUN_NAME}"}}'}))
    exported = pushed | operator_metric_names()
    exprs = [q["expr"] for _, q in panel_targets(dashboard())] + alert_exprs()
    exprs.append(re.sub(r"^label_values\((.+), \w+\)$", r"\1", RUN_VARIABLE_QUERY))
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert "egt_rl_reward_mean" in used and "egt_operator_runs" in used  # the parser found names
    assert used <= exported, f"queries use names nothing exports: {sorted(used - exported)}"
