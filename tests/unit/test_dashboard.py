"""The Grafana dashboard (helm/mlrollout/files/dashboard.json).

Every query must name real metrics (docs/architecture.md) and be valid PromQL: the queries,
with Grafana's variables substituted, are fed to `promtool check rules` as recording rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "mlrollout" / "files" / "dashboard.json"
PROMTOOL = shutil.which("promtool")
# Grafana variables -> something PromQL accepts, for the syntax check only.
VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": ".*", "$deployment": ".*"}


def _metrics(expr: str) -> set[str]:
    return {
        re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\bmlrollout_[a-z_]+\b", expr)
    }


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p["targets"]]


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "mlrollout-overview"
    assert [v["name"] for v in dashboard["templating"]["list"]] == [
        "datasource",
        "namespace",
        "deployment",
    ]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_query_the_selected_deployment(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for expr in (t["expr"] for t in panel["targets"]):
            assert 'namespace=~"$namespace", deployment=~"$deployment"' in expr, panel["title"]


def test_queries_use_documented_metrics(dashboard: dict[str, Any]) -> None:
    known = set(
        re.findall(r"\bmlrollout_[a-z_]+\b", (ROOT / "docs" / "architecture.md").read_text())
    )
    used = set().union(*(_metrics(e) for e in _exprs(dashboard)))
    assert used <= known, used - known
    # What the issue asks the dashboard to show: state, weights, errors and latency per
    # version, drift per feature, verdicts.
    assert {
        "mlrollout_operator_phase",
        "mlrollout_operator_canary_weight",
        "mlrollout_router_weight",
        "mlrollout_model_requests_total",
        "mlrollout_model_request_duration_seconds",
        "mlrollout_drift_psi",
        "mlrollout_drift_alarm",
        "mlrollout_prediction_psi",
        "mlrollout_operator_verdicts_total",
    } <= used


def test_panels_fit_the_grid(dashboard: dict[str, Any]) -> None:
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (make system-deps installs it)"
)
def test_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(_exprs(dashboard)):
        for var, value in VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
