"""Judging the canary (pure): the router guard's trip, one analysis run's verdicts and
what they do to the rollout (streaks, sequential crossings, provider-error holds), and the
stable revision's input drift as a condition.
"""

from __future__ import annotations

import mlrollout.operator.decide.analysis as verdicts
import mlrollout.operator.decide.checks as checks
import mlrollout.operator.decide.guard as guard
from mlrollout.operator import queries
from mlrollout.operator.decide.conditions import set_condition
from mlrollout.operator.decide.lifecycle import Work, rollback
from mlrollout.operator.decide.plan import Observations, check_context
from mlrollout.operator.interfaces import ProviderError
from mlrollout.operator.model import ModelDeploymentSpec, ModelDeploymentStatus, parse_duration


def router_guard(w: Work, obs: Observations) -> bool:
    """Roll back when the router reports that its guard took this canary off traffic."""
    st = w.st
    assert st.canary is not None
    state = obs.revisions.get(st.canary.id)
    trip = guard.trip_of(obs.router_guard, st.canary.version, state.url if state else None)
    if trip is None:
        return False
    verdict = guard.verdict(trip)
    st.analysis.verdicts = [verdict]
    st.analysis.last_run_at = w.now
    w.count("mlrollout_operator_verdicts_total", check=verdict.check, result=verdict.outcome)
    w.event("Warning", "RouterGuard", verdict.message)
    rollback(w, "rolledBack", verdict.message)
    return True


def judge(w: Work, spec: ModelDeploymentSpec, obs: Observations) -> None:
    st = w.st
    assert st.canary is not None
    cfg = spec.rollout.analysis
    ctx = check_context(spec, st, w.now, None)
    results = verdicts.evaluate(ctx, obs.metrics)
    outcome = verdicts.run_outcome(results)
    a = st.analysis
    a.last_run_at = w.now
    a.verdicts = results
    for v in results:
        w.count("mlrollout_operator_verdicts_total", check=v.check, result=v.outcome)
    summary = "; ".join(f"{v.check} {v.outcome}: {v.message}" for v in results) or "no checks"
    sequential = {c.name for c in checks.enabled_checks(cfg) if c.sequential}
    # Each window check keeps its own streak: another check's noData or pass neither
    # breaks nor extends it.
    streaks = dict(a.failure_streaks)
    for v in results:
        if v.check in sequential:
            continue
        if v.outcome == "fail":
            streaks[v.check] = streaks.get(v.check, 0) + 1
        elif v.outcome == "pass":
            streaks[v.check] = 0
    a.failure_streaks = {k: n for k, n in streaks.items() if n}
    a.consecutive_failures = max(a.failure_streaks.values(), default=0)
    if outcome != "providerError":
        a.hold_since = None
    crossed = [v for v in results if v.outcome == "fail" and v.check in sequential]
    if crossed:
        w.event("Warning", "AnalysisFailed", summary)
        reason = "; ".join(f"{v.check} ({v.test}): {v.message}" for v in crossed)
        rollback(w, "rolledBack", f"sequential test crossed: {reason}")
        return
    if outcome == "fail":
        limit = cfg.failure_limit
        worst = ", ".join(f"{k} {n}/{limit}" for k, n in sorted(a.failure_streaks.items()))
        w.event("Warning", "AnalysisFailed", f"failed runs in a row: {worst}: {summary}")
        over = sorted(k for k, n in a.failure_streaks.items() if n >= limit)
        if over:
            rollback(
                w,
                "rolledBack",
                f"analysis failed {limit} times in a row ({', '.join(over)})",
            )
        return
    # A pass counts for the step only if the run saw time at the step's weight and the
    # step's minimum of canary requests.
    served = step_requests(obs)
    started = st.step_started_at
    a.step_passed = (
        outcome == "pass" and started is not None and w.now > started and served >= cfg.min_samples
    )
    if outcome == "pass":
        if a.step_passed:
            w.event("Normal", "AnalysisPassed", summary)
        else:
            w.event(
                "Normal",
                "AnalysisInconclusive",
                f"{served} canary requests at this step, need {cfg.min_samples}: {summary}",
            )
        return
    if outcome in ("noData", "inconclusive"):
        w.event(
            "Normal", "AnalysisNoData" if outcome == "noData" else "AnalysisInconclusive", summary
        )
        return
    w.count("mlrollout_operator_analysis_errors_total")
    a.hold_since = a.hold_since or w.now
    held = w.since(a.hold_since)
    policy = cfg.on_provider_error
    max_hold = parse_duration(policy.max_hold)
    w.event("Warning", "AnalysisProviderError", f"held {held:.0f}s of {max_hold:.0f}s: {summary}")
    if held >= max_hold and policy.action == "rollback":
        rollback(w, "rolledBack", f"metrics unavailable for {held:.0f}s (onProviderError rollback)")


def step_requests(obs: Observations) -> int:
    value = obs.metrics.get(queries.REQUESTS.format(track="canary") + "@" + checks.STEP)
    if value is None or isinstance(value, ProviderError):
        return 0
    return checks.count(sum(s.value for s in value if s.value == s.value) if value else None)


def undecided(st: ModelDeploymentStatus) -> str:
    """What the open checks still need, for status and events."""
    parts = []
    for v in st.analysis.verdicts:
        if v.outcome in ("inconclusive", "noData"):
            more = f" (about {v.needed} more requests)" if v.needed else ""
            parts.append(f"{v.check} {v.outcome}{more}")
    return ", ".join(parts) or "no passing run yet"


def stable_drift(w: Work, obs: Observations) -> bool:
    """Report stable's input drift as a condition; False when it was not observed."""
    found = verdicts.stable_input_drift(obs.metrics)
    if found is None:
        return False
    status, reason, message = found
    changed = set_condition(w.st, w.now, "InputDrift", status, reason, message)
    if changed and status == "True":
        w.event("Warning", "InputDrift", message)
    return True
