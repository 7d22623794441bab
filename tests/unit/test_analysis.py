"""Analysis verdicts, one table row per check outcome; statistics against scipy."""

from __future__ import annotations

from typing import Any

import pytest
from mlrollout.operator import queries as q
from mlrollout.operator.decide import analysis, checks
from mlrollout.operator.model import Analysis, Verdict

from tests.doubles.decide import TrackTraffic, results_for

OK = TrackTraffic(requests=5000, errors=1, latency=0.05)


def _analysis(**metrics: Any) -> Analysis:
    return Analysis.model_validate({"minSamples": 100, "metrics": metrics})


def _verdicts(
    cfg: Analysis, stable: TrackTraffic, canary: TrackTraffic, **kw: Any
) -> dict[str, Verdict]:
    ctx = checks.Context(cfg, "fraud", "default", "v1", "v2", step_seconds=60, rollout_seconds=60)
    planned = checks.plan(ctx)
    return {v.check: v for v in analysis.evaluate(ctx, results_for(planned, stable, canary, **kw))}


DRIFT = {"inputDrift": {"maxPsiIncrease": 0.1}}
PRED = {"predictionDrift": {"maxPsi": 0.2}}
FEEDBACK = {"feedbackAccuracy": {"minAccuracy": 0.8, "maxDecrease": 0.02, "minSamples": 50}}
AGREE = {"agreement": {"min": 0.95}}
CUSTOM = {"custom": [{"name": "queue", "query": "x", "max": 10}]}

CASES: list[tuple[str, dict[str, Any], TrackTraffic, TrackTraffic, str, str]] = [
    # id, metrics, stable, canary, check, outcome
    ("err-pass", {}, OK, OK, "errorRate", "pass"),
    ("err-fail", {}, OK, TrackTraffic(requests=1000, errors=100), "errorRate", "fail"),
    # 50% of 20 is far above 5%, but 20 requests cannot show it at alpha 0.01 / 3.
    ("err-undecided", {}, OK, TrackTraffic(requests=20, errors=2), "errorRate", "inconclusive"),
    ("cmp-fail", {}, OK, TrackTraffic(requests=1000, errors=20), "errorRateVsStable", "fail"),
    ("cmp-pass", {}, OK, TrackTraffic(requests=5000, errors=2), "errorRateVsStable", "pass"),
    # Too few requests for a bound within maxIncrease 0.01: not a pass by default.
    ("cmp-thin", {}, OK, TrackTraffic(requests=300), "errorRateVsStable", "inconclusive"),
    (
        "cmp-no-stable",
        {},
        TrackTraffic(requests=10),
        TrackTraffic(requests=1000, errors=20),
        "errorRateVsStable",
        "inconclusive",
    ),
    ("lat-pass", {}, OK, OK, "latency", "pass"),
    ("lat-abs-fail", {}, OK, TrackTraffic(requests=1000, latency=1.5), "latency", "fail"),
    ("lat-ratio-fail", {}, OK, TrackTraffic(requests=1000, latency=0.09), "latency", "fail"),
    # 1.2x is within maxRatio 1.5, and the buckets (1.09x apart) resolve it.
    ("lat-ratio-within", {}, OK, TrackTraffic(requests=5000, latency=0.06), "latency", "pass"),
    ("lat-none", {}, OK, TrackTraffic(requests=0, latency=0.05), "latency", "noData"),
    (
        "drift-pass",
        DRIFT,
        TrackTraffic(requests=1000, input_psi={"a": 0.3}),
        TrackTraffic(requests=1000, input_psi={"a": 0.35}, drift_windows=2),
        "inputDrift",
        "pass",
    ),
    (
        "drift-fail",
        DRIFT,
        TrackTraffic(requests=1000, input_psi={"a": 0.05, "b": 0.0}),
        TrackTraffic(requests=1000, input_psi={"a": 0.05, "b": 0.3}, drift_windows=2),
        "inputDrift",
        "fail",
    ),
    (
        "drift-no-window",
        DRIFT,
        TrackTraffic(requests=1000, input_psi={"a": 0.05}),
        TrackTraffic(requests=1000, input_psi={"a": 0.9}),
        "inputDrift",
        "noData",
    ),
    (
        "pred-thin",
        PRED,
        TrackTraffic(requests=1000, prediction_bins={"0": 700, "1": 300}),
        TrackTraffic(requests=1000, prediction_bins={"0": 60, "1": 30}),
        "predictionDrift",
        "inconclusive",
    ),
    (
        "pred-nodata",
        PRED,
        TrackTraffic(requests=1000, prediction_bins={"0": 700, "1": 300}),
        TrackTraffic(requests=1000),
        "predictionDrift",
        "noData",
    ),
    (
        "pred-same",
        PRED,
        TrackTraffic(requests=1000, prediction_bins={"0": 7000, "1": 3000}),
        TrackTraffic(requests=1000, prediction_bins={"0": 6900, "1": 3100}),
        "predictionDrift",
        "pass",
    ),
    (
        "pred-fail",
        PRED,
        TrackTraffic(requests=1000, prediction_bins={"0": 700, "1": 300}),
        TrackTraffic(requests=1000, prediction_bins={"0": 200, "1": 700, "2": 100}),
        "predictionDrift",
        "fail",
    ),
    (
        "fb-min-fail",
        FEEDBACK,
        TrackTraffic(requests=1000, feedback={"correct": 900, "incorrect": 100}),
        TrackTraffic(requests=1000, feedback={"correct": 700, "incorrect": 300}),
        "feedbackAccuracy",
        "fail",
    ),
    (
        "fb-vs-stable-fail",
        FEEDBACK,
        TrackTraffic(requests=1000, feedback={"correct": 990, "incorrect": 10}),
        TrackTraffic(requests=1000, feedback={"correct": 850, "incorrect": 150}),
        "feedbackAccuracy",
        "fail",
    ),
    (
        "fb-pass",
        FEEDBACK,
        TrackTraffic(requests=1000, feedback={"correct": 90000, "incorrect": 10000}),
        TrackTraffic(requests=1000, feedback={"correct": 45000, "incorrect": 5100}),
        "feedbackAccuracy",
        "pass",
    ),
    (
        "fb-thin",
        FEEDBACK,
        TrackTraffic(requests=1000, feedback={"correct": 900, "incorrect": 100}),
        TrackTraffic(requests=1000, feedback={"correct": 450, "incorrect": 52}),
        "feedbackAccuracy",
        "inconclusive",
    ),
    (
        "fb-nodata",
        FEEDBACK,
        OK,
        TrackTraffic(requests=1000, feedback={"correct": 10}),
        "feedbackAccuracy",
        "noData",
    ),
    # Wrong answers with the right marginals: caught without labels.
    (
        "agree-fail",
        AGREE,
        OK,
        TrackTraffic(agreement={"agree": 59, "disagree": 41}),
        "agreement",
        "fail",
    ),
    (
        "agree-pass",
        AGREE,
        OK,
        TrackTraffic(agreement={"agree": 2000, "disagree": 20}),
        "agreement",
        "pass",
    ),
    (
        "agree-thin",
        AGREE,
        OK,
        TrackTraffic(agreement={"agree": 60, "disagree": 1}),
        "agreement",
        "inconclusive",
    ),
    ("agree-none", AGREE, OK, OK, "agreement", "noData"),
]


@pytest.mark.parametrize(
    ("metrics", "stable", "canary", "check", "outcome"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_check_outcomes(
    metrics: dict[str, Any], stable: TrackTraffic, canary: TrackTraffic, check: str, outcome: str
) -> None:
    verdict = _verdicts(_analysis(**metrics), stable, canary)[check]
    assert verdict.outcome == outcome, verdict.message
    assert verdict.message and (verdict.test or check in ("inputDrift",))


@pytest.mark.parametrize(("value", "outcome"), [(5.0, "pass"), (11.0, "fail"), (None, "noData")])
def test_custom_check(value: float | None, outcome: str) -> None:
    custom = {} if value is None else {"queue": value}
    verdict = _verdicts(_analysis(**CUSTOM), OK, OK, custom=custom)["queue"]
    assert verdict.outcome == outcome
    assert verdict.threshold == 10


def test_failed_query_is_a_provider_error_for_that_check_only() -> None:
    verdicts = _verdicts(_analysis(), OK, OK, failing=frozenset({"latency.canary"}))
    assert verdicts["latency"].outcome == "providerError"
    assert "connection refused" in verdicts["latency"].message
    assert verdicts["errorRate"].outcome == "pass"


@pytest.mark.parametrize(
    ("age", "failing", "outcome"),
    [
        (600.0, frozenset(), "providerError"),
        (None, frozenset(), "noData"),
        (5.0, frozenset({"freshness"}), "providerError"),
    ],
    ids=["stale", "never-scraped", "freshness-query-failed"],
)
def test_freshness_applies_to_every_check(
    age: float | None, failing: frozenset[str], outcome: str
) -> None:
    verdicts = _verdicts(_analysis(**DRIFT), OK, OK, age=age, failing=failing)
    assert {v.outcome for v in verdicts.values()} == {outcome}
    assert set(verdicts) == {"errorRate", "errorRateVsStable", "latency", "inputDrift"}


def test_verdict_records_value_threshold_and_samples() -> None:
    v = _verdicts(_analysis(), OK, TrackTraffic(requests=400, errors=40))["errorRate"]
    assert (v.value, v.threshold, v.samples) == (0.1, 0.05, 400)
    assert v.lower is not None and v.upper is not None and v.lower < 0.1 < v.upper


def test_disabled_checks_are_not_run() -> None:
    cfg = _analysis(errorRate={"enabled": False}, latency={"enabled": False})
    assert _verdicts(cfg, OK, OK) == {}
    assert analysis.run_outcome([]) == "pass"


@pytest.mark.parametrize(
    ("outcomes", "worst"),
    [
        (["pass", "noData"], "noData"),
        (["noData", "inconclusive"], "inconclusive"),
        (["inconclusive", "providerError"], "providerError"),
        (["noData", "providerError", "pass"], "providerError"),
        (["providerError", "fail"], "fail"),
        (["pass"], "pass"),
    ],
)
def test_run_outcome_is_the_worst(outcomes: list[str], worst: str) -> None:
    verdicts = [
        Verdict.model_validate({"check": str(i), "outcome": o}) for i, o in enumerate(outcomes)
    ]
    assert analysis.run_outcome(verdicts) == worst


def test_stable_input_drift_condition() -> None:
    planned = q.stable_drift_queries("fraud", "default", "v1")
    drifting = TrackTraffic(input_psi={"a": 0.4, "b": 0.01}, drift_alarm={"a": 1, "b": 0})
    status, reason, message = (
        analysis.stable_input_drift(results_for(planned, drifting, OK)) or ("",) * 3
    )
    assert (status, reason) == ("True", "InputDrift") and "a (PSI 0.400)" in message
    calm = TrackTraffic(input_psi={"a": 0.01}, drift_alarm={"a": 0})
    assert (analysis.stable_input_drift(results_for(planned, calm, OK)) or ("",))[0] == "False"
    assert (analysis.stable_input_drift(results_for(planned, OK, OK)) or ("",))[0] == "Unknown"
    assert analysis.stable_input_drift({}) is None
