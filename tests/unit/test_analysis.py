"""Analysis verdicts, one table row per check outcome; statistics against scipy."""

from __future__ import annotations

import math
from typing import Any

import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from mlrollout.operator import queries as q
from mlrollout.operator.decide import analysis, stats
from mlrollout.operator.model import Analysis, Verdict

from tests.doubles.decide import TrackTraffic, results_for

OK = TrackTraffic(requests=1000, errors=1, latency=0.05)


def _analysis(**metrics: Any) -> Analysis:
    return Analysis.model_validate({"minSamples": 100, "metrics": metrics})


def _verdicts(
    cfg: Analysis, stable: TrackTraffic, canary: TrackTraffic, **kw: Any
) -> dict[str, Verdict]:
    planned = q.analysis_queries(cfg, "fraud", "default", "v1", "v2")
    return {v.check: v for v in analysis.evaluate(cfg, results_for(planned, stable, canary, **kw))}


DRIFT = {"inputDrift": {"maxPsiIncrease": 0.1}}
PRED = {"predictionDrift": {"maxPsi": 0.2}}
FEEDBACK = {"feedbackAccuracy": {"minAccuracy": 0.8, "maxDecrease": 0.02, "minSamples": 50}}
CUSTOM = {"custom": [{"name": "queue", "query": "x", "max": 10}]}

CASES: list[tuple[str, dict[str, Any], TrackTraffic, TrackTraffic, str, str]] = [
    # id, metrics, stable, canary, check, outcome
    ("err-pass", {}, OK, OK, "errorRate", "pass"),
    ("err-fail", {}, OK, TrackTraffic(requests=1000, errors=80), "errorRate", "fail"),
    ("err-nodata", {}, OK, TrackTraffic(requests=99, errors=50), "errorRate", "noData"),
    ("cmp-fail", {}, OK, TrackTraffic(requests=1000, errors=20), "errorRateVsStable", "fail"),
    ("cmp-pass", {}, OK, TrackTraffic(requests=1000, errors=2), "errorRateVsStable", "pass"),
    (
        "cmp-no-stable",
        {},
        TrackTraffic(requests=10),
        TrackTraffic(requests=1000, errors=20),
        "errorRateVsStable",
        "pass",
    ),
    ("lat-pass", {}, OK, OK, "latency", "pass"),
    ("lat-abs-fail", {}, OK, TrackTraffic(requests=1000, latency=1.5), "latency", "fail"),
    ("lat-ratio-fail", {}, OK, TrackTraffic(requests=1000, latency=0.09), "latency", "fail"),
    ("lat-nan", {}, OK, TrackTraffic(requests=1000, latency=math.nan), "latency", "noData"),
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
        "pred-nodata",
        PRED,
        TrackTraffic(requests=1000, prediction_bins={"0": 700, "1": 300}),
        TrackTraffic(requests=1000, prediction_bins={"0": 60, "1": 30}),
        "predictionDrift",
        "noData",
    ),
    (
        "pred-same",
        PRED,
        TrackTraffic(requests=1000, prediction_bins={"0": 700, "1": 300}),
        TrackTraffic(requests=1000, prediction_bins={"0": 690, "1": 310}),
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
        TrackTraffic(requests=1000, feedback={"correct": 90, "incorrect": 10}),
        TrackTraffic(requests=1000, feedback={"correct": 70, "incorrect": 30}),
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
        TrackTraffic(requests=1000, feedback={"correct": 900, "incorrect": 100}),
        TrackTraffic(requests=1000, feedback={"correct": 450, "incorrect": 52}),
        "feedbackAccuracy",
        "pass",
    ),
    (
        "fb-nodata",
        FEEDBACK,
        OK,
        TrackTraffic(requests=1000, feedback={"correct": 10}),
        "feedbackAccuracy",
        "noData",
    ),
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
    assert verdict.message


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


def test_disabled_checks_are_not_run() -> None:
    cfg = _analysis(errorRate={"enabled": False}, latency={"enabled": False})
    assert _verdicts(cfg, OK, OK) == {}
    assert analysis.run_outcome([]) == "pass"


@pytest.mark.parametrize(
    ("outcomes", "worst"),
    [
        (["pass", "noData"], "noData"),
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


# --------------------------------------------------------------------------- statistics


@settings(max_examples=150, deadline=None)
@given(
    n_a=st.integers(1, 400),
    n_b=st.integers(1, 400),
    fa=st.floats(0, 1),
    fb=st.floats(0, 1),
)
def test_fisher_matches_scipy(n_a: int, n_b: int, fa: float, fb: float) -> None:
    e_a, e_b = round(n_a * fa), round(n_b * fb)
    table = [[e_a, n_a - e_a], [e_b, n_b - e_b]]
    expected = scipy.stats.fisher_exact(table, alternative="greater").pvalue
    assert stats.fisher_greater_p(e_a, n_a, e_b, n_b) == pytest.approx(
        expected, rel=1e-6, abs=1e-12
    )


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.95, 0.99, 0.9999])
def test_z_quantile_matches_scipy(confidence: float) -> None:
    assert stats.z_quantile(confidence) == pytest.approx(scipy.stats.norm.ppf(confidence), rel=1e-9)


@pytest.mark.parametrize(
    ("e_a", "n_a", "e_b", "n_b"), [(0, 10, 0, 10), (5, 100, 1, 900), (30, 1000, 9, 9000)]
)
def test_rate_difference_lower_bound_is_agresti_caffo(
    e_a: int, n_a: int, e_b: int, n_b: int
) -> None:
    pa, pb = (e_a + 1) / (n_a + 2), (e_b + 1) / (n_b + 2)
    se = math.sqrt(pa * (1 - pa) / (n_a + 2) + pb * (1 - pb) / (n_b + 2))
    expected = pa - pb - scipy.stats.norm.ppf(0.95) * se
    assert stats.rate_difference_lower_bound(e_a, n_a, e_b, n_b, 0.95) == pytest.approx(expected)


def test_rate_difference_bound_holds_its_confidence_by_simulation() -> None:
    # Equal true rates: the bound should exceed 0 in at most ~5% of draws at 95%.
    rng = scipy.stats.binom
    draws_a = rng.rvs(500, 0.02, size=2000, random_state=1)
    draws_b = rng.rvs(4500, 0.02, size=2000, random_state=2)
    false_alarms = sum(
        stats.rate_difference_lower_bound(int(a), 500, int(b), 4500, 0.95) > 0
        for a, b in zip(draws_a, draws_b, strict=True)
    )
    assert false_alarms / 2000 < 0.06


def test_psi_matches_the_formula() -> None:
    expected = {"0": 700.0, "1": 300.0}
    actual = {"0": 400.0, "1": 600.0}
    e = [(700 + 0.5) / 1001, (300 + 0.5) / 1001]
    a = [(400 + 0.5) / 1001, (600 + 0.5) / 1001]
    manual = sum((x - y) * math.log(x / y) for x, y in zip(a, e, strict=True))
    assert stats.psi(expected, actual) == pytest.approx(manual)
    assert stats.psi(expected, expected) == pytest.approx(0.0)
    assert math.isfinite(stats.psi({"0": 10.0}, {"1": 10.0}))


@pytest.mark.parametrize("bad", [(-1, 10), (11, 10), (0, -1)])
def test_statistics_reject_impossible_counts(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="invalid counts"):
        stats.fisher_greater_p(bad[0], bad[1], 0, 10)


def test_psi_needs_a_bin() -> None:
    with pytest.raises(ValueError, match="at least one bin"):
        stats.psi({}, {})
