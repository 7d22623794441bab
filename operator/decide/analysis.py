"""Analysis verdicts: turn query results into pass / fail / noData / providerError (pure).

Rules, per check (docs/rollout.md explains the consequences):

- a query that failed, or metrics older than ``maxStaleness`` -> providerError;
- fewer canary samples than required (or no series yet) -> noData, never fail;
- otherwise the check's limit decides pass or fail.

The run's outcome is the worst verdict in the order fail > providerError > noData > pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from mlrollout.operator import queries as q
from mlrollout.operator.decide import stats
from mlrollout.operator.interfaces import ProviderError, Sample
from mlrollout.operator.model import Analysis, ConditionStatus, Outcome, Verdict, parse_duration

Results = Mapping[str, Sequence[Sample] | ProviderError]

_CheckFn = Callable[[Results], Verdict]

_SEVERITY: dict[str, int] = {"pass": 0, "noData": 1, "providerError": 2, "fail": 3}


class _Unavailable(Exception):
    """A query this check needs failed or was not run."""


def run_outcome(verdicts: Sequence[Verdict]) -> Outcome:
    """The worst outcome among ``verdicts`` (pass when there are none)."""
    worst: Outcome = "pass"
    for v in verdicts:
        if _SEVERITY[v.outcome] > _SEVERITY[worst]:
            worst = v.outcome
    return worst


def _vector(results: Results, name: str) -> Sequence[Sample]:
    value = results.get(name)
    if value is None:
        raise _Unavailable(f"query {name} was not run")
    if isinstance(value, ProviderError):
        raise _Unavailable(f"query {name} failed: {value}")
    return value


def _scalar(results: Results, name: str) -> float | None:
    """Sum of the vector, None when empty or NaN (no data)."""
    samples = _vector(results, name)
    values = [s.value for s in samples if not math.isnan(s.value)]
    return sum(values) if values else None


def _by_label(results: Results, name: str, label: str) -> dict[str, float]:
    return {
        s.labels.get(label, ""): s.value for s in _vector(results, name) if not math.isnan(s.value)
    }


def evaluate(analysis: Analysis, results: Results) -> list[Verdict]:
    """Verdicts of one analysis run from the results of ``queries.analysis_queries``."""
    checks = _checks(analysis)
    try:
        age = _scalar(results, q.FRESHNESS)
    except _Unavailable as exc:
        return [Verdict(check=c, outcome="providerError", message=str(exc)) for c in checks]
    if age is None:
        msg = "no metrics from the canary yet (not scraped)"
        return [Verdict(check=c, outcome="noData", message=msg) for c in checks]
    limit = parse_duration(analysis.max_staleness)
    if age > limit:
        msg = f"canary metrics are stale: last scrape {age:.0f}s ago (maxStaleness {limit:.0f}s)"
        return [Verdict(check=c, outcome="providerError", message=msg) for c in checks]
    verdicts = []
    for check, fn in checks.items():
        try:
            verdicts.append(fn(results))
        except _Unavailable as exc:
            verdicts.append(Verdict(check=check, outcome="providerError", message=str(exc)))
    return verdicts


def _checks(analysis: Analysis) -> dict[str, _CheckFn]:
    m = analysis.metrics
    out: dict[str, _CheckFn] = {}
    if m.error_rate.enabled:
        out["errorRate"] = lambda r: _error_rate(analysis, r)
        out["errorRateVsStable"] = lambda r: _error_rate_vs_stable(analysis, r)
    if m.latency.enabled:
        out["latency"] = lambda r: _latency(analysis, r)
    if m.input_drift is not None and m.input_drift.enabled:
        out["inputDrift"] = lambda r: _input_drift(analysis, r)
    if m.prediction_drift is not None and m.prediction_drift.enabled:
        out["predictionDrift"] = lambda r: _prediction_drift(analysis, r)
    if m.feedback_accuracy is not None and m.feedback_accuracy.enabled:
        out["feedbackAccuracy"] = lambda r: _feedback(analysis, r)
    for custom in m.custom:
        out[custom.name] = _custom_check(custom.name, custom.min_value, custom.max_value)
    return out


def _custom_check(name: str, lo: float | None, hi: float | None) -> _CheckFn:
    return lambda r: _custom(name, lo, hi, r)


def _counts(results: Results, track: str) -> tuple[int, int]:
    total = _scalar(results, q.REQUESTS.format(track=track)) or 0.0
    errors = _scalar(results, q.ERRORS.format(track=track)) or 0.0
    n = max(0, round(total))
    return min(n, max(0, round(errors))), n


def _error_rate(analysis: Analysis, results: Results) -> Verdict:
    limit = analysis.metrics.error_rate.max_rate
    errors, n = _counts(results, "canary")
    if n < analysis.min_samples:
        return _too_few("errorRate", n, analysis.min_samples, limit)
    rate = errors / n
    ok = rate <= limit
    return Verdict(
        check="errorRate",
        outcome="pass" if ok else "fail",
        value=rate,
        threshold=limit,
        samples=n,
        message=f"canary error rate {rate:.4f} ({errors}/{n}) {'<=' if ok else '>'} {limit}",
    )


def _error_rate_vs_stable(analysis: Analysis, results: Results) -> Verdict:
    spec = analysis.metrics.error_rate
    e_c, n_c = _counts(results, "canary")
    e_s, n_s = _counts(results, "stable")
    if n_c < analysis.min_samples:
        return _too_few("errorRateVsStable", n_c, analysis.min_samples, spec.max_increase)
    diff = e_c / n_c - (e_s / n_s if n_s else 0.0)
    if n_s < analysis.min_samples:
        return Verdict(
            check="errorRateVsStable",
            outcome="pass",
            value=diff,
            threshold=spec.max_increase,
            samples=n_c,
            message=f"stable has too few requests to compare ({n_s}); absolute limit applies",
        )
    return _compare_rates(
        "errorRateVsStable", "error rate", e_c, n_c, e_s, n_s, spec.max_increase, spec.confidence
    )


def _compare_rates(
    check: str,
    what: str,
    e_c: int,
    n_c: int,
    e_s: int,
    n_s: int,
    max_increase: float,
    confidence: float,
) -> Verdict:
    """Fail only when confident the canary's rate exceeds stable's by more than allowed."""
    diff = e_c / n_c - e_s / n_s
    if max_increase == 0:
        p = stats.fisher_greater_p(e_c, n_c, e_s, n_s)
        worse = p < 1 - confidence
        detail = f"one-sided Fisher p={p:.4g}"
    else:
        lower = stats.rate_difference_lower_bound(e_c, n_c, e_s, n_s, confidence)
        worse = lower > max_increase
        detail = f"lower bound of increase {lower:.4f}"
    return Verdict(
        check=check,
        outcome="fail" if worse else "pass",
        value=diff,
        threshold=max_increase,
        samples=n_c,
        message=(
            f"canary {what} {e_c}/{n_c} vs stable {e_s}/{n_s}: increase {diff:+.4f}, {detail} "
            f"at confidence {confidence}: {'worse than' if worse else 'within'} +{max_increase}"
        ),
    )


def _latency(analysis: Analysis, results: Results) -> Verdict:
    spec = analysis.metrics.latency
    _, n = _counts(results, "canary")
    if n < analysis.min_samples:
        return _too_few("latency", n, analysis.min_samples, spec.max_seconds)
    canary = _scalar(results, q.LATENCY.format(track="canary"))
    stable = _scalar(results, q.LATENCY.format(track="stable"))
    if canary is None or math.isinf(canary):
        return Verdict(check="latency", outcome="noData", samples=n, message="no latency histogram")
    threshold = spec.max_seconds
    basis = f"maxSeconds {spec.max_seconds}"
    ratio = spec.max_ratio
    if (
        ratio is not None
        and stable is not None
        and 0 < stable < math.inf
        and ratio * stable < threshold
    ):
        threshold = ratio * stable
        basis = f"{ratio} x stable {stable:.4f}s"
    ok = canary <= threshold
    return Verdict(
        check="latency",
        outcome="pass" if ok else "fail",
        value=canary,
        threshold=threshold,
        samples=n,
        message=f"canary p{spec.quantile * 100:g} {canary:.4f}s {'<=' if ok else '>'} {basis}",
    )


def _input_drift(analysis: Analysis, results: Results) -> Verdict:
    spec = analysis.metrics.input_drift
    assert spec is not None
    windows = _scalar(results, q.DRIFT_WINDOWS) or 0.0
    if windows < 1:
        return Verdict(
            check="inputDrift",
            outcome="noData",
            threshold=spec.max_psi_increase,
            samples=0,
            message="the canary has completed no drift window yet",
        )
    canary = _by_label(results, q.INPUT_PSI.format(track="canary"), "feature")
    stable = _by_label(results, q.INPUT_PSI.format(track="stable"), "feature")
    common = sorted(set(canary) & set(stable))
    if not common:
        return Verdict(
            check="inputDrift",
            outcome="noData",
            threshold=spec.max_psi_increase,
            samples=round(windows),
            message="no feature has drift values from both versions",
        )
    feature = max(common, key=lambda f: canary[f] - stable[f])
    excess = canary[feature] - stable[feature]
    ok = excess <= spec.max_psi_increase
    return Verdict(
        check="inputDrift",
        outcome="pass" if ok else "fail",
        value=excess,
        threshold=spec.max_psi_increase,
        samples=round(windows),
        message=(
            f"feature {feature}: canary PSI {canary[feature]:.3f} vs stable "
            f"{stable[feature]:.3f} (excess {excess:+.3f}) vs own training profiles"
        ),
    )


def _prediction_drift(analysis: Analysis, results: Results) -> Verdict:
    spec = analysis.metrics.prediction_drift
    assert spec is not None
    canary = _by_label(results, q.PREDICTION_BINS.format(track="canary"), "bin")
    stable = _by_label(results, q.PREDICTION_BINS.format(track="stable"), "bin")
    n_c, n_s = round(sum(canary.values())), round(sum(stable.values()))
    if n_c < analysis.min_samples:
        return Verdict(
            check="predictionDrift",
            outcome="noData",
            threshold=spec.max_psi,
            samples=n_c,
            message=f"too few canary predictions to compare ({n_c}, need "
            f"{analysis.min_samples}): holding the step",
        )
    if n_s < analysis.min_samples:
        # A step at 100% leaves stable no traffic: holding would never end, and earlier
        # steps made the comparison (as for errorRateVsStable). A stable that served
        # traffic but exported too few predictions is missing data, not idle: hold.
        _, served = _counts(results, "stable")
        idle = served < analysis.min_samples
        return Verdict(
            check="predictionDrift",
            outcome="pass" if idle else "noData",
            threshold=spec.max_psi,
            samples=n_c,
            message=f"stable has too few predictions to compare ({n_s} from {served} "
            f"requests, need {analysis.min_samples})"
            + ("; it serves no traffic at this step" if idle else ": holding the step"),
        )
    value = stats.psi(stable, canary)
    ok = value <= spec.max_psi
    return Verdict(
        check="predictionDrift",
        outcome="pass" if ok else "fail",
        value=value,
        threshold=spec.max_psi,
        samples=n_c,
        message=f"prediction PSI canary vs stable {value:.3f} {'<=' if ok else '>'} {spec.max_psi}",
    )


def _feedback(analysis: Analysis, results: Results) -> Verdict:
    spec = analysis.metrics.feedback_accuracy
    assert spec is not None

    def counts(track: str) -> tuple[int, int]:
        by = _by_label(results, q.FEEDBACK.format(track=track), "outcome")
        wrong = max(0, round(by.get("incorrect", 0.0)))
        return wrong, wrong + max(0, round(by.get("correct", 0.0)))

    wrong_c, n_c = counts("canary")
    wrong_s, n_s = counts("stable")
    if n_c < spec.min_samples:
        return _too_few("feedbackAccuracy", n_c, spec.min_samples, spec.min_accuracy)
    accuracy = 1 - wrong_c / n_c
    if spec.min_accuracy is not None and accuracy < spec.min_accuracy:
        return Verdict(
            check="feedbackAccuracy",
            outcome="fail",
            value=accuracy,
            threshold=spec.min_accuracy,
            samples=n_c,
            message=f"canary accuracy {accuracy:.4f} < minAccuracy {spec.min_accuracy}",
        )
    if n_s < spec.min_samples:
        return Verdict(
            check="feedbackAccuracy",
            outcome="pass",
            value=accuracy,
            threshold=spec.min_accuracy,
            samples=n_c,
            message=f"canary accuracy {accuracy:.4f}; stable has too little feedback to compare",
        )
    verdict = _compare_rates(
        "feedbackAccuracy",
        "error (1 - accuracy)",
        wrong_c,
        n_c,
        wrong_s,
        n_s,
        spec.max_decrease,
        analysis.metrics.error_rate.confidence,
    )
    return verdict.model_copy(update={"value": accuracy, "threshold": spec.max_decrease})


def _custom(name: str, lo: float | None, hi: float | None, results: Results) -> Verdict:
    value = _scalar(results, q.CUSTOM.format(name=name))
    threshold = hi if hi is not None else lo
    if value is None:
        return Verdict(check=name, outcome="noData", threshold=threshold, message="empty result")
    ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    return Verdict(
        check=name,
        outcome="pass" if ok else "fail",
        value=value,
        threshold=threshold,
        message=f"{name} = {value:.4g}, allowed [{'-inf' if lo is None else lo}, "
        f"{'inf' if hi is None else hi}]",
    )


def _too_few(check: str, n: int, need: int, threshold: float | None) -> Verdict:
    return Verdict(
        check=check,
        outcome="noData",
        threshold=threshold,
        samples=n,
        message=f"{n} canary samples in the window, need {need}: holding the step",
    )


def stable_input_drift(results: Results) -> tuple[ConditionStatus, str, str] | None:
    """(condition status, reason, message) for the stable revision's input drift.

    None when the drift queries were not run this time.
    """
    if q.STABLE_DRIFT_ALARM not in results:
        return None
    try:
        alarms = _by_label(results, q.STABLE_DRIFT_ALARM, "feature")
        psis = _by_label(results, q.STABLE_DRIFT_PSI, "feature")
    except _Unavailable as exc:
        return "Unknown", "ProviderError", str(exc)
    if not alarms:
        return "Unknown", "NoDriftMetrics", "stable exports no drift metrics yet"
    drifting = sorted(f for f, v in alarms.items() if v >= 1)
    if not drifting:
        return "False", "NoDrift", "stable's inputs match its training profile"
    detail = ", ".join(f"{f} (PSI {psis.get(f, float('nan')):.3f})" for f in drifting[:5])
    return "True", "InputDrift", f"stable's live inputs drift from its training profile: {detail}"
