"""Alert rules (helm/mlrollout/files/alerts.yaml): promtool syntax check and unit tests.

The promtool unit tests themselves live in tests/promtool/alerts_test.yaml; here they run,
and each alert is checked to have a case that expects it to fire.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "mlrollout" / "files" / "alerts.yaml"
PROMTOOL_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (make system-deps installs it)"
)
REQUIRED_ALERTS = {
    "MlrolloutCanaryRolledBack",
    "MlrolloutStableModelDrift",
    "MlrolloutErrorBudgetBurn",
    "MlrolloutOperatorDown",
    "MlrolloutAnalysisProviderErrors",
}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return set(re.findall(r"\bmlrollout_[a-z_]+\b", text))


def referenced_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression, histogram suffixes folded to the family name."""
    names = set(re.findall(r"\bmlrollout_[a-z_]+\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = _run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = _run("test", "rules", str(PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist() -> None:
    assert {r["alert"] for r in _rules() if "alert" in r} == REQUIRED_ALERTS


def test_every_alert_has_a_firing_case() -> None:
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    firing = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    assert firing >= REQUIRED_ALERTS


def test_alerts_have_severity_and_text() -> None:
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_use_documented_metric_names() -> None:
    known = documented_metrics()
    assert known, "docs/architecture.md lists the metric names"
    for rule in _rules():
        used = referenced_metrics(rule["expr"])
        assert used <= known, f"{rule.get('alert') or rule.get('record')}: {used - known}"


def test_operator_job_matches_the_service_monitor() -> None:
    monitor = (
        ROOT / "helm" / "mlrollout" / "templates" / "monitoring" / "servicemonitor.yaml"
    ).read_text()
    (down,) = [r for r in _rules() if r.get("alert") == "MlrolloutOperatorDown"]
    job = re.search(r'job="([^"]+)"', down["expr"])
    assert job and f"replacement: {job[1]}" in monitor
