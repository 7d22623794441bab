"""PromQL builders: valid syntax (promtool), the label contract, and placeholder rendering."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlrollout.operator import queries as q
from mlrollout.operator.decide import checks
from mlrollout.operator.model import Analysis

FULL = Analysis.model_validate(
    {
        "window": "1m30s",
        "metrics": {
            "inputDrift": {},
            "predictionDrift": {},
            "feedbackAccuracy": {},
            "agreement": {},
            "custom": [
                {
                    "name": "rps",
                    "query": 'sum(rate(x{deployment="{{deployment}}",namespace="{{ namespace }}",'
                    'version="{{version}}",track="{{track}}"}[1m]))',
                    "min": 1,
                }
            ],
        },
    }
)


def _all() -> dict[str, str]:
    out = checks.analysis_queries(
        FULL, "fraud", "team-a", "v1", "v2", step_seconds=42.3, rollout_seconds=90
    )
    out.update(q.stable_drift_queries("fraud", "team-a", "v1"))
    return out


def test_every_metric_query_selects_deployment_namespace_version_never_track() -> None:
    for name, promql in _all().items():
        if name.startswith("custom."):
            continue
        assert 'deployment="fraud"' in promql, name
        assert 'namespace="team-a"' in promql, name
        assert re.search(r'version="v[12]"', promql), name
        assert "track" not in promql, name


def test_canary_and_stable_queries_differ_only_in_version() -> None:
    qs = _all()
    for kind in (
        "requests.{}@step",
        "requests.{}@rollout",
        "errors.{}@step",
        "latency.{}",
        "inputPsi.{}",
        "predictionBins.{}",
        "feedback.{}",
    ):
        stable, canary = qs[kind.format("stable")], qs[kind.format("canary")]
        assert stable.replace('version="v1"', 'version="v2"') == canary


def test_counts_are_cumulative_since_the_step_or_the_rollout_began() -> None:
    # Issue 11: the last step was judged on a window that was mostly the previous step's
    # traffic. Counts at a step start at the step (rounded up to whole seconds); properties
    # that do not depend on the weight pool the whole rollout.
    qs = _all()
    for name in ("requests.canary@step", "errors.stable@step", "latency.canary"):
        assert "[43s]" in qs[name], name
    for name in (
        "requests.canary@rollout",
        "predictionBins.canary",
        "feedback.stable",
        "agreement",
    ):
        assert "[90s]" in qs[name], name
    assert q.promql_duration("250ms") == "1s"


def test_agreement_reads_the_routers_mirrored_comparisons() -> None:
    promql = _all()["agreement"]
    assert promql.startswith("sum by (result) (increase(mlrollout_router_agreement_total{")
    assert 'version="v2"' in promql


def test_only_enabled_checks_are_queried() -> None:
    minimal = Analysis.model_validate({"metrics": {"latency": {"enabled": False}}})
    names = set(checks.analysis_queries(minimal, "d", "n", "v1", "v2"))
    assert names == {
        "freshness",
        *(
            f"{k}.{t}@{s}"
            for k in ("requests", "errors")
            for t in ("stable", "canary")
            for s in ("step", "rollout")
        ),
    }


def test_custom_placeholders_are_filled() -> None:
    rendered = _all()["custom.rps"]
    assert 'deployment="fraud"' in rendered and 'namespace="team-a"' in rendered
    assert 'version="v2"' in rendered and 'track="canary"' in rendered
    assert "{{" not in rendered


def test_label_values_are_escaped() -> None:
    assert (
        q.selector('a"b', "n\\s", "v\n1")
        == '{deployment="a\\"b",namespace="n\\\\s",version="v\\n1"}'
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_queries_parse_with_promtool(tmp_path: Path) -> None:
    rules = [
        {"record": f"mlrollout:check_{i}", "expr": promql}
        for i, promql in enumerate(_all().values())
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "analysis", "rules": rules}]}))
    out = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
