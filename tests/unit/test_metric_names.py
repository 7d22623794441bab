"""The series the operator queries are the series the model server and the router expose:
both sides take the names from ``services/metric_names.py``; nothing spells them again."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from mlrollout.operator import queries as q
from mlrollout.operator.decide import checks
from mlrollout.operator.model import Analysis
from mlrollout.services.drift import DriftMonitor
from mlrollout.services.metrics import DriftCollector, ServerLabels, ServerMetrics
from mlrollout.services.profile import build_profile, load_profile
from mlrollout.services.router.metrics import RouterMetrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
SERIES = re.compile(r"\bmlrollout_[a-z_]+")
EVERY_CHECK = Analysis.model_validate(
    {
        "metrics": {
            "inputDrift": {},
            "predictionDrift": {},
            "feedbackAccuracy": {},
            "agreement": {},
        }
    }
)


def queried() -> set[str]:
    planned = checks.analysis_queries(EVERY_CHECK, "d", "ns", "v1", "v2", step_seconds=60)
    planned.update(q.stable_drift_queries("d", "ns", "v1"))
    planned["agreement-series"] = q.AGREEMENT_SERIES
    return {m for promql in planned.values() for m in SERIES.findall(promql)}


def exposed() -> set[str]:
    """Every series name a model server (with drift) and a router put on /metrics."""
    labels = ServerLabels("d", "m", "v1", "canary")
    x = np.random.default_rng(0).normal(size=200)
    doc = build_profile(
        {"x": x}, {"x": "numeric"}, (x > 0).astype(int), "class", classes=["0", "1"]
    )
    server = ServerMetrics(labels, reasons=["bad_json"], classes=["0", "1"])
    monitor = DriftMonitor(load_profile(doc), window=50)
    monitor.observe(x[:60, None], None, (x[:60] > 0).astype(int))  # one window complete
    server.register(DriftCollector(monitor, labels.as_dict()))
    router = RouterMetrics()
    router.agreement_total.labels("d", "canary", "v2", "stable", "agree").inc()
    names = set()
    for text in (server.render()[0], generate_latest(router.registry)):
        for family in text_string_to_metric_families(text.decode()):
            names |= {sample.name for sample in family.samples}
    return names


def test_every_queried_series_is_exposed() -> None:
    wanted = queried()
    assert len(wanted) >= 8  # requests, latency buckets, ready, drift, bins, feedback, ...
    assert wanted <= exposed(), sorted(wanted - exposed())


def test_the_modules_that_expose_or_query_spell_no_series_name() -> None:
    spelled = (
        "mlrollout_model_",
        "mlrollout_drift_",
        "mlrollout_prediction_",
        "mlrollout_feedback",
    )
    files = [
        ROOT / "operator" / "queries.py",
        *sorted((ROOT / "operator" / "decide").glob("*.py")),
        ROOT / "services" / "metrics.py",
        ROOT / "services" / "drift.py",
    ]
    found = []
    for path in files:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(p in code for p in (*spelled, "mlrollout_router_agreement")):
                found.append(f"{path.relative_to(ROOT)}:{lineno}")
    assert found == [], f"use mlrollout.services.metric_names: {found}"
