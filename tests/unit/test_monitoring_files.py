"""docs/alerts.yaml and docs/grafana-dashboard.json: valid, and only about exported metrics.

The metric names the router exports are read from the source of router/metrics.py and
router/exporter.py, so renaming a metric there without updating the alerts and the
dashboard fails here. The alerting rules are checked and unit-tested with promtool.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "alerts.yaml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
METRIC_SOURCES = (ROOT / "router" / "metrics.py", ROOT / "router" / "exporter.py")
PROMTOOL = Path("/usr/bin/promtool")

PREFIX = "dicom_router_"
EXPECTED_ALERTS = {
    "DicomRouterDestinationFailing",
    "DicomRouterQueueGrowing",
    "DicomRouterDeadLetters",
    "DicomRouterNoInstancesReceived",
    "DicomRouterRulesRefused",
    "DicomRouterInstancesSetAside",
    "DicomRouterAuditNotWritten",
    "DicomRouterDown",
}

_PREFIXED = re.compile(r'PREFIX\s*\+\s*"([a-z_]+)"')
_DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|CounterMetricFamily|GaugeMetricFamily|HistogramMetricFamily)"
    r'\(\s*PREFIX\s*\+\s*"([a-z_]+)"'
)
_COUNTERS = {"Counter", "CounterMetricFamily"}
_METRIC_IN_EXPR = re.compile(r"dicom_router_[a-z_]+")
_SERIES_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def exported_metric_names() -> set[str]:
    """Names as scraped: counters get ``_total``; histograms without their suffixes."""
    names: set[str] = set()
    for source in METRIC_SOURCES:
        text = source.read_text()
        definitions = _DEFINITION.findall(text)
        assert len(definitions) == len(_PREFIXED.findall(text)), (
            f'{source.name}: a `PREFIX + "..."` name is not the first argument of a '
            "Counter, Gauge, Histogram or *MetricFamily this test understands"
        )
        for kind, name in definitions:
            full = PREFIX + name
            if kind in _COUNTERS and not full.endswith("_total"):
                full += "_total"
            names.add(full)
    return names


def metrics_in(expr: str) -> set[str]:
    return {_SERIES_SUFFIX.sub("", name) for name in _METRIC_IN_EXPR.findall(expr)}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def load_alert_rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    return {rule["alert"]: rule for rule in rules}


def dashboard_expressions() -> list[str]:
    dashboard = load_dashboard()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


@pytest.fixture()
def promtool() -> Path:
    if not PROMTOOL.exists():
        pytest.skip(f"{PROMTOOL} is not installed (Debian package `prometheus`)")
    return PROMTOOL


def run_promtool(promtool: Path, *args: str) -> None:
    result = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- metric names ----------------------------------------------------------------------


def test_exported_names_are_read_from_the_router_source() -> None:
    names = exported_metric_names()
    assert {
        "dicom_router_forward_total",
        "dicom_router_end_to_end_seconds",
        "dicom_router_associations_active",
        "dicom_router_queue_depth",
        "dicom_router_dead_letters",
    } <= names
    assert "dicom_router_queue_depth_total" not in names


@pytest.mark.parametrize(
    "source",
    ["dashboard", "alerts"],
)
def test_every_metric_in_an_expression_is_exported(source: str) -> None:
    if source == "dashboard":
        exprs = dashboard_expressions()
    else:
        exprs = [rule["expr"] for rule in load_alert_rules().values()]
    used = set().union(*(metrics_in(expr) for expr in exprs))
    assert used, f"no dicom_router_* metric found in the {source} expressions"
    missing = used - exported_metric_names()
    assert not missing, f"not exported by the router: {sorted(missing)}"


def test_the_dashboard_shows_every_exported_metric() -> None:
    used = set().union(*(metrics_in(expr) for expr in dashboard_expressions()))
    missing = exported_metric_names() - used
    assert not missing, f"no panel shows: {sorted(missing)}"


# --- alerting rules --------------------------------------------------------------------


def test_alerts_pass_promtool_check(promtool: Path) -> None:
    run_promtool(promtool, "check", "rules", str(ALERTS))


def test_every_alert_tells_on_call_what_happened_and_how_bad() -> None:
    rules = load_alert_rules()
    assert set(rules) == EXPECTED_ALERTS
    for name, rule in rules.items():
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 80, name


_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def _go_float(value: float) -> str:
    text = repr(float(value))
    return text.removesuffix(".0")


def render(template: str, labels: dict[str, str], value: float) -> str:
    """The few Go template forms the annotations use, rendered as Prometheus does."""

    def one(match: re.Match[str]) -> str:
        action = match.group(1)
        if action.startswith("$labels."):
            label = action.removeprefix("$labels.")
            assert label in labels, f"annotation uses label {label!r} the alert lacks"
            return labels[label]
        if action == "$value":
            return _go_float(value)
        if re.fullmatch(r"\$value\s*\|\s*humanizePercentage", action):
            return f"{value * 100:.4g}%"
        raise AssertionError(f"template {{{{ {action} }}}} is unknown to this test")

    return _TEMPLATE.sub(one, template)


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"job": "dicom-router", "instance": "router-1:9102", **labels}
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{selector}}}", "values": values}


def _alert(name: str, labels: dict[str, str], value: float) -> dict[str, Any]:
    rule = load_alert_rules()[name]
    annotations = {key: render(text, labels, value) for key, text in rule["annotations"].items()}
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


def _case(name: str, at: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": list(alerts)}


def _alert_tests() -> list[dict[str, Any]]:
    router = {"job": "dicom-router", "instance": "router-1:9102"}
    dead = "DicomRouterDeadLetters"
    failing = "DicomRouterDestinationFailing"
    queue = "DicomRouterQueueGrowing"
    down = "DicomRouterDown"
    quiet = "DicomRouterNoInstancesReceived"
    refused = "DicomRouterRulesRefused"
    set_aside = "DicomRouterInstancesSetAside"
    unaudited = "DicomRouterAuditNotWritten"
    forward = "dicom_router_forward_total"
    return [
        {  # 3 dead letters for pacs fire after 5m; none for archive never does.
            "interval": "1m",
            "input_series": [
                _series("dicom_router_dead_letters", "3x15", destination="pacs"),
                _series("dicom_router_dead_letters", "0x15", destination="archive"),
            ],
            "alert_rule_test": [
                _case(dead, "4m"),
                _case(dead, "10m", _alert(dead, {**router, "destination": "pacs"}, 3)),
            ],
        },
        {  # pacs: 5 failed per 15 successes (25%); archive: 1 retry per 20 (under 10%).
            "interval": "1m",
            "input_series": [
                _series(forward, "0+15x40", destination="pacs", outcome="success"),
                _series(forward, "0+5x40", destination="pacs", outcome="failed"),
                _series(forward, "0+20x40", destination="archive", outcome="success"),
                _series(forward, "0+1x40", destination="archive", outcome="retry"),
            ],
            "alert_rule_test": [
                _case(failing, "5m"),
                _case(
                    failing,
                    "25m",
                    _alert(failing, {"job": "dicom-router", "destination": "pacs"}, 0.25),
                ),
            ],
        },
        {  # forward grows by 10 a minute past 100; route is deep but steady.
            "interval": "1m",
            "input_series": [
                _series("dicom_router_queue_depth", "50+10x40", queue="forward"),
                _series("dicom_router_queue_depth", "500x40", queue="route"),
            ],
            "alert_rule_test": [
                _case(queue, "10m"),
                _case(queue, "30m", _alert(queue, {**router, "queue": "forward"}, 1 / 6)),
            ],
        },
        {  # the router stops answering scrapes at 2m; other jobs are not ours.
            "interval": "1m",
            "input_series": [
                _series("up", "1 1 0x10"),
                _series("up", "0x12", job="node", instance="node-1:9100"),
            ],
            "alert_rule_test": [
                _case(down, "3m"),
                _case(down, "6m", _alert(down, router, 0)),
            ],
        },
        {  # dicom-router receives until 60m; dicom-router-idle never receives anything.
            "interval": "5m",
            "input_series": [
                _series("up", "1x60"),
                _series("up", "1x60", job="dicom-router-idle", instance="router-2:9102"),
                _series("dicom_router_instances_received_total", "0+5x12 60x48", calling_ae="CT01"),
            ],
            "alert_rule_test": [
                _case(quiet, "60m"),
                _case(
                    quiet,
                    "200m",
                    _alert(quiet, {"job": "dicom-router"}, 1),
                    _alert(quiet, {"job": "dicom-router-idle"}, 1),
                ),
            ],
        },
        {  # one refused reload at 5m; the alert ends when it leaves the 15m window.
            "interval": "1m",
            "input_series": [
                _series("dicom_router_rules_reload_total", "1x30", outcome="loaded"),
                _series("dicom_router_rules_reload_total", "0x4 1x25", outcome="refused"),
            ],
            "alert_rule_test": [
                _case(refused, "4m"),
                _case(refused, "8m", _alert(refused, {**router, "outcome": "refused"}, 1)),
                _case(refused, "30m"),
            ],
        },
        {  # two events not written at 5m: fires at once, ends after 15 minutes.
            "interval": "1m",
            "input_series": [
                _series("dicom_router_audit_write_failures_total", "0x4 2x30"),
            ],
            "alert_rule_test": [
                _case(unaudited, "4m"),
                _case(unaudited, "6m", _alert(unaudited, router, 2)),
                _case(unaudited, "25m"),
            ],
        },
        {  # one instance set aside at 10m; the alert ends when it leaves the hour.
            "interval": "1m",
            "input_series": [
                _series("dicom_router_instances_unroutable_total", "0x9 1x80", reason="unroutable"),
            ],
            "alert_rule_test": [
                _case(set_aside, "9m"),
                _case(set_aside, "15m", _alert(set_aside, {**router, "reason": "unroutable"}, 1)),
                _case(set_aside, "80m"),
            ],
        },
    ]


def test_alerts_fire_when_they_should_and_not_otherwise(promtool: Path, tmp_path: Path) -> None:
    tests = _alert_tests()
    covered = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert covered == EXPECTED_ALERTS
    unit = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests}
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    run_promtool(promtool, "test", "rules", str(path))


# --- dashboard -------------------------------------------------------------------------


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] == 39
    assert "schemaVersion 39" in dashboard["description"]
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["title"], panel["id"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_variables_pick_data_source_and_destination() -> None:
    dashboard = load_dashboard()
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    destination = variables["destination"]
    assert destination["definition"] == "label_values(dicom_router_forward_total, destination)"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    assert 'destination=~"$destination"' in exprs


def test_dashboard_expressions_are_valid_promql(promtool: Path, tmp_path: Path) -> None:
    grafana_variables = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$destination": ".*",
    }
    rules = []
    for panel in load_dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in grafana_variables.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unexpected variable in {target['expr']!r}"
            rules.append({"alert": f"panel_{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard_exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", str(path))
